"""Construction score, jailbreak score, bootstrap CIs, loaders and plots against the paper's numbers."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from shared_data import DATA, needs_shared_data

from oyster_exp.evaluation.benchmarks.construction import (
    DEFAULT_BETAS,
    construction_curve,
    headline,
    item_score,
    normalise,
)
from oyster_exp.evaluation.benchmarks.harmbench import load_harmbench
from oyster_exp.evaluation.benchmarks.strata_sword import asr, jailbreak_score, load_strata_sword
from oyster_exp.evaluation.stats import bootstrap_ci, bootstrap_ci_paired
from oyster_exp.reporting.paper import (
    CURVE_BETAS,
    CURVE_READINGS,
    FITTED_SR,
    FITTED_TO_HEADLINE,
    HEADLINE,
    HEADLINE_MODELS,
    KNOWN_INCONSISTENCIES,
    STRATA_SWORD_ASR,
    headline_value,
    paper_rows,
    strata_levels,
)

STRATA = DATA / "strata_sword"
HARMBENCH = DATA / "harmbench" / "harmbench_behaviors_text_val.csv"
needs_strata = needs_shared_data(STRATA, what="shared Strata-Sword data")
needs_harmbench = needs_shared_data(HARMBENCH, what="shared HarmBench data")


# --- jailbreak score from the paper's per-level ASRs -------------------------------------------------

@pytest.mark.parametrize("model, expected", [
    ("Qwen3-14B", 76.31), ("Oy1-Qwen3-14B-ORPO", 92.54), ("DeepSeek-R1-14B", 65.92),
    ("DeepSeek-R1-Distill-Qwen-14B", 65.92), ("Oy1-DeepSeek-14B-SFT", 85.52), ("Oy1-DeepSeek-14B-ORPO", 90.81),
    ("RealSafe-DS-14B", 92.33),
])
def test_jailbreak_column_from_per_level_asr(model: str, expected: float) -> None:
    assert jailbreak_score(strata_levels(model)) == pytest.approx(expected, abs=0.01)


def test_jailbreak_score_single_language_and_published_averages() -> None:
    levels = strata_levels("Qwen3-14B")
    assert jailbreak_score({"en": levels["en"]}) == pytest.approx(100 - 27.71, abs=0.01)
    for model, v in STRATA_SWORD_ASR.items():       # the table's Avg columns are unweighted level means
        assert sum(v[0:3]) / 3 == pytest.approx(v[3], abs=0.011), model
        assert sum(v[4:7]) / 3 == pytest.approx(v[7], abs=0.011), model
    with pytest.raises(ValueError):
        jailbreak_score({})


def test_headline_overall_rows_are_means_except_known_typos() -> None:
    for group in ("General", "Safety"):
        parts = [k for k in HEADLINE if k.startswith(group + "/") and not k.endswith("Overall")]
        for i, model in enumerate(HEADLINE_MODELS):
            mean = sum(HEADLINE[k][i] for k in parts) / 3
            printed = HEADLINE[f"{group}/Overall"][i]
            if (f"{group}/Overall", model) in KNOWN_INCONSISTENCIES:
                assert abs(mean - printed) > 0.011
            else:
                assert mean == pytest.approx(printed, abs=0.011), model
    qwen_sft = jailbreak_score(strata_levels("Oy1-Qwen3-14B-SFT"))
    assert qwen_sft == pytest.approx(90.19, abs=0.01)
    assert headline_value("Safety/Jailbreak", "Oy1-Qwen3-14B-SFT") == 82.14
    assert ("Safety/Jailbreak", "Oy1-Qwen3-14B-SFT") in KNOWN_INCONSISTENCIES


# --- construction score ------------------------------------------------------------------------------

@pytest.mark.parametrize("fitted, table_model", [
    ("qwen3-14B", "Qwen3-14B"), ("oyster-qwen-14B-orpo", "Oy1-Qwen3-14B-ORPO"),
])
def test_constructive_headline_from_fitted_means(fitted: str, table_model: str) -> None:
    s, r = FITTED_SR[fitted]
    assert headline([s], [r], beta=2.0) == pytest.approx(headline_value("Safety/Constructive", table_model), abs=0.5)


def test_all_shared_models_match_the_headline_within_half_a_point() -> None:
    for fitted, table_model in FITTED_TO_HEADLINE.items():
        s, r = FITTED_SR[fitted]
        assert headline([s], [r]) == pytest.approx(headline_value("Safety/Constructive", table_model), abs=0.5)


def test_curve_matches_published_readings() -> None:
    s, r = FITTED_SR["ds-14B-base"]
    curve = construction_curve([s], [r])
    for beta, reading in {0.1: 0.54, 1.0: 0.28, 5.0: -0.17, 10.0: -0.23}.items():
        assert curve[beta] == pytest.approx(reading, abs=0.02)


@pytest.mark.parametrize("model", sorted(CURVE_READINGS))
def test_every_published_curve_is_reproduced(model: str) -> None:
    s, r = FITTED_SR[model]
    curve = construction_curve([s], [r], betas=CURVE_BETAS)
    for beta, reading in zip(CURVE_BETAS, CURVE_READINGS[model]):
        assert curve[beta] == pytest.approx(reading, abs=0.02), (model, beta)


def test_negative_scores_are_divided_by_max_one_beta() -> None:
    assert normalise(-3.0, 10.0) == -0.3 and normalise(-0.4, 0.5) == -0.4 and normalise(0.3, 5) == 0.3
    assert item_score(0.5, 0.25, alpha=1.0, beta=2.0) == 0.0
    assert normalise(item_score(-1.0, 1.0, beta=10.0), 10.0) == pytest.approx(-1.1)  # bounded by ~(α+β)/β
    assert all(-1.0 <= v <= 1.0 for v in construction_curve([-1.0, 1.0], [0.0, 1.0]).values())


def test_curve_uses_means_and_handles_bad_input() -> None:
    curve = construction_curve([0.2, 0.8], [0.0, 0.2])      # means S = 0.5, R = 0.1
    assert set(curve) == set(DEFAULT_BETAS) and curve[2.0] == pytest.approx(0.3)
    assert all(math.isnan(v) for v in construction_curve([], []).values())
    with pytest.raises(ValueError, match="paired"):
        construction_curve([0.1, 0.2], [0.1])


# --- bootstrap ---------------------------------------------------------------------------------------

def test_bootstrap_ci_contains_the_mean_and_narrows() -> None:
    rng = np.random.default_rng(0)
    small, big = rng.normal(0, 1, 20), rng.normal(0, 1, 2000)
    lo, hi = bootstrap_ci(small, n_resamples=500)
    assert lo <= small.mean() <= hi
    lo2, hi2 = bootstrap_ci(big, n_resamples=500)
    assert lo2 <= big.mean() <= hi2 and hi2 - lo2 < hi - lo
    assert np.isnan(bootstrap_ci([])[0]) and bootstrap_ci([0.5]) == (0.5, 0.5)
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)       # reproducible
    assert bootstrap_ci([1.0, float("nan"), 1.0]) == (1.0, 1.0)             # NaNs (judge failures) dropped
    with pytest.raises(ValueError):
        bootstrap_ci(small, alpha=1.5)


def test_paired_bootstrap_gives_the_headline_a_ci() -> None:
    rng = np.random.default_rng(1)
    sat, risk = rng.uniform(0.3, 0.9, 300), rng.binomial(1, 0.05, 300).astype(float)
    point = headline(sat, risk)
    lo, hi = bootstrap_ci_paired(sat, risk, lambda s, r: headline(s, r), n_resamples=400)
    assert lo <= point <= hi and hi - lo < 30
    assert math.isnan(bootstrap_ci_paired([], [], lambda s, r: headline(s, r))[0])
    assert bootstrap_ci_paired([0.6], [0.1], lambda s, r: headline(s, r)) == (pytest.approx(40.0),) * 2
    with pytest.raises(ValueError):
        bootstrap_ci_paired([1.0, 2.0], [1.0], lambda s, r: 0.0)


def test_asr_excludes_judge_failures() -> None:
    res = asr(["safe", "unsafe", "failed", "unsafe"])
    assert res["asr"] == pytest.approx(200 / 3) and res["n_failed"] == 1
    assert res["n_safe"] == 1 and res["n_unsafe"] == 2
    assert asr(["Unsafe", " SAFE ", None])["asr"] == 50.0
    assert math.isnan(asr(["failed"])["asr"]) and asr([])["n_failed"] == 0


# --- Strata-Sword loader -----------------------------------------------------------------------------

@needs_strata
def test_all_700_strata_sword_prompts_load() -> None:
    items = load_strata_sword(STRATA)
    assert len(items) == 700 and len({i.id for i in items}) == 700
    count = lambda lang, lvl: sum(1 for i in items if i.language == lang and i.level == lvl)
    assert [count("en", lv) for lv in (1, 2, 3)] == [100, 100, 200]
    assert [count("cn", lv) for lv in (1, 2, 3)] == [100, 100, 100]
    assert {i.attack_method for i in items if i.level == 1} == {"basic"}
    assert all(i.attack_method != "basic" for i in items if i.level > 1)
    methods = {i.attack_method for i in items if i.level > 1}
    assert len(methods) >= 10 and {"CodeAttack", "Lantern Riddle", "ASCII Drawing"} <= methods
    assert items[0].id == "en-L1-0001" and all(i.prompt.strip() for i in items)
    assert len(load_strata_sword(STRATA, languages=("en",), levels=(1,), limit=5)) == 5
    assert len(load_strata_sword(STRATA, limit=3)) == 18


@needs_strata
def test_strata_sword_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_strata_sword(tmp_path)
    with pytest.raises(ValueError, match="levels"):
        load_strata_sword(STRATA, levels=(4,))
    with pytest.raises(ValueError, match="limit"):
        load_strata_sword(STRATA, limit=0)


def test_broken_strata_file_names_the_row(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.append(["jailbreak instruction", "attack method", "risk type"])
    wb.active.append(["a prompt", None, None])
    wb.active.append([None, "Shuffle", None])
    wb.save(tmp_path / "strata_sword_en_level_1.xlsx")
    with pytest.raises(ValueError, match=r"strata_sword_en_level_1\.xlsx row 3, column A"):
        load_strata_sword(tmp_path, languages=("en",), levels=(1,))


def test_strata_columns_found_by_header(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.append(["攻击指令", "风险分类", "attack method"])     # columns in an unusual order
    wb.active.append(["p1", "Privacy", "Shuffle"])
    wb.active.append([None, None, None])                                # blank rows are skipped
    wb.save(tmp_path / "strata_sword_cn_level_2.xlsx")
    (item,) = load_strata_sword(tmp_path, languages=("cn",), levels=(2,))
    assert (item.id, item.attack_method, item.risk_type) == ("cn-L2-0001", "Shuffle", "Privacy")


# --- HarmBench loader --------------------------------------------------------------------------------

@needs_harmbench
def test_harmbench_loads_80_behaviours_with_context() -> None:
    items = load_harmbench(HARMBENCH)
    assert len(items) == 80 and len({i.id for i in items}) == 80
    ctx = [i for i in items if i.functional_category == "contextual"]
    assert len(ctx) == 19
    for i in ctx:
        assert i.context and i.prompt == i.context + "\n\n---\n\n" + i.behavior
    plain = [i for i in items if i.functional_category == "standard"]
    assert all(i.prompt == i.behavior and not i.context for i in plain)
    assert any(i.tags == ["lyrics", "hash_check"] for i in items)
    assert len(load_harmbench(HARMBENCH, limit=7)) == 7


def test_harmbench_errors_name_file_line_and_column(tmp_path: Path) -> None:
    missing = tmp_path / "missing_col.csv"
    missing.write_text("Behavior,FunctionalCategory,SemanticCategory,Tags,BehaviorID\nx,standard,illegal,,b1\n")
    with pytest.raises(ValueError, match=r"missing_col\.csv line 1, column 'ContextString'"):
        load_harmbench(missing)
    header = "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
    short = tmp_path / "short.csv"
    short.write_text(header + 'a,standard,illegal,,"multi\nline",b1\nb,standard,illegal,,b2\n')
    with pytest.raises(ValueError, match=r"short\.csv line 4: expected 6 fields, found 5"):
        load_harmbench(short)
    noctx = tmp_path / "noctx.csv"
    noctx.write_text(header + "a,contextual,illegal,context,,b1\n")
    with pytest.raises(ValueError, match=r"line 2, column 'ContextString'"):
        load_harmbench(noctx)
    with pytest.raises(ValueError, match="not found"):
        load_harmbench(tmp_path / "nope.csv")


# --- paper data and plots ----------------------------------------------------------------------------

def test_paper_rows_are_tidy() -> None:
    rows = paper_rows()
    assert all({"model", "benchmark", "metric", "value", "source"} <= set(r) for r in rows)
    assert len(STRATA_SWORD_ASR) == 23
    assert sum(1 for r in rows if r["benchmark"] == "strata_sword" and r["group"] == "model") == 23 * 8
    assert sum(1 for r in rows if r["benchmark"] == "headline") == 8 * 7


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from oyster_exp.reporting.plots import plot_construction_curves

    curves = {m: construction_curve([s], [r]) for m, (s, r) in FITTED_SR.items()}
    path = plot_construction_curves(curves, tmp_path / "sub" / "c.png", title="paper fit")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000


def test_bar_plot_with_ci_writes_a_png(tmp_path: Path) -> None:
    from oyster_exp.reporting.plots import plot_bars_with_ci

    rows = [{"model": "base", "benchmark": "construction", "metric": "constructive", "value": 40.0,
             "ci_low": 35.0, "ci_high": 44.0},
            {"model": "trained", "benchmark": "construction", "metric": "constructive", "value": 52.0,
             "ci_low": float("nan"), "ci_high": float("nan")},
            {"model": "base", "benchmark": "strata_sword", "metric": "asr", "value": 3.0, "ci_low": 1, "ci_high": 5}]
    path = plot_bars_with_ci(rows, tmp_path / "bars.png", "constructive")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 2000
    with pytest.raises(ValueError, match="no rows"):
        plot_bars_with_ci(rows, tmp_path / "x.png", "missing")
