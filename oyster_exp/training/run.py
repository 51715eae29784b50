"""Fit, export, and return the final metrics as plain floats."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from oyster_exp.training.data import PreferenceDataModule
from oyster_exp.training.module import PreferenceModule


def fit_preference_model(module: PreferenceModule, datamodule: PreferenceDataModule, trainer: L.Trainer,
                         export_dir: Path, card_config: dict[str, Any] | None = None) -> dict[str, float]:
    trainer.fit(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    module.export(export_dir, card_config=card_config, metrics=metrics)
    return metrics
