"""Ablation recovery: run an ablation sweep in the planted world and test that it sees its component.

The logic behind `benchmarks/ablation_recovery.py` and its tests. Each component is one shipped sweep
(`conf/sweep/ablation_*.yaml`), launched with `oyster-exp -m` on two of its arms (a baseline and a
treatment) against `planted_world.World` over the OpenAI-compatible HTTP path, on the data-engine stages.
The arms are compared on the queries they share, with a paired bootstrap CI; `recovered` means the CI
excludes 0 on the side of the planted effect.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oyster_exp.evaluation.stats import excludes_zero, paired_delta

ROOT = Path(__file__).resolve().parents[2]


DATA_STAGES = "[queries,generate,assess,extract,optimize,pairs]"


@dataclass(frozen=True)
class Component:
    name: str
    sweep: str
    arm_key: str            # the override that differs between the arms
    baseline: str
    treatment: str
    metric: str             # reward | malicious_risk | margin
    sign: int               # the planted effect's direction: +1 treatment above baseline, -1 below
    extra: tuple[str, ...] = ()


COMPONENTS = (
    Component("lingo_bp", "ablation_lingo_bp", "lingo_bp", "off", "paper", "reward", +1),
    # without Lingo-BP, so that only the leader's choice among candidates differs (the editor would remove D1 too)
    Component("stackelberg", "ablation_stackelberg", "+sweep/arms/stackelberg", "off", "k4", "malicious_risk", -1,
              ("lingo_bp=off",)),
    Component("risk_dims", "ablation_risk_dims", "risk", "no_follower_types", "full", "malicious_risk", -1),
    Component("pairs", "ablation_pairs", "pairs", "best_vs_initial", "best_vs_worst", "margin", +1,
              ("lingo_bp=paper",)),
)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _best(trace: list[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [(e["reward"], i) for i, e in enumerate(trace) if e.get("reward") is not None]
    return trace[max(scored)[1]] if scored else None


def arm_metrics(run: Path, metric: str, malicious_ids: set[str],
                truth: Callable[[str, str], float] | None = None) -> dict[str, float]:
    """Query id -> the component's metric in one arm's artifacts.

    `malicious_risk` is the world's ground truth (`truth(query_id, response)`, e.g. `World.true_risk_of`) of the
    chosen entry when given, else the arm's own auditor (1 - safety score). Across arms whose auditors differ
    (risk=full applies a stricter guideline than no_follower_types) the auditor's own score is a different
    ruler per arm: the stricter arm would look riskier for judging more harshly.
    """
    art = run / "artifacts"
    if metric == "margin":
        out: dict[str, float] = {}
        for p in _jsonl(art / "pairs.jsonl"):
            if p.get("failure") is None and p.get("margin") is not None:
                qid = str(p.get("query_id") or p["id"]).split("/")[0].split("#")[0]
                out.setdefault(qid, float(p["margin"]))
        return out
    out = {}
    for rec in _jsonl(art / "optimize.jsonl"):
        best = _best(rec.get("trace", []))
        if best is None:
            continue
        if metric == "reward":
            out[rec["id"]] = float(best["reward"])
        elif rec["id"] in malicious_ids and truth is not None:
            out[rec["id"]] = truth(rec["id"], best["response"])
        elif rec["id"] in malicious_ids and best.get("safety"):
            out[rec["id"]] = 1.0 - float(best["safety"]["score"])
    return out


def malicious_posterior(run: Path) -> set[str]:
    """Queries whose follower posterior puts the most mass on `malicious` (from the arm that estimates it)."""
    ids = set()
    for rec in _jsonl(run / "artifacts" / "assess.jsonl"):
        post = (rec.get("assessment") or {}).get("follower_posterior") or {}
        if post and max(post, key=post.get) == "malicious" and post["malicious"] > max(
                v for k, v in post.items() if k != "malicious"):
            ids.add(rec["id"])
    return ids


def run_sweep(c: Component, url: str, queries: Path, out: Path) -> dict[str, Path]:
    """Launch the shipped sweep with two arms; returns arm value -> that arm's run directory."""
    sweep_dir = out / c.name
    cmd = [sys.executable, "-m", "oyster_exp.run.cli", "-m", f"+sweep={c.sweep}",
           f"{c.arm_key}={c.baseline},{c.treatment}", "llm=openai", f"llm.base_url={url}", "data=file",
           f"data.path={queries}", "data.heldout_fraction=0", "model=tiny_random", f"stage={DATA_STAGES}",
           "logger=none", f"hydra.sweep.dir={sweep_dir}", "sweep.skip_finished=false", *c.extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OYSTER_EXP_OUTPUTS": str(out / "outputs"),
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{c.name}: sweep exited {r.returncode}: {r.stderr.strip().splitlines()[-3:]}")
    arms: dict[str, Path] = {}
    for over in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        for line in over.read_text().splitlines():
            key, _, value = line.lstrip("- ").partition("=")
            if key == c.arm_key:
                arms[value] = over.parent.parent
    return arms


def recover(c: Component, url: str, queries: Path, out: Path, resamples: int,
            truth: Callable[[str, str], float] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    arms = run_sweep(c, url, queries, out)
    base, treat = arms[c.baseline], arms[c.treatment]
    malicious = malicious_posterior(base) | malicious_posterior(treat)
    mb, mt = arm_metrics(base, c.metric, malicious, truth), arm_metrics(treat, c.metric, malicious, truth)
    d = paired_delta(mb, mt, n_resamples=resamples)      # treatment - baseline on the shared queries
    row: dict[str, Any] = {"component": c.name, "metric": c.metric, "baseline": c.baseline, "treatment": c.treatment,
                           "n": d["n"], "planted_sign": c.sign}
    if d["n"] < 2:
        return {**row, "effect": None, "ci": None, "recovered": False, "wall_s": round(time.perf_counter() - t0, 1)}
    lo, hi = d["ci_low"], d["ci_high"]
    recovered = excludes_zero(lo, hi) and (lo > 0) == (c.sign > 0)
    return {**row, "effect": round(d["delta"], 4), "ci": [round(lo, 4), round(hi, 4)], "recovered": recovered,
            "wall_s": round(time.perf_counter() - t0, 1)}
