"""Summary-row helpers shared by the benchmarks: one tidy row per metric, rates with a Wilson interval.

A row is (benchmark, split, model, metric, value, n, ci_low, ci_high). Rates are percentages, with a Wilson interval.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from oyster_exp.csa.records import EvalRecord
from oyster_exp.evaluation.stats import wilson_interval

NAN = (math.nan, math.nan)


def row(bench: str, split: str, model: str, metric: str, value: float, n: int,
        ci: tuple[float, float] = NAN) -> dict[str, Any]:
    return {"benchmark": bench, "split": split, "model": model, "metric": metric, "value": float(value), "n": int(n),
            "ci_low": float(ci[0]), "ci_high": float(ci[1])}


def skipped(r: EvalRecord) -> bool:
    return "skipped" in r.meta


def judged(recs: list[EvalRecord]) -> list[EvalRecord]:
    """Records that have a verdict: neither failed nor skipped."""
    return [r for r in recs if r.failure is None and not skipped(r)]


def rate(flags: np.ndarray, resamples: int, seed: int) -> tuple[float, tuple[float, float]]:
    """Percentage of 1s and its 95 % Wilson interval.

    Wilson, not the bootstrap: a bootstrap of 0/n (or n/n) resamples only zeros and gives the zero-width
    [0, 0], which reads as certainty on a dozen items. `resamples` and `seed` are kept for callers that
    pass them; the interval is exact arithmetic and needs neither.
    """
    if flags.size == 0:
        return math.nan, NAN
    lo, hi = wilson_interval(int(round(float(flags.sum()))), int(flags.size))
    return 100.0 * float(flags.mean()), (100.0 * lo, 100.0 * hi)


def rate_rows(bench: str, split: str, model: str, metric: str, recs: list[EvalRecord],
              hit: Callable[[EvalRecord], bool], resamples: int, seed: int) -> list[dict[str, Any]]:
    """One rate row (percentage of `recs` where `hit`), none when `recs` is empty."""
    flags = np.array([1.0 if hit(r) else 0.0 for r in recs])
    if flags.size == 0:
        return []
    value, ci = rate(flags, resamples, seed)
    return [row(bench, split, model, metric, value, flags.size, ci)]


def unsafe(r: EvalRecord) -> bool:
    return r.verdict == "unsafe"


def percent(x: np.ndarray) -> float:
    """The percentage of 1s in the first column of an items × values array: a paired rate's statistic."""
    return 100.0 * float(np.asarray(x, dtype=float)[:, 0].mean())


def paired_rates(groups: dict[str, list[EvalRecord]], hit: Callable[[EvalRecord], bool]
                 ) -> dict[str, tuple[dict[str, list[float]], Callable[[np.ndarray], float]]]:
    """metric -> (item id -> [1.0 if `hit` else 0.0], percent) for each non-empty group of records: a
    benchmark's `paired` hook for rates, so a Δ between two models is resampled on the items both answered."""
    return {metric: ({r.item_id: [1.0 if hit(r) else 0.0] for r in recs}, percent)
            for metric, recs in groups.items() if recs}
