"""The whole pipeline through the real CLI on the tiny random model: artifacts, cache, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
# A random model's greedy output degenerates to whitespace; sampling gives every stage real input.
# pairs=refusal_as_rejected: every judged query gives a pair, so the run always trains and exports a model (with
# best_vs_initial the random tiny judges decide whether any Lingo-BP step "improved", and often none does)
TINY = ["debug=fast", "model=tiny_random", "print_config=false", "pairs=refusal_as_rejected",
        *(f"llm.roles.{r}.temperature=1.0" for r in ("actor", "user_judge", "safety_judge", "editor"))]
STAGES = ["queries", "generate", "assess", "extract", "optimize", "pairs", "train", "evaluate", "report"]


def _env(out: Path, wandb_mode: str = "disabled") -> dict[str, str]:
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(out), "OYSTER_EXP_DATA": str(SHARED_DATA),
           "WANDB_MODE": wandb_mode}
    env.pop("WANDB_API_KEY", None)
    return env


def _run(out: Path, *overrides: str, timeout: int = 600, wandb_mode: str = "disabled"
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", *overrides], capture_output=True, text=True,
                          env=_env(out, wandb_mode), cwd=out.parent, timeout=timeout)


def _run_dirs(out: Path) -> list[Path]:
    return sorted((out / "runs").glob("*/*"))


def _jsonl_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("e2e") / "outputs"
    p = _run(out, *TINY, wandb_mode="offline")     # the default logger, offline: its run files are checked below
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run_dir,) = _run_dirs(out)
    return out, run_dir


def test_first_run_leaves_every_artifact(first_run: tuple[Path, Path]) -> None:
    out, run = first_run
    for stage in STAGES:
        assert (run / "artifacts" / f"{stage}.jsonl").exists(), stage
    assert (run / ".hydra" / "config.yaml").exists() and (run / "config_tree.txt").exists()
    assert (run / "report.md").read_text().startswith("# oyster-exp report")
    assert (run / "results.json").exists()
    pngs = list((run / "plots").glob("*.png"))
    assert pngs and pngs[0].stat().st_size > 1000
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    c = manifest["counters"]
    assert c["llm_calls"] > 0
    assert set(c["records"]) == set(STAGES)
    assert c["structured_valid_rate"] is not None and c["structured_valid_rate"] > 0.9
    assert manifest["git"]["commit"] and manifest["versions"]["torch"].startswith("2.13")
    assert manifest["input_hashes"] and len(manifest["config_hash"]) == 64
    # nothing is written into the launch directory
    assert not (out.parent / ".hydra").exists() and not (out.parent / "multirun").exists()


def test_the_runs_pairs_load_with_datasets_in_trls_format(first_run: tuple[Path, Path]) -> None:
    from datasets import load_from_disk

    _, run = first_run
    pairs = [json.loads(x) for x in (run / "artifacts" / "pairs.jsonl").read_text().splitlines()]
    ok = [p for p in pairs if p["failure"] is None]
    ds = load_from_disk(str(run / "pairs" / "preference_dataset"))
    assert ds["id"] == [p["id"] for p in ok]
    assert len((run / "pairs" / "preference.jsonl").read_text().splitlines()) == len(ok)
    for row, p in zip(ds, ok):
        assert row["prompt"] == p["prompt"] and row["chosen"] == [{"role": "assistant", "content": p["chosen"]}]


def test_records_are_typed_and_failures_carry_reasons(first_run: tuple[Path, Path]) -> None:
    from oyster_exp.csa.records import EvalRecord, OptimizeRecord, PairRecord
    from oyster_exp.pipeline.artifacts import read_records

    _, run = first_run
    opt = read_records(run / "artifacts" / "optimize.jsonl", OptimizeRecord)
    assert opt and all(r.failure or len(r.trace) >= 2 for r in opt)
    for r in opt:
        for e in r.trace:
            if e.failure is None and e.reward is not None:
                assert e.user is not None and e.safety is not None
    pairs = read_records(run / "artifacts" / "pairs.jsonl", PairRecord)
    assert len(pairs) == len(opt)
    assert all(p.failure or (p.chosen and p.rejected and p.chosen != p.rejected) for p in pairs)
    evals = read_records(run / "artifacts" / "evaluate.jsonl", EvalRecord)
    assert {e.benchmark for e in evals} == {"construction", "strata_sword"}
    assert "base" in {e.model for e in evals}


def test_trained_model_is_saved_and_reloads(first_run: tuple[Path, Path]) -> None:
    from oyster_exp.csa.records import TrainRecord
    from oyster_exp.pipeline.artifacts import read_records

    _, run = first_run
    (rec,) = read_records(run / "artifacts" / "train.jsonl", TrainRecord)
    assert rec.failure is None, rec.failure
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "train" / "model")
    assert model.num_parameters() > 0
    assert rec.steps == 2 and "train/loss" in rec.metrics


def test_offline_wandb_run_holds_the_pairs_and_the_model_as_artifacts(first_run: tuple[Path, Path]) -> None:
    from wandb_records import records, run_file

    _, run = first_run
    recs = records(run_file(run / "wandb"))
    logged = [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"]
    arts = {a.type: a for a in logged if a.type in ("dataset", "model")}
    assert set(arts) == {"dataset", "model"}, [a.type for a in logged]
    dataset, model = arts["dataset"], arts["model"]
    assert dataset.name == "csa-pairs" and model.name == "csa-model"
    assert "pairs.jsonl" in {c.path for c in dataset.manifest.contents}
    assert {"train/model/model.safetensors", "train/model/README.md"} <= {c.path for c in model.manifest.contents}
    # lineage: the pairs are an input of the run (use_artifact once synced), the model its output
    assert dataset.use_after_commit and not model.use_after_commit
    assert json.loads(model.metadata)["base_model"] == "oyster-exp/tiny-random-qwen2-v1"
    (info,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert info.display_name == "csa" and info.job_type == "pipeline"
    # Lightning's LearningRateMonitor: the learning rate of every step (linear decay from 5e-5)
    lrs = [float(i.value_json) for r in recs if r.WhichOneof("record_type") == "history" for i in r.history.item
           if list(i.nested_key) == ["train/lr"] or i.key == "train/lr"]
    assert len(lrs) == 2 and lrs[0] == 5e-5 and lrs[1] < lrs[0]


def test_exported_card_has_hub_metadata_and_the_eval_results(first_run: tuple[Path, Path]) -> None:
    from oyster_exp.training.card import NOT_EVALUATED, front_matter

    _, run = first_run
    card = (run / "train" / "model" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "oyster-exp/tiny-random-qwen2-v1"
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert meta["datasets"][0].startswith("oyster-exp-pairs-") and "orpo" in meta["tags"]
    results = {m["type"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
    assert "constructive@beta=2" in results, meta["model-index"]
    assert NOT_EVALUATED not in card and "## Config" in card
    # the stage cache keeps the card its cache key describes: the run's copy was replaced, not edited
    (cached,) = (run.parents[2] / "cache" / "stages" / "train").glob("*/files/model/README.md")
    assert NOT_EVALUATED in cached.read_text() and "model-index" not in front_matter(cached.read_text())


def test_second_identical_run_recomputes_nothing(first_run: tuple[Path, Path]) -> None:
    out, first = first_run
    t0 = time.time()
    p = _run(out, *TINY)
    assert p.returncode == 0, p.stderr[-3000:]
    second = [d for d in _run_dirs(out) if d != first][-1]
    m = json.loads((second / "manifest.json").read_text())
    assert m["counters"]["llm_calls"] == 0
    cache = m["counters"]["stage_cache"]
    assert all(cache[s] == "hit" for s in STAGES if s != "report"), cache
    for s in STAGES[:-1]:
        assert (second / "artifacts" / f"{s}.jsonl").read_text() == (first / "artifacts" / f"{s}.jsonl").read_text()
    assert time.time() - t0 < 120


def test_stage_selection_reuses_upstream_from_cache(first_run: tuple[Path, Path]) -> None:
    out, _ = first_run
    p = _run(out, *TINY, "stage=[pairs,report]")
    assert p.returncode == 0, p.stderr[-3000:]
    run = _run_dirs(out)[-1]
    m = json.loads((run / "manifest.json").read_text())
    assert m["counters"]["llm_calls"] == 0


def test_a_needed_stage_missing_from_cache_is_a_clear_error(tmp_path: Path) -> None:
    p = _run(tmp_path / "outputs", *TINY, "stage=train")
    assert p.returncode == 1
    assert "run it first" in (p.stdout + p.stderr)


def test_kill_during_optimize_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    # small chunks: the lockstep optimize loop journals a chunk's records when their loops end
    args = [*TINY, "data.limit=30", "data.heldout_fraction=0.1",
            "lingo_bp=paper", "llm.chunk_size=4"]
    proc = subprocess.Popen([sys.executable, "-m", "oyster_exp.run.cli", *args], env=_env(out), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list((out / "cache" / "stages" / "optimize").glob("*/records.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            journal = found[0]
            break
        time.sleep(0.02)
    assert journal is not None and proc.poll() is None, "the run ended before the optimize stage could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _jsonl_ids(journal)
    assert not (journal.parent / "COMPLETE").exists()
    p = _run(out, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    run = _run_dirs(out)[-1]
    ids = _jsonl_ids(run / "artifacts" / "optimize.jsonl")
    gen_ids = _jsonl_ids(run / "artifacts" / "generate.jsonl")
    assert len(ids) == len(set(ids)), "a record was written twice"
    assert sorted(ids) == sorted(gen_ids), "a record is missing"
    assert ids[: len(before)] == before, "finished records were recomputed"
    m = json.loads((run / "manifest.json").read_text())
    assert m["counters"]["stage_cache"]["optimize"] == "resumed"


def test_a_bad_query_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"id": "a", "query": "hello"}\n{"id": "b", "query": "hi", "language": "de"}\n')
    p = _run(tmp_path / "outputs", *TINY, "data=file", f"data.path={bad}")
    assert p.returncode == 2, "a data error exits like a config error"
    (line,) = [x for x in p.stderr.splitlines() if x.startswith("oyster-exp:")]
    assert line.startswith("oyster-exp: data error: data: ") and "queries.jsonl:2: field 'language'" in line
    assert "Traceback" not in p.stdout + p.stderr
