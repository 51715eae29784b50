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


def side_by_side(rows: list[dict[str, Any]], models: tuple[str, ...] = ("base", "trained")) -> str:
    """One line per (benchmark, split, metric): each model's value with its 95% CI and n, and the difference."""
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
        head.append("Δ (" + present[1] + " − " + present[0] + ")")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (bench, split, metric), by in table.items():
        cells = [bench, split, metric, *(_cell(by.get(m)) for m in present)]
        if diff:
            a, b = by.get(present[0]), by.get(present[1])
            cells.append(_num(b["value"] - a["value"]) if a and b else "–")
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
