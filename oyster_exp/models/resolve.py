"""Turn a `model` config node into a checkpoint directory, without touching any hub."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class ModelNotFoundError(FileNotFoundError):
    pass


def resolve_model_dir(model: Any) -> Path:
    source = str(getattr(model.source, "value", model.source))
    if source == "embedded":
        from oyster_exp.models.embedded import ensure_embedded_model

        return ensure_embedded_model()
    if source == "tiny_random":
        from oyster_exp.models.tiny import ensure_tiny_model

        return ensure_tiny_model(hidden=int(model.get("tiny_hidden", 64)), layers=int(model.get("tiny_layers", 2)))
    if source == "local_path":
        path = Path(str(model.path)).expanduser()
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model.path={path}: no config.json there (a transformers checkpoint directory)")
        return path
    if source == "hub":
        # offline only: a hub id must already be in the local HF cache
        from huggingface_hub import snapshot_download

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            return Path(snapshot_download(str(model.path), local_files_only=True))
        except Exception as e:
            raise ModelNotFoundError(f"model.path={model.path}: not in the local Hugging Face cache ({e})") from e
    raise ModelNotFoundError(f"model.source={source}: unknown source")
