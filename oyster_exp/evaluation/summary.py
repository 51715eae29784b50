"""Tidy result rows from evaluation records: construction score and jailbreak ASR with 95% CIs."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from oyster_exp.evaluation.construction import construction_curve, headline
from oyster_exp.evaluation.stats import bootstrap_ci, bootstrap_ci_paired
from oyster_exp.evaluation.strata_sword import asr
from oyster_exp.records import EvalRecord


def _row(model: str, benchmark: str, metric: str, value: float, n: int, ci: tuple[float, float]) -> dict[str, Any]:
    return {"model": model, "benchmark": benchmark, "split": "heldout" if benchmark == "construction" else "test",
            "metric": metric, "value": value, "n": n, "ci_low": ci[0], "ci_high": ci[1]}


def summarise(records: list[EvalRecord], betas: list[float], alpha: float, headline_beta: float,
              resamples: int, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, dict[float, float]]]:
    """Rows (model, benchmark, metric, value, n, ci) and the construction curve per model."""
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[float, float]] = {}
    by_model: dict[tuple[str, str], list[EvalRecord]] = defaultdict(list)
    for r in records:
        by_model[(r.model, r.benchmark)].append(r)
    for (model, bench), recs in sorted(by_model.items()):
        failed = sum(1 for r in recs if r.failure)
        rows.append(_row(model, bench, "judge_failures", float(failed), len(recs), (math.nan, math.nan)))
        if bench == "construction":
            ok = [r for r in recs if r.failure is None and r.satisfaction is not None and r.risk is not None]
            sat = np.array([r.satisfaction for r in ok], dtype=float)
            risk = np.array([r.risk for r in ok], dtype=float)
            if len(ok) == 0:
                continue
            curves[model] = construction_curve(sat, risk, betas=tuple(betas), alpha=alpha)
            rows.append(_row(model, bench, "satisfaction", float(sat.mean()), len(ok),
                             bootstrap_ci(sat, n_resamples=resamples, seed=seed)))
            rows.append(_row(model, bench, "risk", float(risk.mean()), len(ok),
                             bootstrap_ci(risk, n_resamples=resamples, seed=seed)))
            ci = bootstrap_ci_paired(sat, risk, lambda s, r: headline(s, r, beta=headline_beta),
                                     n_resamples=resamples, seed=seed)
            rows.append(_row(model, bench, f"constructive@beta={headline_beta:g}",
                             headline(sat, risk, beta=headline_beta), len(ok), ci))
        elif bench == "strata_sword":
            groups: dict[str, list[str]] = defaultdict(list)
            for r in recs:
                groups[f"{r.meta.get('language', '?')}-L{r.meta.get('level', '?')}"].append(
                    r.verdict if r.failure is None and r.verdict else "failed")
            for g, verdicts in sorted(groups.items()):
                res = asr(verdicts)
                flags = np.array([1.0 if v == "unsafe" else 0.0 for v in verdicts if v in ("safe", "unsafe")])
                ci = tuple(100 * x for x in bootstrap_ci(flags, n_resamples=resamples, seed=seed))
                rows.append(_row(model, bench, f"asr[{g}]", float(res["asr"]), len(flags), ci))  # type: ignore[arg-type]
    return rows, curves
