"""Construction score, jailbreak score and loaders against the paper's published numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oyster_exp.evaluation.construction import construction_curve, headline, normalise
from oyster_exp.evaluation.stats import bootstrap_ci
from oyster_exp.evaluation.strata_sword import asr, jailbreak_score, load_strata_sword
from oyster_exp.reporting.paper import FITTED_SR, HEADLINE, HEADLINE_MODELS, strata_levels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("model, expected", [
    ("Qwen3-14B", 76.31), ("Oy1-Qwen3-14B-ORPO", 92.54), ("DeepSeek-R1-14B", 65.92),
])
def test_jailbreak_column_from_per_level_asr(model: str, expected: float) -> None:
    assert jailbreak_score(strata_levels(model)) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("fitted, table_model", [
    ("qwen3-14B", "Qwen3-14B"), ("oyster-qwen-14B-orpo", "Oy1-Qwen3-14B-ORPO"),
])
def test_constructive_headline_from_fitted_means(fitted: str, table_model: str) -> None:
    s, r = FITTED_SR[fitted]
    table = HEADLINE["Safety/Constructive"][HEADLINE_MODELS.index(table_model)]
    assert headline([s], [r], beta=2.0) == pytest.approx(table, abs=0.5)


def test_curve_matches_published_readings() -> None:
    s, r = FITTED_SR["ds-14B-base"]
    curve = construction_curve([s], [r])
    for beta, reading in {0.1: 0.54, 1.0: 0.28, 5.0: -0.17, 10.0: -0.23}.items():
        assert curve[beta] == pytest.approx(reading, abs=0.02)


def test_negative_scores_are_divided_by_max_one_beta() -> None:
    assert normalise(-3.0, 10.0) == -0.3 and normalise(-0.4, 0.5) == -0.4 and normalise(0.3, 5) == 0.3


def test_bootstrap_ci_contains_the_mean_and_narrows() -> None:
    rng = np.random.default_rng(0)
    small, big = rng.normal(0, 1, 20), rng.normal(0, 1, 2000)
    lo, hi = bootstrap_ci(small, n_resamples=500)
    assert lo <= small.mean() <= hi
    lo2, hi2 = bootstrap_ci(big, n_resamples=500)
    assert hi2 - lo2 < hi - lo
    assert np.isnan(bootstrap_ci([])[0]) and bootstrap_ci([0.5]) == (0.5, 0.5)


def test_asr_excludes_judge_failures() -> None:
    res = asr(["safe", "unsafe", "failed", "unsafe"])
    assert res["asr"] == pytest.approx(200 / 3) and res["n_failed"] == 1


def test_all_700_strata_sword_prompts_load() -> None:
    items = load_strata_sword(DATA / "strata_sword")
    assert len(items) == 700
    count = lambda lang, lvl: sum(1 for i in items if i.language == lang and i.level == lvl)  # noqa: E731
    assert [count("en", lv) for lv in (1, 2, 3)] == [100, 100, 200]
    assert [count("cn", lv) for lv in (1, 2, 3)] == [100, 100, 100]
    methods = {i.attack_method for i in items if i.level > 1}
    assert len(methods) >= 10 and "basic" not in methods
    assert len(load_strata_sword(DATA / "strata_sword", languages=("en",), levels=(1,), limit=5)) == 5


def test_broken_strata_file_names_the_row(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.append(["jailbreak instruction", "attack method", "risk type"])
    wb.active.append(["a prompt", None, None])
    wb.active.append([None, "Shuffle", None])
    wb.save(tmp_path / "strata_sword_en_level_1.xlsx")
    with pytest.raises(ValueError, match="row 3"):
        load_strata_sword(tmp_path, languages=("en",), levels=(1,))


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from oyster_exp.reporting.plots import plot_construction_curves

    curves = {m: construction_curve([s], [r]) for m, (s, r) in FITTED_SR.items()}
    path = plot_construction_curves(curves, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
