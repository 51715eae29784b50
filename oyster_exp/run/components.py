"""The modules that register component schemas, imported before Hydra composes a config.

Why a list: a component registers its settings dataclass (`<group>/<option>_schema`) from its own
module, and an option YAML's defaults name that schema, so the module must have been imported first.
The CLI and the tests' compose helper call `register_all()`. An entry that is a package registers
every module in it, so a new pair policy is one file in `csa/pair_policies/` plus its YAML.
These modules keep heavy imports (torch, transformers) inside functions, so registering stays cheap.
"""
from __future__ import annotations

import importlib
import pkgutil

COMPONENT_MODULES: list[str] = [
    "oyster_exp.training.objectives",     # objective: orpo, sft
    "oyster_exp.models.sources",          # model: embedded, tiny_random, local_path, hub
    "oyster_exp.data.sources",            # data: seed, file
    "oyster_exp.csa.pair_policies",       # pairs: best_vs_initial, best_vs_worst, all_improving, refusal_as_rejected
    "oyster_exp.csa.strategies",          # lingo_bp/similarity: exact, jaccard, simhash, embedding
    "oyster_exp.csa.lingo_bp",            # lingo_bp: the settings schema; lingo_bp/recombiner: plan_as_system
    "oyster_exp.csa.stackelberg",         # stackelberg: off (SingleCandidate), on (StackelbergLeader)
    "oyster_exp.csa.assessment",          # risk: the settings schema (RiskSettings, FollowerModel)
    "oyster_exp.evaluation.subjects",     # eval/subject: local, openai
    "oyster_exp.evaluation.benchmarks",   # eval/benchmark: every module of the package
]


def register_all() -> None:
    """Import every component module (each registers its schemas once, at import); packages whole."""
    for name in COMPONENT_MODULES:
        module = importlib.import_module(name)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            importlib.import_module(f"{name}.{info.name}")
