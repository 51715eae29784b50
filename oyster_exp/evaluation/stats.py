"""Percentile bootstrap confidence intervals."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, n_resamples: int = 2000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1:
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))
    stats = np.array([stat(v[i]) for i in idx])
    return (float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2)))


def bootstrap_ci_paired(a: Sequence[float], b: Sequence[float], fn: Callable[[np.ndarray, np.ndarray], float],
                        n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """CI of fn(a, b) resampling items (pairs) together, e.g. the construction headline of (S, R)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        v = float(fn(x, y))
        return (v, v)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    stats = np.array([fn(x[i], y[i]) for i in idx])
    return (float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2)))
