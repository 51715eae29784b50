"""Build LLM clients from config nodes (`_target_` in conf/llm/*.yaml).

Roles that name the same model share one in-process client, so a local model is loaded once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from oyster_exp.models.resolve import resolve_model_dir

_LOCAL: dict[tuple[str, str], Any] = {}


def local_client(model: Any, max_batch_size: int = 8) -> Any:
    from omegaconf import DictConfig, OmegaConf

    from oyster_exp.llm.local import LocalClient

    if not isinstance(model, DictConfig):
        model = OmegaConf.create(dict(model))
    path = resolve_model_dir(model)
    key = (str(path), str(model.get("dtype", "float32")))
    if key not in _LOCAL:
        _LOCAL[key] = LocalClient(Path(path), model_id=str(model.model_id), dtype=key[1],
                                  max_batch_size=max_batch_size)
    return _LOCAL[key]


def clear_local_clients() -> None:
    """Free in-process models (between sweep jobs, or before training needs the memory)."""
    _LOCAL.clear()
