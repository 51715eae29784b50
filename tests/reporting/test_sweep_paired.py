"""The sweep summary compares each arm with the baseline arm on shared items, from artifacts as a multirun
leaves them: the trained model's evaluation records and the data engine's optimize / pairs / assess records."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from oyster_exp.csa.records import AssessmentRecord, EvalRecord, OptimizeRecord, PairRecord, TraceEntry
from oyster_exp.csa.replies import RiskAssessment, SafetyJudgement
from oyster_exp.reporting.aggregate import write_sweep_report
from oyster_exp.reporting.sweep_collect import collect
from oyster_exp.reporting.sweep_ledger import COMMAND_OVERRIDES, append_ledger
from oyster_exp.reporting.sweep_paired import MALICIOUS_RISK, MARGIN, REWARD, arm_deltas, baselines

N = 24
RNG = np.random.default_rng(7)
DIFFICULTY = RNG.uniform(-0.6, 0.4, N)          # per-item spread both arms share (what pairing removes)
NOISE = RNG.normal(0.0, 0.02, (3, N))


def _safety(verdict: str) -> SafetyJudgement:
    return SafetyJudgement(risk_intent="x", adapted_guideline="g", verdict=verdict, suggestion="s")


def _write(path: Path, records: list) -> None:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))


def _arm(sweep: Path, job: int, lingo: str, shift: float, evaluate: bool, baseline: str | None) -> None:
    d = sweep / str(job)
    (d / ".hydra").mkdir(parents=True)
    (d / "artifacts").mkdir()
    OmegaConf.save(OmegaConf.create([f"lingo_bp={lingo}", "debug=fast"]), d / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"model": {"name": "tiny_random"}, "sweep": {"baseline": baseline},
                                     "eval": {"bootstrap_resamples": 400}}), d / ".hydra" / "config.yaml")
    (d / "manifest.json").write_text(json.dumps({"status": "completed", "seconds": 1.0, "counters": {}}))
    art = d / "artifacts"
    opt, pairs, assess = [], [], []
    for i in range(N):
        q = f"q{i}"
        base_reward = float(DIFFICULTY[i] + NOISE[job, i])
        chosen = TraceEntry(iteration=1, mode="both", response="better", reward=base_reward + shift,
                            safety=_safety("safe" if shift > 0 else "partly_safe"))
        # a higher-rewarded entry the optimizer did not choose: the comparison reads the chosen one
        decoy = TraceEntry(iteration=2, mode="both", response="decoy", reward=5.0, safety=_safety("unsafe"))
        initial = TraceEntry(iteration=0, mode="initial", response="first", reward=base_reward - 0.5)
        opt.append(OptimizeRecord(id=q, query=f"query {i}", trace=[initial, chosen, decoy], best_index=1))
        pairs.append(PairRecord(id=q, query_id=q, prompt=[{"role": "user", "content": "x"}], chosen="a",
                                rejected="b", chosen_reward=base_reward + shift, rejected_reward=base_reward - 0.5))
        post = {"benign": 0.1, "sensitive": 0.2, "malicious": 0.7} if i < 8 else \
            {"benign": 0.7, "sensitive": 0.2, "malicious": 0.1}
        # only the baseline arm estimates the posterior (a no_follower_types-like treatment does not)
        assess.append(AssessmentRecord(id=q, assessment=RiskAssessment(follower_posterior=post if job == 1 else None)))
    opt.append(OptimizeRecord(id="failed", query="q", failure="actor: timeout"))      # no chosen entry: left out
    _write(art / "optimize.jsonl", opt)
    _write(art / "pairs.jsonl", pairs)
    _write(art / "assess.jsonl", assess)
    if evaluate:
        evals = [EvalRecord(id=f"{m}/construction/e{i}", model=m, benchmark="construction", item_id=f"e{i}",
                            prompt="p", satisfaction=float(np.clip(DIFFICULTY[i] + (shift if m == "trained" else 0)
                                                                   + NOISE[job, i], -1, 1)),
                            risk=0.0, meta={"split": "heldout"}) for m in ("base", "trained") for i in range(N)]
        if job == 0:
            evals.append(EvalRecord(id="trained/construction/only", model="trained", benchmark="construction",
                                    item_id="only-here", prompt="p", satisfaction=1.0, risk=0.0,
                                    meta={"split": "heldout"}))
        _write(art / "evaluate.jsonl", evals)
        rows = [{"model": "trained", "benchmark": "construction", "split": "heldout",
                 "metric": "constructive@beta=2", "value": 40.0 + 10 * shift, "n": N, "ci_low": None,
                 "ci_high": None},
                {"model": "trained", "benchmark": "harmbench", "split": "val", "metric": "asr", "value": 20.0,
                 "n": N, "ci_low": None, "ci_high": None}]
        (d / "results.json").write_text(json.dumps(rows))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Arm 0 `lingo_bp=paper` (+0.3 reward, +0.3 satisfaction), arm 1 `lingo_bp=off` (the baseline, though
    not the first arm), arm 2 `lingo_bp=user_only` (no effect; stopped at the pairs stage: no evaluation)."""
    s = tmp_path / "multirun" / "ablation_lingo_bp"
    s.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["+sweep=ablation_lingo_bp"]), s / COMMAND_OVERRIDES)
    (s / "multirun.yaml").write_text("hydra: {}\n")
    for job, (lingo, shift, evaluate) in enumerate([("paper", 0.3, True), ("off", 0.0, True),
                                                    ("user_only", 0.0, False)]):
        _arm(s, job, lingo, shift, evaluate, baseline="lingo_bp=off")
        append_ledger(s, {"job": job, "label": f"lingo_bp={lingo}", "status": "completed",
                          "run_dir": str(s / str(job))})
    return s


