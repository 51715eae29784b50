"""Turn a `model` config node (or a built `ModelSource`) into a checkpoint directory, offline.

Why a helper: callers hold either the config node (stages) or an already built source (an LLM
client whose `model: ${model}` Hydra instantiated recursively); both get the same answer, and no
caller needs to know which source it is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from oyster_exp.models.sources import ModelNotFoundError, ModelSource

__all__ = ["ModelNotFoundError", "model_source", "resolve_model_dir"]


def model_source(model: Any) -> ModelSource:
    """The `ModelSource` a `model` node names with `_target_` (a built source is returned as it is)."""
    if isinstance(model, ModelSource):
        return model
    from hydra.utils import instantiate

    source = instantiate(model)
    if not isinstance(source, ModelSource):
        raise TypeError(f"model: _target_ {model.get('_target_')!r} built a {type(source).__name__}, "
                        "not a oyster_exp.models.sources.ModelSource")
    return source


def resolve_model_dir(model: Any) -> Path:
    return model_source(model).checkpoint_dir()
