"""Percentile bootstrap confidence intervals.

Benchmarks here are small (a few hundred prompts, a dozen in debug runs), so every reported number gets
an interval; otherwise a two-point difference between two checkpoints reads as a result when it is noise.
The percentile bootstrap needs no distributional assumption, which matters for bounded, skewed scores
such as ASR near 0 %. Resampling is seeded so reports are reproducible.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def _check(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _interval(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (math.nan, math.nan)
    return (float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2)))


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean, n_resamples: int = 2000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """(low, high) (1 - alpha) interval of `stat(values)`.

    NaN values (e.g. an item whose judge failed) are dropped first. No values -> (nan, nan); one value
    -> (v, v), since a single observation carries no spread to resample.
    """
    _check(n_resamples, alpha)
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1:
        x = float(stat(v))
        return (x, x)
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_resamples, v.size))
    return _interval(np.array([stat(v[i]) for i in idx], dtype=float), alpha)


def bootstrap_ci_paired(a: Sequence[float], b: Sequence[float], fn: Callable[[np.ndarray, np.ndarray], float],
                        n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """(low, high) interval of `fn(a, b)` for per-item paired arrays, resampling items (pairs) together.

    Needed for the construction headline, which combines each item's satisfaction and risk: resampling
    them independently would break the per-response link and mis-state the spread. Pairs with a NaN on
    either side are dropped.
    """
    _check(n_resamples, alpha)
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.size != y.size:
        raise ValueError(f"paired arrays differ in length: {x.size} vs {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        v = float(fn(x, y))
        return (v, v)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    return _interval(np.array([fn(x[i], y[i]) for i in idx], dtype=float), alpha)


def bootstrap_ci_grouped(groups: dict[str, Sequence[float]], fn: Callable[[dict[str, np.ndarray]], float],
                         n_resamples: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """(low, high) interval of `fn(groups)`, resampling each group's items within the group.

    For scores built from per-cell rates with fixed weights, such as the jailbreak score (unweighted
    mean of per-level ASRs, then of languages): resampling within cells keeps every cell's size, as
    the benchmark design fixes it. NaN values are dropped; an empty group stays empty.
    """
    _check(n_resamples, alpha)
    clean = {k: (lambda a: a[~np.isnan(a)])(np.asarray(v, dtype=float).ravel()) for k, v in groups.items()}
    clean = {k: v for k, v in clean.items() if v.size}
    if not clean:
        return (math.nan, math.nan)
    if all(v.size == 1 for v in clean.values()):
        x = float(fn(clean))
        return (x, x)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples, dtype=float)
    for b in range(n_resamples):
        stats[b] = fn({k: v[rng.integers(0, v.size, size=v.size)] for k, v in clean.items()})
    return _interval(stats, alpha)
