"""Markdown tables of the tidy result rows: base and trained side by side, counts, the paper's numbers."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

COUNT_METRICS = ("n_judged", "n_failed", "n_skipped")


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "–"
    lo, hi = r["ci_low"], r["ci_high"]
    ci = "" if lo is None or hi is None or math.isnan(lo) or math.isnan(hi) else f" [{_num(lo)}, {_num(hi)}]"
    return f"{_num(r['value'])}{ci} (n={r['n']})"


def delta_cell(d: dict[str, Any]) -> str:
    """Δ with its paired 95% CI and the shared n; bold when the CI excludes 0."""
    from oyster_exp.evaluation.stats import excludes_zero

    text = f"{_num(d['delta'])} [{_num(d['ci_low'])}, {_num(d['ci_high'])}] (n={d['n']})"
    return f"**{text}**" if excludes_zero(d["ci_low"], d["ci_high"]) else text


def side_by_side(rows: list[dict[str, Any]], models: tuple[str, ...] = ("base", "trained"),
                 deltas: list[dict[str, Any]] | None = None) -> str:
    """One line per (benchmark, split, metric): each model's value with its 95% CI and n, and the difference:
    with its paired CI on the shared items where `deltas` has it (bold: the CI excludes 0), else the bare
    difference of the two values, marked "unpaired"."""
    paired = {(d["benchmark"], d["split"], d["metric"]): d for d in deltas or []}
    table: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["metric"] not in COUNT_METRICS:
            table[(r["benchmark"], r["split"], r["metric"])][r["model"]] = r
    if not table:
        return "_(no results)_"
    present = ([m for m in models if any(m in v for v in table.values())]
               or sorted({m for v in table.values() for m in v}))
    diff = len(present) == 2
    head = ["benchmark", "split", "metric", *present]
    if diff:
        head.append("Δ (" + present[1] + " − " + present[0] + ", paired 95% CI, shared n)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (bench, split, metric), by in table.items():
        cells = [bench, split, metric, *(_cell(by.get(m)) for m in present)]
        if diff:
            a, b = by.get(present[0]), by.get(present[1])
            d = paired.get((bench, split, metric))
            cells.append(delta_cell(d) if d is not None else
                         (f"{_num(b['value'] - a['value'])} (unpaired)" if a and b else "–"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts_table(rows: list[dict[str, Any]]) -> str:
    """Items judged / failed / skipped per benchmark and model."""
    by: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for r in rows:
        if r["metric"] in COUNT_METRICS:
            by[(r["benchmark"], r["split"], r["model"])][r["metric"]] = int(r["value"])
    if not by:
        return "_(no items)_"
    lines = ["| benchmark | split | model | judged | failed | skipped |", "|---|---|---|---|---|---|"]
    for (bench, split, model), c in sorted(by.items()):
        lines.append(f"| {bench} | {split} | {model} | {c.get('n_judged', 0)} | {c.get('n_failed', 0)} | "
                     f"{c.get('n_skipped', 0)} |")
    return "\n".join(lines)


def reference_table(rows: list[dict[str, Any]]) -> str:
    """The paper's published values for the metrics this run produced (14B models; orientation only)."""
    from oyster_exp.reporting.paper import HEADLINE_MODELS, reference_for

    seen: list[tuple[str, str]] = []
    for r in rows:
        key = (r["benchmark"], r["metric"])
        if key not in seen and reference_for(*key) is not None:
            seen.append(key)
    if not seen:
        return "_(the paper publishes no numbers for these rows)_"
    head = ["benchmark", "metric", *HEADLINE_MODELS, "source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, metric in seen:
        values, source = reference_for(bench, metric)  # type: ignore[misc]
        lines.append("| " + " | ".join([bench, metric, *(_num(values[m]) if m in values else "–"
                                                          for m in HEADLINE_MODELS), source]) + " |")
    return "\n".join(lines)


# The paper's headline columns (oyster_reference §11.4) from a run's rows: (benchmark, metric, to-percent).
# Open-source safety: the paper does not name its benchmarks; HarmBench (100 − ASR) is our open-source safety
# benchmark. Jailbreak: Strata-Sword's jailbreak score (100 − mean ASR). Constructive: 100 × normalised C at β = 2.
SAFETY_COLUMNS: dict[str, tuple[str, str, Any]] = {
    "Open-source": ("harmbench", "asr", lambda v: 100.0 - v),
    "Jailbreak": ("strata_sword", "jailbreak_score", lambda v: v),
    "Constructive": ("construction", "constructive@beta=2", lambda v: v),
}
# General capability: lm-eval tasks grouped into the paper's three columns by task name (its benchmarks are
# not named either); accuracies in [0, 1] are shown as percentages.
GENERAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "Knowledge": ("mmlu", "cmmlu", "ceval", "arc", "triviaqa", "nq_open"),
    "Understanding": ("hellaswag", "winogrande", "boolq", "race", "piqa", "drop", "lambada"),
    "Math&Code": ("gsm8k", "math", "humaneval", "mbpp"),
}


