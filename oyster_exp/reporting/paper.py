"""The Oyster-I paper's published numbers, kept as data so reports and tests can compare against them.

Sources (oyster_reference §11): the Strata-Sword ASR table (Table 2 of arXiv 2509.01444), the Oyster-I
headline table, and per-model (satisfaction, risk) means fitted to the paper's construction-score curves
(the paper does not publish S and R themselves). Values are copied as printed, inconsistencies included
(see KNOWN_INCONSISTENCIES), so a comparison never silently "corrects" the paper.
"""
from __future__ import annotations

from typing import Any

SOURCE_SS = "Strata-Sword Table 2 (arXiv 2509.01444)"
SOURCE_HEAD = "Oyster-I headline table (README exp_1.png)"
SOURCE_FIT = "fitted to the paper's construction-score curves (INFERENCE)"
SOURCE_CURVE = "read off the paper's construction-score figure (±0.01)"

STRATA_COLUMNS: tuple[str, ...] = ("EN L1", "EN L2", "EN L3", "EN Avg", "CN L1", "CN L2", "CN L3", "CN Avg")

# ASR in percent (lower = safer), columns as STRATA_COLUMNS
STRATA_SWORD_ASR: dict[str, tuple[float, ...]] = {
    "Vicuna-7B": (50.00, 49.49, 73.50, 57.66, 73.00, 51.00, 76.00, 66.67),
    "Vicuna-13B": (10.00, 46.32, 71.50, 42.61, 33.00, 52.00, 74.75, 53.25),
    "Mistral-7B-Instruct": (46.00, 54.00, 84.00, 61.33, 55.00, 66.00, 89.00, 70.00),
    "Mistral-Large-Instruct": (30.00, 26.00, 81.50, 45.83, 5.00, 21.00, 52.00, 26.00),
    "Llama-3.1-8B-Instruct": (3.00, 3.00, 35.00, 13.67, 1.00, 30.00, 65.00, 32.00),
    "Llama-3.1-70B-Instruct": (4.00, 5.00, 41.00, 16.67, 3.00, 24.00, 64.00, 30.33),
    "DeepSeek-R1-7B": (38.38, 38.00, 69.70, 48.69, 38.38, 47.47, 67.35, 51.07),
    "DeepSeek-R1-14B": (10.00, 22.00, 69.85, 33.95, 8.00, 32.00, 62.63, 34.21),
    "DeepSeek-R1-8B-0528": (1.00, 9.00, 38.00, 16.00, 0.00, 27.00, 45.00, 24.00),
    "Qwen3-8B": (2.00, 18.37, 74.37, 31.58, 2.00, 21.21, 55.10, 26.10),
    "Qwen3-14B": (1.00, 13.13, 69.00, 27.71, 0.00, 19.00, 40.00, 19.67),
    "Qwen3-32B": (2.00, 21.00, 67.84, 30.28, 1.00, 14.00, 44.00, 19.67),
    "Oy1-DeepSeek-14B-SFT": (0.00, 3.00, 57.87, 20.29, 0.00, 4.00, 22.00, 8.67),
    "Oy1-DeepSeek-14B-ORPO": (0.00, 1.00, 34.90, 11.97, 0.00, 6.00, 13.27, 6.42),
    "Oy1-Qwen3-14B-SFT": (0.00, 2.00, 36.87, 12.96, 0.00, 3.00, 17.00, 6.67),
    "Oy1-Qwen3-14B-ORPO": (0.00, 2.00, 20.60, 7.53, 0.00, 6.00, 16.16, 7.39),
    "STAIR-Qwen2-7B": (0.00, 0.00, 22.50, 7.50, 2.00, 8.00, 18.00, 9.33),
    "RealSafe-DS-14B": (0.00, 0.00, 17.00, 5.67, 0.00, 6.00, 23.00, 9.67),
    "Gemini-2.5-pro(0617)": (1.01, 17.00, 44.22, 20.74, 3.03, 25.00, 44.44, 24.16),
    "Claude-3.7-sonnet": (0.00, 1.00, 14.50, 5.17, 1.00, 8.00, 34.00, 14.33),
    "GPT-4o-global(0806)": (0.00, 5.00, 35.00, 13.33, 0.00, 6.00, 30.00, 12.00),
    "GPT-o1-preview(0912)": (0.00, 3.00, 9.00, 4.00, 0.00, 6.00, 7.00, 4.33),
    "GPT-5-chat(0807)": (0.00, 3.00, 48.50, 17.17, 0.00, 16.00, 28.00, 14.67),
}

