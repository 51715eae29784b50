"""Learning-rate schedules as pure step -> multiplier functions, wrapped in a `LambdaLR`.

Why our own: the total number of optimisation steps is only known once the Trainer has seen the data
(`trainer.estimated_stepping_batches`), so the config carries the shape (`warmup_steps`, `decay`) and
the module supplies `total_steps`; `LambdaLR` keeps its state in the checkpoint, so resume is exact.
"""
from __future__ import annotations

import functools
import math
from typing import Literal

import torch

Decay = Literal["linear", "cosine", "constant"]


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, decay: Decay = "linear",
                  min_lr_ratio: float = 0.0) -> float:
    """Share of the base lr at optimisation step `step` (0-based): linear warm-up, then decay to `min_lr_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"decay must be linear, cosine or constant, got {decay!r}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 decay: Decay = "linear", min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """`LambdaLR` over `lr_multiplier`; configure with `_partial_: true` and let the module pass the rest."""
    if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"warmup_steps must be >= 0 and min_lr_ratio in [0, 1], got {warmup_steps}, {min_lr_ratio}")
    fn = functools.partial(lr_multiplier, total_steps=int(total_steps), warmup_steps=int(warmup_steps),
                           decay=decay, min_lr_ratio=float(min_lr_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
