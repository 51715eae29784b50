"""Each arm of a sweep against the sweep's baseline arm: Δ (arm − baseline) with a paired bootstrap CI.

An ablation asks "did changing this component change the outcome?", and arms share their items (the same
held-out queries, the same benchmark prompts), so the difference is taken per item on the items both arms
have and resampled per item (`evaluation.stats`): an unpaired comparison of two means would drown a
consistent effect in the spread between items. Two sources of per-item values, both read from what an arm
leaves on disk, so an ablation that stops before training (`stage=[...,pairs]`) still gets a comparison:

- the trained model's evaluation records (`artifacts/evaluate.jsonl`), through each benchmark's `paired`
  hook (the same one the report's trained − base Δ uses, `evaluation.summary.paired_deltas`);
- the data engine, per query: the reward and the risk (1 − safety score) of the chosen trace entry
  (`csa.pairs.best_entry`, the entry pairs take as chosen) from `artifacts/optimize.jsonl`, the risk again
  on the queries whose follower posterior is mostly malicious in any arm, and the mean margin of the
  query's pairs from `artifacts/pairs.jsonl`.

The baseline is `sweep.baseline`: the override(s) that select the baseline arm (e.g. `lingo_bp=off`), or null
for the first arm of the sweep. In a sweep over more than one knob each arm is compared with the baseline arm
that agrees with it on the other knobs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from oyster_exp.reporting.sweep_collect import Arm

ENGINE = "data_engine"          # the `benchmark` of the data-engine rows
ENGINE_SPLIT = "queries"
REWARD, RISK, MALICIOUS_RISK, MARGIN = ("reward (chosen entry)", "risk (chosen entry)",
                                        "risk (chosen entry, malicious posterior)", "pair margin")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)) if line.strip() else None
        except json.JSONDecodeError:        # a line cut by a killed writer: the journal redoes it, we skip it
            continue
    return out


def malicious_queries(run: Path) -> set[str]:
    """Queries whose follower posterior p(θ|x) (assess stage) puts strictly the most mass on `malicious`."""
    out = set()
    for rec in _jsonl(run / "artifacts" / "assess.jsonl"):
        post = (rec.get("assessment") or {}).get("follower_posterior") or {}
        mal = post.get("malicious")
        if mal is not None and all(mal > v for k, v in post.items() if k != "malicious"):
            out.add(str(rec["id"]))
    return out


def engine_items(run: Path, malicious: set[str] = frozenset()) -> dict[str, dict[str, float]]:  # type: ignore[assignment]
    """metric -> query id -> value, from one arm's optimize and pairs artifacts (see the module doc)."""
    from oyster_exp.csa.pairs import best_entry
    from oyster_exp.csa.records import OptimizeRecord

    reward: dict[str, float] = {}
    risk: dict[str, float] = {}
    for raw in _jsonl(run / "artifacts" / "optimize.jsonl"):
        try:
            rec = OptimizeRecord.model_validate(raw)
        except ValueError:                    # a record of an older schema: not comparable, left out
            continue
        best = best_entry(rec)
        if best is None:
            continue
        reward[rec.id] = float(best.reward)   # type: ignore[arg-type]
        if best.safety is not None:
            risk[rec.id] = 1.0 - float(best.safety.score)
    margins: dict[str, list[float]] = {}
    for p in _jsonl(run / "artifacts" / "pairs.jsonl"):
        m = p.get("margin")
        if p.get("failure") is None and m is not None:
            qid = str(p.get("query_id") or str(p["id"]).split("#")[0])
            margins.setdefault(qid, []).append(float(m))
    out = {REWARD: reward, RISK: risk, MALICIOUS_RISK: {q: v for q, v in risk.items() if q in malicious},
           MARGIN: {q: sum(v) / len(v) for q, v in margins.items()}}
    return {k: v for k, v in out.items() if v}


def _tokens(spec: str) -> dict[str, str]:
    out = {}
    for tok in spec.split():
        key, sep, value = tok.partition("=")
        if not sep:
            raise ValueError(f"sweep.baseline: {tok!r} is not an override key=value (e.g. lingo_bp=off)")
        out[key.lstrip("+~")] = value
    return out


def baseline_rule(arms: list[Arm]) -> str | None:
    """`sweep.baseline` as the arms were run with it (the first arm's saved config that has the key)."""
    for a in arms:
        if a.cfg is not None:
            value = OmegaConf.select(a.cfg, "sweep.baseline", default=None)
            return None if value is None else str(value)
    return None


