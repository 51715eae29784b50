"""The W&B logger of `conf/logger/wandb.yaml`: Lightning's, with the artifact knobs of this project.

A module of its own so that importing `tracking.wandb` (the CLI does, for its resolvers) does not
import Lightning.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import WandbLogger


class ArtifactWandbLogger(WandbLogger):
    """Lightning's `WandbLogger`, plus which of the run's results become W&B artifacts.

    `log_model` here means the exported model directory (weights, tokenizer, card) as one `model`
    artifact when the run ends, not Lightning's checkpoint upload: the train stage's `last.ckpt` is a
    resume aid that is deleted after export, so Lightning's own checkpoint logging stays off.
    """

    def __init__(self, *, log_model: bool = True, log_dataset: bool = True, **kwargs: Any) -> None:
        super().__init__(log_model=False, **kwargs)
        self.artifact_types = {"model": bool(log_model), "dataset": bool(log_dataset)}

    def logs_artifact(self, kind: str) -> bool:
        return self.artifact_types.get(kind, True)