# the table's group "Overall" rows, same columns
STRATA_SWORD_GROUPS: dict[str, tuple[float, ...]] = {
    "open LLMs": (23.83, 30.64, 64.42, 39.63, 28.33, 40.67, 70.13, 46.38),
    "open LRMs": (4.53, 10.79, 48.21, 21.18, 4.28, 16.14, 35.29, 18.57),
    "closed": (0.20, 5.80, 30.24, 12.08, 0.81, 12.20, 28.69, 13.90),
}

HEADLINE_MODELS: tuple[str, ...] = ("Qwen3-14B", "Oy1-Qwen3-14B-SFT", "Oy1-Qwen3-14B-ORPO",
                                    "DeepSeek-R1-Distill-Qwen-14B", "Oy1-DeepSeek-14B-SFT",
                                    "Oy1-DeepSeek-14B-ORPO", "RealSafe-DS-14B")
# "Group/Row": one value per HEADLINE_MODELS entry; each "Overall" is the mean of the three rows above it
HEADLINE: dict[str, tuple[float, ...]] = {
    "General/Knowledge": (81.14, 82.98, 82.33, 81.60, 80.89, 80.13, 80.79),
    "General/Understanding": (80.12, 76.95, 77.08, 76.28, 74.23, 73.98, 74.77),
    "General/Math&Code": (87.00, 93.06, 93.19, 88.60, 90.30, 88.06, 81.77),
    "General/Overall": (82.75, 84.33, 84.20, 82.16, 81.81, 80.72, 79.11),
    "Safety/Open-source": (94.73, 98.07, 98.12, 82.23, 95.99, 97.59, 97.22),
    "Safety/Jailbreak": (76.31, 82.14, 92.54, 65.92, 85.52, 90.81, 92.33),
    "Safety/Constructive": (47.54, 53.36, 56.27, -0.49, 51.95, 55.27, 33.33),
    "Safety/Overall": (72.86, 77.86, 82.31, 49.22, 77.82, 81.22, 72.29),
}

# cells that do not follow from the paper's own definitions; kept as printed, listed so reports can flag them
KNOWN_INCONSISTENCIES: dict[tuple[str, str], str] = {
    ("Safety/Jailbreak", "Oy1-Qwen3-14B-SFT"):
        "Strata-Sword Table 2 implies 100 - (12.96 + 6.67)/2 = 90.19, printed 82.14",
    ("Safety/Overall", "RealSafe-DS-14B"): "mean of its three safety rows is 74.29, printed 72.29 (off by exactly 2)",
}

# headline-table name -> Strata-Sword table name, where they differ
HEADLINE_TO_STRATA: dict[str, str] = {"DeepSeek-R1-Distill-Qwen-14B": "DeepSeek-R1-14B"}

# (satisfaction, risk) benchmark means reproducing the construction curves (RMSE <= 0.007), ±0.01
FITTED_SR: dict[str, tuple[float, float]] = {
    "gpt-5": (0.736, 0.063),
    "oyster-qwen-14B-orpo": (0.606, 0.021),
    "qwen3-14B": (0.636, 0.079),
    "oyster-ds-14B-orpo": (0.626, 0.035),
    "ds-14B-base": (0.570, 0.288),
    "realsafe-ds-14B": (0.430, 0.049),
    "gpt-o1-preview-0912": (0.464, 0.055),
    "claude37_sonnet": (0.552, 0.096),
}
# curve-figure name -> headline-table name, for the five models in both
FITTED_TO_HEADLINE: dict[str, str] = {
    "qwen3-14B": "Qwen3-14B", "oyster-qwen-14B-orpo": "Oy1-Qwen3-14B-ORPO",
    "ds-14B-base": "DeepSeek-R1-Distill-Qwen-14B", "oyster-ds-14B-orpo": "Oy1-DeepSeek-14B-ORPO",
    "realsafe-ds-14B": "RealSafe-DS-14B",
}

CURVE_BETAS: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
# normalised construction score at CURVE_BETAS as read from the figure ("≈0" stored as 0.0)
CURVE_READINGS: dict[str, tuple[float, ...]] = {
    "gpt-5": (0.73, 0.70, 0.67, 0.61, 0.55, 0.42, 0.11),
    "oyster-qwen-14B-orpo": (0.60, 0.60, 0.59, 0.56, 0.54, 0.50, 0.40),
    "qwen3-14B": (0.63, 0.60, 0.55, 0.48, 0.40, 0.24, 0.0),
    "oyster-ds-14B-orpo": (0.62, 0.61, 0.59, 0.55, 0.52, 0.45, 0.28),
    "ds-14B-base": (0.54, 0.43, 0.28, 0.00, -0.10, -0.17, -0.23),
    "realsafe-ds-14B": (0.43, 0.41, 0.38, 0.33, 0.29, 0.18, 0.0),
    "gpt-o1-preview-0912": (0.46, 0.44, 0.41, 0.35, 0.30, 0.19, 0.0),
    "claude37_sonnet": (0.54, 0.51, 0.46, 0.36, 0.26, 0.07, -0.04),
}


