"""The modules that register component schemas, imported before Hydra composes a config.

Why a list: a component registers its settings dataclass (`<group>/<option>_schema`) from its own
module, and an option YAML's defaults name that schema, so the module must have been imported first.
The CLI and the tests' compose helper call `register_all()`; a new component module is added here.
These modules keep heavy imports (torch, transformers) inside functions, so registering stays cheap.
"""
from __future__ import annotations

import importlib

COMPONENT_MODULES: list[str] = [
    "oyster_exp.evaluation.subjects",     # eval/subject: local, openai
    "oyster_exp.evaluation.benchmarks",   # eval/benchmark: every module of the package (import_all)
]


def register_all() -> None:
    """Import every component module (each registers its schemas once, at import)."""
    for name in COMPONENT_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "import_all"):
            module.import_all()
