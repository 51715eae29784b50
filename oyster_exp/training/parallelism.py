"""Strategy builders for the `trainer` configs that need Python objects YAML cannot name directly."""
from __future__ import annotations

import importlib
from typing import Any


def _classes(paths: list[str]) -> set[type]:
    """Import `module.Class` paths; the ones this transformers version lacks are skipped."""
    out: set[type] = set()
    for path in paths:
        module, _, name = str(path).rpartition(".")
        try:
            out.add(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    if not out:
        raise ValueError(f"trainer.strategy.layers: none of {list(paths)} can be imported")
    return out


def fsdp(layers: list[str], **kwargs: Any) -> Any:
    """`FSDPStrategy` wrapping each decoder layer class in `layers` as one FSDP unit (and checkpointing it
    when `activation_checkpointing` is true); the other keyword arguments go to the strategy as they are."""
    from lightning.pytorch.strategies import FSDPStrategy

    wrap = _classes(layers)
    if kwargs.pop("activation_checkpointing", False):
        kwargs["activation_checkpointing_policy"] = wrap
    return FSDPStrategy(auto_wrap_policy=wrap, **kwargs)