def baselines(arms: list[Arm], rule: str | None) -> tuple[dict[str, Arm], str]:
    """arm job -> its baseline arm (arms without one are left out) and a sentence saying how it was chosen."""
    if not arms:
        return {}, "no arms"
    if rule is None or not str(rule).strip():
        base = arms[0]
        return ({a.job: base for a in arms if a is not base},
                f"the first arm of the sweep (arm {base.job} `{base.label}`; set `sweep.baseline` to choose one)")
    want = _tokens(str(rule))
    cands = [a for a in arms if all(a.knobs.get(k) == v for k, v in want.items())]
    if not cands:
        labels = ", ".join(f"`{a.label}`" for a in arms)
        return {}, f"`sweep.baseline={rule}` matches no arm (arms: {labels}), so no arm is compared"
    out: dict[str, Arm] = {}
    for a in arms:
        if a in cands:
            continue
        rest = {k: v for k, v in a.knobs.items() if k not in want}
        match = [c for c in cands if {k: v for k, v in c.knobs.items() if k not in want} == rest]
        out[a.job] = (match or cands)[0]
    where = ", ".join(f"arm {c.job} `{c.label}`" for c in cands)
    return out, f"`sweep.baseline={rule}`: {where}"


def _relabel(arm: Arm, as_model: str) -> list[Any]:
    return [r.model_copy(update={"model": as_model}) for r in arm.evals if r.model == "trained"]


def arm_deltas(arms: list[Arm], rule: str | None, resamples: int = 1000, seed: int = 0
               ) -> tuple[list[dict[str, Any]], str]:
    """One row per (arm, benchmark, split, metric) with Δ = arm − its baseline arm on their shared items:
    arm, label, baseline (its job), benchmark, split, metric, delta, ci_low, ci_high, n; and how the baseline
    was chosen. Failed arms, and metrics the two arms share no item of, give no row."""
    from oyster_exp.evaluation.stats import paired_delta
    from oyster_exp.evaluation.summary import paired_deltas
    from oyster_exp.reporting.sweep_collect import configured_benchmarks

    pairing, note = baselines([a for a in arms if a.status != "failed"], rule)
    malicious: set[str] = set()
    for a in arms:
        malicious |= malicious_queries(a.dir)
    engine = {a.job: engine_items(a.dir, malicious) for a in arms if a.status != "failed"}
    out: list[dict[str, Any]] = []
    for a in arms:
        base = pairing.get(a.job)
        if base is None:
            continue
        head = {"arm": a.job, "label": a.label, "baseline": base.job}
        recs = _relabel(base, "baseline") + _relabel(a, "arm")
        for d in paired_deltas(recs, configured_benchmarks(base), models=("baseline", "arm"),
                               resamples=resamples, seed=seed):
            out.append({**head, **d})
        for metric, values in engine[a.job].items():
            d = paired_delta(engine[base.job].get(metric, {}), values, n_resamples=resamples, seed=seed)
            if d["n"]:
                out.append({**head, "benchmark": ENGINE, "split": ENGINE_SPLIT, "metric": metric, **d})
    return out, note


def _order(key: tuple[str, str, str]) -> tuple[int, str, str, str]:
    return (0 if key[0] == ENGINE else 1, *key)


def vs_baseline_table(deltas: list[dict[str, Any]], arms: list[Arm]) -> str:
    """One line per (benchmark, split, metric), one column per compared arm: Δ [95% CI] (n), bold where the
    CI excludes 0."""
    from oyster_exp.reporting.tables import delta_cell

    if not deltas:
        return "_(no arm shares items with its baseline arm)_"
    jobs = [a.job for a in arms if any(d["arm"] == a.job for d in deltas)]
    label = {a.job: a.label for a in arms}
    base_of = {d["arm"]: d["baseline"] for d in deltas}
    cell = {(d["benchmark"], d["split"], d["metric"], d["arm"]): d for d in deltas}
    keys = sorted({(d["benchmark"], d["split"], d["metric"]) for d in deltas}, key=_order)
    head = ["benchmark", "split", "metric",
            *(f"arm {j} `{label[j]}` − arm {base_of[j]}" for j in jobs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        cells = [delta_cell(cell[(*k, j)]) if (*k, j) in cell else "–" for j in jobs]
        lines.append("| " + " | ".join([*k, *cells]) + " |")
    return "\n".join(lines)


def delta_rows(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Δ rows in summary.csv's tidy shape: model `vs_baseline`, value = Δ, plus the baseline job and
    whether the CI excludes 0."""
    from oyster_exp.evaluation.stats import excludes_zero

    def clean(x: Any) -> Any:
        return None if isinstance(x, float) and math.isnan(x) else x

    return [{"arm": d["arm"], "label": d["label"], "model": "vs_baseline", "benchmark": d["benchmark"],
             "split": d["split"], "metric": d["metric"], "value": clean(d["delta"]), "ci_low": clean(d["ci_low"]),
             "ci_high": clean(d["ci_high"]), "n": d["n"], "baseline": d["baseline"],
             "excludes_zero": excludes_zero(d["ci_low"], d["ci_high"])} for d in deltas]
