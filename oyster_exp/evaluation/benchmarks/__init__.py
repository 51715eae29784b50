"""The benchmarks, one module each; every module here is imported (and so registered) by `builtin_classes`.

Adding a benchmark: a module in this folder with a `Benchmark` subclass registered as
`register_component("eval/benchmark", "<option>", Cls)`, plus `conf/eval/benchmark/<option>.yaml` and
a defaults entry `- /eval/benchmark@<key>: <option>` in the eval suites that run it.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from oyster_exp.evaluation.benchmarks.base import CLASSES, Benchmark


def import_all() -> None:
    """Import every benchmark module of this package (each registers its schema and class once)."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


def builtin_classes() -> dict[str, type[Benchmark]]:
    """Record name -> class of every benchmark defined in this package."""
    import_all()
    return dict(CLASSES)


def configured_nodes(ev: Any) -> dict[str, Any]:
    """The children of the `eval` node that are benchmarks (a `_target_` naming a `Benchmark`), in order."""
    out = {}
    for key in ev:
        node = ev[key]
        if OmegaConf.is_dict(node) and "_target_" in node:
            cls = get_class(str(node._target_))
            if isinstance(cls, type) and issubclass(cls, Benchmark):
                out[str(key)] = node
    return out


def configured(ev: Any) -> dict[str, Benchmark]:
    """config key -> the built benchmark, for every enabled benchmark of the eval suite `ev`."""
    return {key: instantiate(node, _convert_="all") for key, node in configured_nodes(ev).items() if node.enabled}
