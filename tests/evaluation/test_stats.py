"""The interval maths against scipy.stats on fixed data (scipy is a dev dependency: the product does not need it)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st

from oyster_exp.evaluation.stats import (
    clopper_pearson_interval,
    excludes_zero,
    paired_delta,
    stratified_wilson_interval,
    wilson_interval,
)

COUNTS = [(0, 1), (0, 12), (1, 12), (6, 12), (11, 12), (12, 12), (3, 40), (0, 383), (57, 383), (383, 383)]


@pytest.mark.parametrize("k,n", COUNTS)
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ref = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


@pytest.mark.parametrize("k,n", COUNTS)
def test_clopper_pearson_matches_scipy(k: int, n: int) -> None:
    ref = st.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson_interval(k, n)
    assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_other_levels_match_scipy() -> None:
    for alpha in (0.01, 0.1, 0.32):
        ref = st.binomtest(4, 25).proportion_ci(confidence_level=1 - alpha, method="exact")
        assert clopper_pearson_interval(4, 25, alpha) == pytest.approx((ref.low, ref.high), abs=1e-9)
        ref = st.binomtest(4, 25).proportion_ci(confidence_level=1 - alpha, method="wilson")
        assert wilson_interval(4, 25, alpha) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_zero_of_n_is_not_the_zero_width_interval() -> None:
    for fn in (wilson_interval, clopper_pearson_interval):
        lo, hi = fn(0, 20)
        assert lo == 0.0 and hi > 0.1        # 0 unsafe of 20 still allows a rate above 10 %
        lo, hi = fn(20, 20)
        assert hi == 1.0 and lo < 0.9
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_stratified_wilson_is_wilson_at_the_effective_n() -> None:
    # equal weights, equal strata: the pooled Wilson interval (scipy) of all items
    ref = st.binomtest(9, 60).proportion_ci(confidence_level=0.95, method="wilson")
    assert stratified_wilson_interval([(1, 20), (3, 20), (5, 20)]) == pytest.approx((ref.low, ref.high), abs=1e-9)
    # one stratum: plain Wilson; a zero-weight or empty stratum changes nothing
    ref = st.binomtest(4, 25).proportion_ci(confidence_level=0.95, method="wilson")
    assert stratified_wilson_interval([(4, 25), (9, 10), (0, 0)], [1.0, 0.0, 1.0]) == \
        pytest.approx((ref.low, ref.high), abs=1e-9)
    # unequal strata (Strata-Sword EN: 100/100/200): the mean of rates, at n_eff = 1 / sum(W^2 / n) = 266.7
    lo, hi = stratified_wilson_interval([(0, 100), (0, 100), (0, 200)])
    n_eff = 1 / ((1 / 9) * (1 / 100 + 1 / 100 + 1 / 200))
    z = st.norm.ppf(0.975)
    assert lo == 0.0 and hi == pytest.approx(z * z / (n_eff + z * z), rel=1e-9)    # Wilson's upper bound at 0/n
    lo, hi = stratified_wilson_interval([(10, 100), (30, 100), (20, 200)])
    assert lo < (0.1 + 0.3 + 0.1) / 3 < hi
    assert all(math.isnan(v) for v in stratified_wilson_interval([(0, 0)]))
    with pytest.raises(ValueError):
        stratified_wilson_interval([(1, 2)], [1.0, 1.0])


def test_paired_delta_uses_shared_items_only_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    difficulty = rng.normal(0, 1.0, 60)                  # large per-item spread shared by both models
    base = {f"q{i}": float(d) for i, d in enumerate(difficulty)}
    trained = {f"q{i}": float(d + 0.2 + rng.normal(0, 0.05)) for i, d in enumerate(difficulty)}
    trained["only-trained"] = 99.0                       # not shared: ignored
    base["q0"] = math.nan                                # a failed judge on one side: dropped
    d = paired_delta(base, trained, n_resamples=1000, seed=1)
    assert d["n"] == 59
    shared = [k for k in base if k != "q0"]
    assert d["delta"] == pytest.approx(np.mean([trained[k] - base[k] for k in shared]))
    assert d["ci_low"] > 0.15 and d["ci_high"] < 0.25 and excludes_zero(d["ci_low"], d["ci_high"])
    # an unpaired interval of the same data straddles 0: pairing is what makes the gain visible
    a, b = np.array([base[k] for k in shared]), np.array([trained[k] for k in shared])
    unpaired = st.bootstrap((b, a), lambda x, y: np.mean(x) - np.mean(y), n_resamples=1000,
                            paired=False, random_state=1, method="percentile").confidence_interval
    assert unpaired.low < 0 < unpaired.high
    # the paired percentile interval agrees with scipy's paired bootstrap of the mean difference
    ref = st.bootstrap((b - a,), np.mean, n_resamples=4000, random_state=0, method="percentile").confidence_interval
    d4 = paired_delta(base, trained, n_resamples=4000, seed=0)
    assert d4["ci_low"] == pytest.approx(ref.low, abs=0.01) and d4["ci_high"] == pytest.approx(ref.high, abs=0.01)
    assert paired_delta(base, trained, n_resamples=1000, seed=1) == d
    assert paired_delta({"a": 1.0}, {"b": 2.0})["n"] == 0
    assert not excludes_zero(-0.1, 0.2) and not excludes_zero(math.nan, math.nan)
    assert not excludes_zero(5e-17, 1e-16) and excludes_zero(1e-6, 2e-6)    # a rounding residue is not an effect
