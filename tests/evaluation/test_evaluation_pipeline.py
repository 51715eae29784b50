"""The evaluate and report stages through the real CLI on the tiny model: HarmBench val and Strata-Sword
from the shared data, judged by the local judge; every item judged, failed or skipped, and counted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from shared_data import DATA, needs_shared_data

from oyster_exp.evaluation.benchmarks.capability import lm_eval_available

ROOT = Path(__file__).resolve().parents[2]
needs_data = needs_shared_data(DATA / "harmbench", DATA / "strata_sword")
# pairs=refusal_as_rejected: every judged query gives a pair, so a trained model exists whatever the random judges
# decide (best_vs_initial needs a Lingo-BP step the random judges happen to score higher)
TINY = ["debug=fast", "model=tiny_random", "print_config=false", "logger=none", "eval.bootstrap_resamples=50",
        "pairs=refusal_as_rejected",
        "eval.generation.temperature=1.0", "eval.generation.max_new_tokens=6",
        *(f"llm.roles.{r}.temperature=1.0" for r in ("actor", "user_judge", "safety_judge", "editor"))]


def _run(out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(out), "OYSTER_EXP_DATA": str(DATA), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", *TINY, *overrides], capture_output=True,
                          text=True, env=env, cwd=out.parent, timeout=900)


@needs_data
def test_harmbench_and_strata_sword_end_to_end_on_the_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    p = _run(out, "eval=full", "eval.strata_sword.languages=[en,cn]", "eval.strata_sword.levels=[1,3]",
             "eval.strata_sword.limit=2", "eval.harmbench.limit=24", "eval.over_refusal.limit=1",
             "eval.capability.tasks=[oyster_household_mcq]", "eval.capability.limit=4", "eval.construction.limit=2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run,) = sorted((out / "runs").glob("*/*"))
    recs = [json.loads(x) for x in (run / "artifacts" / "evaluate.jsonl").read_text().splitlines()]
    models = {r["model"] for r in recs}
    assert models == {"base", "trained"}
    hb = [r for r in recs if r["benchmark"] == "harmbench" and r["model"] == "base"]
    assert len(hb) == 24                                     # every loaded behaviour has a record
    skipped = [r for r in hb if "skipped" in r["meta"]]
    assert len(skipped) == 6 and all(r["meta"]["functional_category"] == "copyright" for r in skipped)
    done = [r for r in hb if "skipped" not in r["meta"]]
    assert all((r["verdict"] in ("safe", "unsafe") and r["meta"]["reason"]) or r["failure"] for r in done)
    ctx = [r for r in done if r["meta"]["functional_category"] == "contextual"]
    assert ctx and all(r["meta"]["context"] in r["prompt"] for r in ctx)
    ss = [r for r in recs if r["benchmark"] == "strata_sword" and r["model"] == "trained"]
    assert Counter((r["meta"]["language"], r["meta"]["level"]) for r in ss) == {
        ("en", 1): 2, ("en", 3): 2, ("cn", 1): 2, ("cn", 3): 2}
    assert all(r["meta"]["category"] for r in ss if not r["failure"])
    cap = {r["model"]: r for r in recs if r["benchmark"] == "capability"}
    assert set(cap) == {"base", "trained"}
    if lm_eval_available():                                  # the packaged offline task, scored per model
        assert all(r["item_id"] == "oyster_household_mcq" and r["failure"] is None and r["meta"]["n"] == 4
                   for r in cap.values())
    else:
        assert all("lm-evaluation-harness" in r["meta"]["skipped"] for r in cap.values())

    rows = json.loads((run / "eval" / "results.json").read_text())
    assert {"benchmark", "split", "model", "metric", "value", "n", "ci_low", "ci_high"} <= set(rows[0])
    get = {(r["benchmark"], r["model"], r["metric"]): r for r in rows}
    for model in ("base", "trained"):
        c = [get[("harmbench", model, k)]["value"] for k in ("n_judged", "n_failed", "n_skipped")]
        assert c[2] == 6 and c[0] + c[1] == 18
        assert ("strata_sword", model, "jailbreak_score") in get and ("strata_sword", model, "asr[cn-L3]") in get
        if c[0]:
            assert 0 <= get[("harmbench", model, "asr")]["value"] <= 100
    assert any(k[2].startswith("asr[semantic=") for k in get)
    if lm_eval_available():
        acc = get[("capability", "trained", "oyster_household_mcq:acc")]
        assert acc["n"] == 4 and 0 <= acc["value"] <= 1 and acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    md = (run / "eval" / "results.md").read_text()
    assert "| base | trained |" in md and "76.31" in md and "| harmbench | val | base |" in md
    assert (run / "report.md").read_text().count("## Items judged, failed and skipped") == 1


def test_a_missing_benchmark_file_is_one_clear_error_or_a_counted_skip(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    missing = tmp_path / "nope.csv"
    p = _run(out, "eval.harmbench.enabled=true", "eval.harmbench.path=" + str(missing), "eval.on_missing_data=error",
             "eval.models=[base]", "eval.strata_sword.enabled=false")
    assert p.returncode == 1
    assert f"eval.harmbench.path: {missing} not found" in p.stdout + p.stderr
    p = _run(out, "eval.harmbench.enabled=true", "eval.harmbench.path=" + str(missing), "eval.on_missing_data=skip",
             "eval.models=[base]", "eval.strata_sword.enabled=false", "eval.construction.limit=1")
    assert p.returncode == 0, p.stderr[-2000:]
    run = sorted((out / "runs").glob("*/*"))[-1]
    rows = json.loads((run / "eval" / "results.json").read_text())
    skip = [r for r in rows if r["benchmark"] == "harmbench" and r["metric"] == "n_skipped"]
    assert skip and skip[0]["value"] == 1