def _column_values(rows: list[dict[str, Any]], model: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for col, (bench, metric, to_pct) in SAFETY_COLUMNS.items():
        vals = [r["value"] for r in rows if r["model"] == model and r["benchmark"] == bench
                and r["metric"] == metric and r["value"] is not None and not math.isnan(r["value"])]
        if vals:
            out[col] = float(to_pct(vals[0]))
    for col, names in GENERAL_COLUMNS.items():
        vals = [r["value"] for r in rows if r["model"] == model and r["benchmark"] == "capability"
                and r["metric"] not in COUNT_METRICS and r["value"] is not None and not math.isnan(r["value"])
                and r["metric"].split("/")[0].split(",")[0].lower().startswith(names)]
        if vals:
            out[col] = float(sum(100.0 * v if abs(v) <= 1.0 else v for v in vals) / len(vals))
    return out


OVERALLS: dict[str, tuple[str, ...]] = {"Safety": tuple(SAFETY_COLUMNS), "General": tuple(GENERAL_COLUMNS)}


def overall_values(rows: list[dict[str, Any]], model: str) -> dict[str, dict[str, Any]]:
    """The paper's headline columns for one model of a run: kind ("Safety", "General") -> {"columns":
    {column: value}, "overall": the mean of the columns present (NaN: none), "missing": [absent columns]}.

    The one mapping from result rows to the paper's columns, used by the run report and the sweep summary."""
    values = _column_values(rows, model)
    out: dict[str, dict[str, Any]] = {}
    for kind, cols in OVERALLS.items():
        have = [values[c] for c in cols if c in values]
        out[kind] = {"columns": {c: values[c] for c in cols if c in values},
                     "overall": sum(have) / len(have) if have else math.nan,
                     "missing": [c for c in cols if c not in values]}
    return out


def overall_cell(v: dict[str, Any]) -> str:
    """An overall with the columns it lacks: a mean of fewer columns is not the paper's number."""
    return _num(v["overall"]) + (f" (missing: {', '.join(v['missing'])})" if v["missing"] else "")


def overall_table(rows: list[dict[str, Any]], models: tuple[str, ...] = ("base", "trained")) -> str:
    """"Safety overall" (mean of the open-source safety, jailbreak and constructive columns) and "General
    overall" (mean of knowledge, understanding, math & code), as the paper's headline table computes them,
    over the columns this run has; each overall names the columns it lacks."""
    present = [m for m in models if any(r["model"] == m for r in rows)]
    if not present:
        return "_(no results)_"
    values = {m: overall_values(rows, m) for m in present}
    lines = ["| type | column | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present)]
    for kind, cols in OVERALLS.items():
        for col in cols:
            lines.append(f"| {kind} | {col} | "
                         + " | ".join(_num(values[m][kind]["columns"].get(col, math.nan)) for m in present) + " |")
        lines.append(f"| {kind} | **Overall** | " + " | ".join(overall_cell(values[m][kind]) for m in present)
                     + " |")
    return "\n".join(lines)
