"""Tidy result rows from evaluation records, every value with a 95% bootstrap CI.

One row per (benchmark, split, model, metric): value, n (items behind the value), ci_low, ci_high.
Every benchmark gets count rows n_judged / n_failed / n_skipped, so a number is never read without
knowing how many items it rests on and how many fell out; the rest each benchmark gives itself
(`Benchmark.rows`), so this module knows no benchmark by name.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from oyster_exp.csa.records import EvalRecord
from oyster_exp.evaluation.benchmarks import builtin_classes
from oyster_exp.evaluation.benchmarks.base import Benchmark
from oyster_exp.evaluation.rows import judged, row, skipped
from oyster_exp.evaluation.stats import paired_delta_stat

__all__ = ["counts", "judged", "paired_deltas", "skipped", "summarise"]


def counts(recs: list[EvalRecord]) -> dict[str, int]:
    """Items judged, failed (subject or judge, with a reason) and skipped (with a reason)."""
    n_skip = sum(1 for r in recs if skipped(r))
    n_fail = sum(1 for r in recs if r.failure is not None and not skipped(r))
    return {"n_judged": len(recs) - n_skip - n_fail, "n_failed": n_fail, "n_skipped": n_skip}


def by_name(benchmarks: Mapping[str, Benchmark] | list[Benchmark] | None) -> dict[str, Benchmark]:
    """Record name -> the configured benchmark; a record name not configured gets its class defaults."""
    given = list(benchmarks.values()) if isinstance(benchmarks, Mapping) else list(benchmarks or [])
    out: dict[str, Benchmark] = {name: cls() for name, cls in builtin_classes().items()}
    out.update({b.name: b for b in given})
    return out


def summarise(records: list[EvalRecord], benchmarks: Mapping[str, Benchmark] | list[Benchmark] | None = None,
              resamples: int = 1000, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, dict[float, float]]]:
    """Tidy rows for every (benchmark, split, model) and each benchmark's curve per model.

    A curve is named by the model, plus the split in brackets unless it is the held-out seed split.
    """
    known = by_name(benchmarks)
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[float, float]] = {}
    groups: dict[tuple[str, str, str], list[EvalRecord]] = defaultdict(list)
    for r in records:
        groups[(r.benchmark, str(r.meta.get("split", "test")), r.model)].append(r)
    for (bench, split, model), recs in sorted(groups.items()):
        rows += [row(bench, split, model, k, float(v), len(recs)) for k, v in counts(recs).items()]
        # a benchmark named per configured set (prompt_set) is found by the class its records carry
        b = known.get(bench) or known.get(str(recs[0].meta.get("kind", "")))
        if b is None:                                  # records of a benchmark no module defines: counts only
            continue
        rows += b.rows(split, model, recs, resamples, seed)
        curve = b.curve(judged(recs))
        if curve:
            curves[model if split == "heldout" else f"{model} ({split})"] = curve
    return rows, curves


def paired_deltas(records: list[EvalRecord], benchmarks: Mapping[str, Benchmark] | list[Benchmark] | None = None,
                  models: tuple[str, str] = ("base", "trained"), resamples: int = 1000,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Δ (models[1] − models[0]) per (benchmark, split, metric) with a paired bootstrap CI on shared items.

    One row each: benchmark, split, metric, delta, ci_low, ci_high, n (the shared items). Only metrics a
    benchmark can pair (`Benchmark.paired`) get one; items judged for one model only are left out, so a
    failed judgement on one side cannot shift the difference.
    """
    known = by_name(benchmarks)
    groups: dict[tuple[str, str, str], list[EvalRecord]] = defaultdict(list)
    for r in records:
        groups[(r.benchmark, str(r.meta.get("split", "test")), r.model)].append(r)
    out: list[dict[str, Any]] = []
    for bench, split in sorted({(b, s) for b, s, _ in groups}):
        b = known.get(bench)
        if b is None:
            continue
        base, other = b.paired(groups.get((bench, split, models[0]), [])), \
            b.paired(groups.get((bench, split, models[1]), []))
        for metric, (items, stat) in other.items():
            if metric not in base:
                continue
            d = paired_delta_stat(base[metric][0], items, stat, n_resamples=resamples, seed=seed)
            if d["n"]:
                out.append({"benchmark": bench, "split": split, "metric": metric, **d})
    return out
