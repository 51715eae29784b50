"""Hydra callbacks for sweeps: aggregate every arm into tables and plots when a multirun ends.

Configured in `conf/config.yaml` (`hydra.callbacks.sweep_report`). Runs in the launching process, after
every arm returned (arms never raise: `oyster_exp.run.sweep_arm.run_arm` records failures in the ledger),
so the report also covers failed and skipped arms. The number of failed arms is kept here for
`oyster-exp` to turn into a non-zero exit code.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("oyster_exp")
_FAILED: dict[str, int] = {"arms": 0}


def failed_arms() -> int:
    """Failed arms of the last multirun finished in this process (0 when none ran)."""
    return _FAILED["arms"]


class SweepReport(Callback):
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Keep the sweep's command line: an arm's label is what it overrides beyond it (every sweeper,
        Optuna's included, which writes no multirun.yaml)."""
        from omegaconf import OmegaConf

        from oyster_exp.reporting.sweep_ledger import COMMAND_OVERRIDES

        _FAILED["arms"] = 0
        sweep = Path(str(config.hydra.sweep.dir))
        sweep.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(list(config.hydra.overrides.task)), sweep / COMMAND_OVERRIDES)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from oyster_exp.reporting.aggregate import write_sweep_report
        from oyster_exp.reporting.sweep_ledger import read_ledger

        sweep = Path(str(config.hydra.sweep.dir))
        ledger = read_ledger(sweep)
        _FAILED["arms"] = sum(1 for e in ledger if e.get("status") == "failed")
        if not self.enabled or config.get("dry_run"):
            return
        try:
            out = write_sweep_report(sweep)
            log.info("sweep report: %s", out)
        except Exception as e:
            log.error("sweep report failed (run `oyster-exp-report %s` to retry): %s", sweep, e)
