"""The Optuna ask-and-tell sweeper of oyster-exp, where Hydra's plugin scan looks for it.

Hydra instantiates a sweeper only from a class defined under `hydra_plugins`, so the class lives here
as a thin subclass; the code is `oyster_exp.run.optuna_sweeper`. Selected by `hydra/sweeper=oyster_optuna`
(conf/hydra/sweeper/oyster_optuna.yaml).
"""
from __future__ import annotations

from oyster_exp.run.optuna_sweeper import OptunaSweeper


class OysterOptunaSweeper(OptunaSweeper):
    """`oyster_exp.run.optuna_sweeper.OptunaSweeper`, registered as a Hydra plugin."""
