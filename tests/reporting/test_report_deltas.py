"""The report's Δ (trained − base) carries a paired CI on shared items, and the paper's overall columns."""
from __future__ import annotations

import math

import numpy as np

from oyster_exp.csa.records import EvalRecord
from oyster_exp.evaluation.summary import paired_deltas, summarise
from oyster_exp.reporting.tables import overall_table, side_by_side


def _records(shift: float, n: int = 40) -> list[EvalRecord]:
    rng = np.random.default_rng(0)
    base_sat = rng.uniform(-1, 1, n)
    out = []
    for model, delta in (("base", 0.0), ("trained", shift)):
        for i in range(n):
            out.append(EvalRecord(id=f"{model}-{i}", model=model, benchmark="construction", item_id=f"q{i}",
                                  prompt="p", satisfaction=float(np.clip(base_sat[i] + delta, -1, 1)),
                                  risk=0.0, meta={"split": "heldout"}))
    out.append(EvalRecord(id="trained-extra", model="trained", benchmark="construction", item_id="extra",
                          prompt="p", satisfaction=1.0, risk=0.0, meta={"split": "heldout"}))
    return out


def test_delta_has_a_paired_ci_on_shared_items_and_is_marked_when_it_excludes_zero() -> None:
    recs = _records(0.1)
    deltas = {d["metric"]: d for d in paired_deltas(recs, resamples=500)}
    sat = deltas["satisfaction"]
    assert sat["n"] == 40 and 0.0 < sat["ci_low"] <= sat["delta"] <= sat["ci_high"]
    assert deltas["risk"]["delta"] == 0.0                      # no change: a zero-width CI at 0, not marked
    rows, _ = summarise(recs, resamples=50)
    table = side_by_side(rows, deltas=list(deltas.values()))
    (line,) = [ln for ln in table.splitlines() if "| satisfaction |" in ln]
    assert line.rstrip(" |").endswith("(n=40)**") and "**" in line
    (risk,) = [ln for ln in table.splitlines() if "| risk |" in ln]
    assert "**" not in risk
    bare = side_by_side(rows)
    assert "(unpaired)" in bare


def test_overall_columns_say_which_paper_columns_are_missing() -> None:
    rows, _ = summarise(_records(0.1), resamples=50)
    text = overall_table(rows)
    (safety,) = [ln for ln in text.splitlines() if ln.startswith("| Safety | **Overall**")]
    assert "missing: Open-source, Jailbreak" in safety
    (constructive,) = [ln for ln in text.splitlines() if ln.startswith("| Safety | Constructive")]
    value = next(r["value"] for r in rows if r["metric"] == "constructive@beta=2" and r["model"] == "base")
    assert f"{value:.2f}" in constructive or f"{value:.3f}" in constructive
    general = next(ln for ln in text.splitlines() if ln.startswith("| General | **Overall**"))
    assert "– (missing: Knowledge, Understanding, Math&Code)" in general
    assert not math.isnan(value)
