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


# --- differences on shared items, and intervals for rates -------------------------------------------

def paired_delta(base: dict[str, float], other: dict[str, float], n_resamples: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> dict[str, float]:
    """Δ = mean(other − base) over the items both have a value for, with its paired bootstrap CI.

    Resampling the per-item differences (not the two means independently) removes the between-item
    spread that both models share, which is most of the variance when items differ a lot in difficulty:
    an unpaired interval would call real, consistent gains noise. Items present on one side only, or NaN on
    either, are left out; `n` says how many remain. Returns {delta, ci_low, ci_high, n}; with no shared item
    every value but n is NaN.
    """
    _check(n_resamples, alpha)
    shared = sorted(k for k in base.keys() & other.keys()
                    if not (math.isnan(float(base[k])) or math.isnan(float(other[k]))))
    diffs = np.array([float(other[k]) - float(base[k]) for k in shared], dtype=float)
    if diffs.size == 0:
        return {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    lo, hi = bootstrap_ci(diffs, n_resamples=n_resamples, alpha=alpha, seed=seed)
    return {"delta": float(diffs.mean()), "ci_low": lo, "ci_high": hi, "n": int(diffs.size)}


def excludes_zero(low: float, high: float, tol: float = 1e-12) -> bool:
    """A CI that lies wholly above or below 0 (NaN bounds never do). Bounds within `tol` of 0 count as 0: a
    difference of sums that should cancel leaves a rounding residue (1e-17), which is not an effect."""
    return (low > tol and high > tol) or (low < -tol and high < -tol)


def _z(alpha: float) -> float:
    """The two-sided standard-normal quantile z_{1-alpha/2}, by bisection on erf (no scipy at run time)."""
    target, lo, hi = 1.0 - alpha / 2.0, 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _check_counts(k: int, n: int, alpha: float) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _wilson(p: float, n: float, alpha: float) -> tuple[float, float]:
    """The Wilson score bounds for an observed proportion `p` out of `n` (n may be an effective, non-integer size)."""
    z = _z(alpha)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p)) / n + z * z / (4 * n * n)) / denom
    # at p = 0 (p = 1) the bound is exactly 0 (1); computing it leaves a rounding residue
    return (0.0 if p <= 0.0 else max(0.0, centre - half), 1.0 if p >= 1.0 else min(1.0, centre + half))


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a rate k/n, as proportions in [0, 1].

    Unlike the bootstrap or the normal approximation it has width at 0/n and n/n (3 unsafe of 3 is not
    "100 % for sure"), and its coverage is close to nominal even for a dozen items. n = 0 -> (nan, nan).
    """
    _check_counts(k, n, alpha)
    if n == 0:
        return (math.nan, math.nan)
    return _wilson(k / n, float(n), alpha)


def stratified_wilson_interval(strata: Sequence[tuple[int, int]], weights: Sequence[float] | None = None,
                               alpha: float = 0.05) -> tuple[float, float]:
    """Wilson interval of a fixed-weight mean of per-stratum rates, sum_l W_l k_l / n_l, as a proportion.

    For scores such as Strata-Sword's per-language average (the unweighted mean of the per-level ASRs, whose
    levels differ in size) and its jailbreak score. A bootstrap of such a mean is [0, 0] when no item in any
    stratum succeeded; here the Wilson bounds are taken at the Kish effective sample size
    n_eff = 1 / sum_l (W_l^2 / n_l), the n of a simple random sample whose rate would have the same variance.
    With equal weights and equal strata, n_eff is the total n and the interval is the pooled Wilson interval.
    `strata` are (k, n) pairs; `weights` (default: equal) are normalised to sum 1. Strata with n = 0 are left
    out; none left -> (nan, nan).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    w = [1.0] * len(strata) if weights is None else [float(x) for x in weights]
    if len(w) != len(strata):
        raise ValueError(f"{len(strata)} strata but {len(w)} weights")
    for k, n in strata:
        _check_counts(int(k), int(n), alpha)
    kept = [(k, n, x) for (k, n), x in zip(strata, w) if n > 0 and x > 0]
    total = sum(x for _, _, x in kept)
    if not kept or total <= 0:
        return (math.nan, math.nan)
    p = sum(x / total * k / n for k, n, x in kept)
    n_eff = 1.0 / sum((x / total) ** 2 / n for _, n, x in kept)
    return _wilson(min(1.0, max(0.0, p)), n_eff, alpha)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact enough for n in the tens of thousands)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _solve(f: Callable[[float], float], target: float) -> float:
    """p in [0, 1] with the decreasing function f(p) = target, by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def clopper_pearson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval of a rate k/n, as proportions: never below nominal coverage.

    The bounds invert the binomial tails: the lower bound is the p at which P(X >= k) = alpha/2, the
    upper the p at which P(X <= k) = alpha/2; 0/n has lower bound 0 and a positive upper bound (about
    3.7/n at 95 %, the "rule of three"). n = 0 -> (nan, nan).
    """
    _check_counts(k, n, alpha)
    if n == 0:
        return (math.nan, math.nan)
    # P(X >= k | p) = P(n - X <= n - k) with n - X ~ Binomial(n, 1 - p): solve for q = 1 - p_low
    low = 0.0 if k == 0 else 1.0 - _solve(lambda q: _binom_cdf(n - k, n, q), alpha / 2.0)
    high = 1.0 if k == n else _solve(lambda p: _binom_cdf(k, n, p), alpha / 2.0)
    return (low, high)


def paired_delta_stat(base: dict[str, Sequence[float]], other: dict[str, Sequence[float]],
                      stat: Callable[[np.ndarray], float], n_resamples: int = 2000, alpha: float = 0.05,
                      seed: int = 0) -> dict[str, float]:
    """Δ = stat(other) − stat(base) over the shared items, resampling items jointly for both sides.

    `stat` maps an (items × values) array to a number, for scores that are not a mean of one per-item value
    (the construction headline combines mean satisfaction and mean risk non-linearly). Each side's item
    carries a tuple of values; items with a NaN on either side are left out. Returns {delta, ci_low,
    ci_high, n}.
    """
    _check(n_resamples, alpha)
    shared = sorted(k for k in base.keys() & other.keys()
                    if not (np.isnan(np.asarray(base[k], dtype=float)).any()
                            or np.isnan(np.asarray(other[k], dtype=float)).any()))
    if not shared:
        return {"delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    a = np.array([np.atleast_1d(np.asarray(base[k], dtype=float)) for k in shared])
    b = np.array([np.atleast_1d(np.asarray(other[k], dtype=float)) for k in shared])
    delta = float(stat(b)) - float(stat(a))
    if len(shared) == 1:
        return {"delta": delta, "ci_low": delta, "ci_high": delta, "n": 1}
    idx = np.random.default_rng(seed).integers(0, len(shared), size=(n_resamples, len(shared)))
    lo, hi = _interval(np.array([float(stat(b[i])) - float(stat(a[i])) for i in idx], dtype=float), alpha)
    return {"delta": delta, "ci_low": lo, "ci_high": hi, "n": len(shared)}