def strata_levels(model: str) -> dict[str, dict[int, float]]:
    """Per-language, per-level ASR of one model, in the shape `jailbreak_score` takes.

    Accepts either table's name (e.g. "DeepSeek-R1-Distill-Qwen-14B" or "DeepSeek-R1-14B").
    """
    name = HEADLINE_TO_STRATA.get(model, model)
    if name not in STRATA_SWORD_ASR:
        raise KeyError(f"{model!r} is not in the Strata-Sword table; known: {sorted(STRATA_SWORD_ASR)}")
    v = STRATA_SWORD_ASR[name]
    return {"en": {1: v[0], 2: v[1], 3: v[2]}, "cn": {1: v[4], 2: v[5], 3: v[6]}}


def headline_value(metric: str, model: str) -> float:
    """One cell of the headline table, e.g. headline_value("Safety/Jailbreak", "Qwen3-14B")."""
    return HEADLINE[metric][HEADLINE_MODELS.index(model)]


def paper_rows() -> list[dict[str, Any]]:
    """Every published number as a tidy row: model, benchmark, metric, value, source (+ group)."""
    rows: list[dict[str, Any]] = []
    for key, values in HEADLINE.items():
        group, metric = key.split("/")
        for m, v in zip(HEADLINE_MODELS, values):
            row = {"model": m, "benchmark": "headline", "metric": metric, "group": group, "value": v,
                   "source": SOURCE_HEAD}
            if (key, m) in KNOWN_INCONSISTENCIES:
                row["note"] = KNOWN_INCONSISTENCIES[(key, m)]
            rows.append(row)
    for table, group in ((STRATA_SWORD_ASR, "model"), (STRATA_SWORD_GROUPS, "group overall")):
        for model, values in table.items():
            rows += [{"model": model, "benchmark": "strata_sword", "metric": f"ASR {col}", "group": group,
                      "value": v, "source": SOURCE_SS} for col, v in zip(STRATA_COLUMNS, values)]
    for model, (s, r) in FITTED_SR.items():
        for metric, v in (("satisfaction", s), ("risk", r)):
            rows.append({"model": model, "benchmark": "construction", "metric": metric, "group": "fitted",
                         "value": v, "source": SOURCE_FIT})
    for model, readings in CURVE_READINGS.items():
        rows += [{"model": model, "benchmark": "construction", "metric": f"normalised@beta={b:g}",
                  "group": "curve", "value": v, "source": SOURCE_CURVE} for b, v in zip(CURVE_BETAS, readings)]
    return rows


def _strata_column(col: str) -> dict[str, float]:
    i = STRATA_COLUMNS.index(col)
    out = {}
    for m in HEADLINE_MODELS:
        name = HEADLINE_TO_STRATA.get(m, m)
        if name in STRATA_SWORD_ASR:
            out[m] = STRATA_SWORD_ASR[name][i]
    return out


def reference_for(benchmark: str, metric: str) -> tuple[dict[str, float], str] | None:
    """The paper's published values for one of our result rows, keyed by headline-table model, and
    their source; None where the paper publishes nothing comparable (HarmBench, over-refusal, and the
    General rows, whose benchmarks it does not name).

    Our metric names: construction `satisfaction`, `risk`, `constructive@beta=2`; Strata-Sword
    `asr[en-L1]` ... `asr[cn-avg]`, `jailbreak_score`.
    """
    if benchmark == "construction":
        if metric == "constructive@beta=2":
            return dict(zip(HEADLINE_MODELS, HEADLINE["Safety/Constructive"])), SOURCE_HEAD
        if metric in ("satisfaction", "risk"):
            k = 0 if metric == "satisfaction" else 1
            return {FITTED_TO_HEADLINE[f]: FITTED_SR[f][k] for f in FITTED_TO_HEADLINE}, SOURCE_FIT
        return None
    if benchmark == "strata_sword":
        if metric == "jailbreak_score":
            return dict(zip(HEADLINE_MODELS, HEADLINE["Safety/Jailbreak"])), SOURCE_HEAD
        if metric.startswith("asr[") and metric.endswith("]"):
            lang, _, part = metric[4:-1].partition("-")
            col = f"{lang.upper()} {'Avg' if part == 'avg' else part}"
            if col in STRATA_COLUMNS:
                return _strata_column(col), SOURCE_SS
    return None
