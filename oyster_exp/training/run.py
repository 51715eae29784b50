"""Fit, export, and return the final metrics as plain floats (what the train stage records)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from oyster_exp.training.data import PreferenceDataModule
from oyster_exp.training.module import PreferenceModule


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's last logged scalar values (`train/*` of the last step, `val/*` of the last epoch)."""
    out: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            continue
        out[key] = float(value)
    return dict(sorted(out.items()))


def fit_preference_model(module: PreferenceModule, datamodule: PreferenceDataModule, trainer: L.Trainer,
                         export_dir: Path, card_config: dict[str, Any] | None = None) -> dict[str, float]:
    """Train, then export the model with a card holding `card_config` and the final metrics.

    Only global rank 0 writes the export (every rank holds the same weights under DDP); the others
    wait at a barrier so no rank returns before the directory is complete.
    """
    trainer.fit(module, datamodule=datamodule)
    metrics = final_metrics(trainer)
    if trainer.is_global_zero:
        module.export(Path(export_dir), card_config=card_config, metrics=metrics)
    trainer.strategy.barrier("oyster_exp.export")
    return metrics