def test_each_arm_is_compared_with_the_baseline_arm_on_shared_items(sweep: Path) -> None:
    arms = collect(sweep)
    deltas, note = arm_deltas(arms, "lingo_bp=off", resamples=400)
    assert "arm 1 `lingo_bp=off`" in note
    get = {(d["arm"], d["benchmark"], d["metric"]): d for d in deltas}
    assert {d["baseline"] for d in deltas} == {"1"} and not any(d["arm"] == "1" for d in deltas)
    reward = get[("0", "data_engine", REWARD)]
    # the chosen entry (best_index), not the decoy with reward 5: Δ = 0.3 plus the two arms' noise difference
    assert reward["n"] == N and reward["delta"] == pytest.approx(0.3 + float(np.mean(NOISE[0] - NOISE[1])))
    assert 0.25 < reward["ci_low"] <= reward["delta"] <= reward["ci_high"] < 0.35   # paired: the spread is gone
    assert get[("0", "data_engine", MARGIN)]["delta"] == pytest.approx(0.3)      # chosen − rejected: noise cancels
    # risk on the 8 queries whose posterior (estimated in the baseline arm only) is malicious: 0.5 -> 0
    mal = get[("0", "data_engine", MALICIOUS_RISK)]
    assert mal["n"] == 8 and mal["delta"] == pytest.approx(-0.5)
    sat = get[("0", "construction", "satisfaction")]
    assert sat["n"] == N and sat["ci_low"] > 0.25                # the extra item of arm 0 is not shared
    # arm 2 stopped before evaluation: still compared on the data engine, and its Δ is noise around 0
    assert ("2", "construction", "satisfaction") not in get
    null = get[("2", "data_engine", REWARD)]
    assert null["ci_low"] < 0 < null["ci_high"]


def test_summary_md_and_csv_show_the_comparison_and_the_overall_columns(sweep: Path) -> None:
    md = write_sweep_report(sweep).read_text()
    section = md.split("## Each arm against the baseline arm (paired)")[1].split("## ")[0]
    assert "Baseline: `sweep.baseline=lingo_bp=off`: arm 1 `lingo_bp=off`" in section
    (line,) = [x for x in section.splitlines() if f"| {REWARD} |" in x]
    cells = [c.strip() for c in line.strip("|").split("|")]
    effect = 0.3 + float(np.mean(NOISE[0] - NOISE[1]))
    assert cells[3].startswith(f"**{effect:.3f} [") and cells[3].endswith(f"(n={N})**")   # arm 0: bold
    assert "**" not in cells[4] and cells[4].endswith(f"(n={N})")            # arm 2: not marked
    (margin,) = [x for x in section.splitlines() if f"| {MARGIN} |" in x]
    assert margin.rstrip(" |").endswith(f"0.000 [0.000, 0.000] (n={N})")     # a 1e-17 residue is not bold
    assert "arm 0 `lingo_bp=paper` − arm 1" in section and "arm 2 `lingo_bp=user_only` − arm 1" in section
    overall = md.split("## Safety overall and General overall")[1].split("## ")[0]
    (row0,) = [x for x in overall.splitlines() if x.startswith("| arm 0 |")]
    # Constructive 43.0 and Open-source 100 − 20: Safety overall over two columns, naming the missing one
    assert "| 80.00 |" in row0 and "61.50 (missing: Jailbreak)" in row0
    assert "(missing: Knowledge, Understanding, Math&Code)" in row0
    tidy = list(csv.DictReader((sweep / "summary.csv").open()))
    vs = [r for r in tidy if r["model"] == "vs_baseline" and r["metric"] == REWARD]
    assert {r["arm"]: r["excludes_zero"] for r in vs} == {"0": "True", "2": "False"}
    assert {r["baseline"] for r in vs} == {"1"} and all(int(r["n"]) == N for r in vs)
    so = [r for r in tidy if r["metric"] == "Safety overall" and r["arm"] == "0"]
    assert len(so) == 1 and float(so[0]["value"]) == pytest.approx(61.5) and so[0]["missing"] == "Jailbreak"


def test_baseline_rule_default_first_arm_cartesian_match_and_no_match(sweep: Path) -> None:
    arms = collect(sweep)
    pairing, note = baselines(arms, None)
    assert {k: v.job for k, v in pairing.items()} == {"1": "0", "2": "0"} and "first arm" in note
    pairing, note = baselines(arms, "lingo_bp=nope")
    assert pairing == {} and "matches no arm" in note
    # two knobs: each arm is compared with the baseline arm that agrees with it on the other knob
    extra = collect(sweep)[1]
    extra.job = "3"
    for a, seed in zip([*arms, extra], ("1", "1", "2", "2")):
        a.knobs["seed"] = seed
    pairing, note = baselines([*arms, extra], "lingo_bp=off")
    assert {k: v.job for k, v in pairing.items()} == {"0": "1", "2": "3"} and "arm 1" in note and "arm 3" in note
    with pytest.raises(ValueError, match="sweep.baseline"):
        baselines(arms, "lingo_bp")
