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


def strategy_label(strategy: Any) -> str:
    """A `trainer.strategy` value as a name: `fsdp` for a `_target_` node such as
    `oyster_exp.training.parallelism.fsdp`, the Lightning registry name (`deepspeed_stage_2`) as it is."""
    if hasattr(strategy, "get") and not isinstance(strategy, str):
        return str(strategy.get("_target_", "auto")).rsplit(".", 1)[-1]
    return str(strategy if strategy is not None else "auto")


def sharded_state(strategy: Any) -> tuple[bool, bool, bool]:
    """Which of (weights, gradients, optimizer states) a strategy shards over the processes.

    One table for the dry run's memory model and for the model loader (QLoRA under sharding needs a
    different storage dtype): FSDP and ZeRO-3 shard all three, ZeRO-2 gradients and optimizer state,
    ZeRO-1 the optimizer state, DDP and single-device runs nothing.
    """
    s = strategy_label(strategy).lower()
    if "fsdp" in s or "stage_3" in s:
        return True, True, True
    if "stage_2" in s:
        return False, True, True
    if "stage_1" in s:
        return False, False, True
    return False, False, False
