"""Preference data both ways: the pairs stage's TRL export trains TRL's ORPO as is, and `data=pairs` trains,
evaluates and reports from a preference file made elsewhere without any data-engine stage or LLM call."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hydra.utils import instantiate

from oyster_exp.core.errors import DataError
from oyster_exp.csa.records import PairRecord
from oyster_exp.data.preferences import preference_rows
from oyster_exp.data.sources import PreferencePairs
from oyster_exp.pipeline.artifacts import CacheEntry
from oyster_exp.pipeline.runner import graph_stages
from oyster_exp.stages import default_stages
from oyster_exp.stages.pairs import TRL_DATASET, TRL_FILE, write_trl

ROOT = Path(__file__).resolve().parents[2]
ENGINE = {"generate", "assess", "extract", "optimize"}

# one row per TRL shape: standard strings, conversational (with a system turn), implicit prompt
ROWS = [
    {"prompt": "How do I keep my passwords safe?", "chosen": "Use a password manager and unique passwords.",
     "rejected": "Write them on a sticky note.", "id": "std-1", "language": "en", "score_chosen": 8.0,
     "score_rejected": 2.0},
    {"prompt": [{"role": "system", "content": "Be helpful."},
                {"role": "user", "content": "Is bleach plus ammonia ok?"}],
     "chosen": [{"role": "assistant", "content": "No: mixing them releases toxic chloramine gas."}],
     "rejected": [{"role": "assistant", "content": "Sure, it cleans better."}], "id": "conv-1"},
    {"chosen": [{"role": "user", "content": "我忘记了路由器密码"},
                {"role": "assistant", "content": "可以按住重置键恢复出厂设置。"}],
     "rejected": [{"role": "user", "content": "我忘记了路由器密码"}, {"role": "assistant", "content": "不知道。"}],
     "language": "cn"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_every_trl_shape_and_container_reads_to_the_same_pairs(tmp_path: Path) -> None:
    from datasets import Dataset

    source = PreferencePairs(path=str(_jsonl(tmp_path / "p.jsonl", ROWS)))
    pairs = source.pairs()
    assert [p["id"] for p in pairs] == ["std-1", "conv-1", "pair-00003"]
    assert pairs[0]["prompt"] == [{"role": "user", "content": ROWS[0]["prompt"]}]
    assert (pairs[0]["chosen_reward"], pairs[0]["rejected_reward"]) == (8.0, 2.0)
    assert pairs[1]["prompt"][0]["role"] == "system" and pairs[1]["chosen"].startswith("No: mixing")
    assert pairs[2]["prompt"] == [{"role": "user", "content": "我忘记了路由器密码"}]
    assert pairs[2]["rejected"] == "不知道。"
    # its queries: the last user turn of each prompt, one per pair
    assert [(q["id"], q["query"], q["language"]) for q in source.rows()][1:] == [
        ("conv-1", "Is bleach plus ammonia ok?", "en"), ("pair-00003", "我忘记了路由器密码", "cn")]
    # the same conversational rows as Parquet and as a saved dataset folder
    conv = [r for r in ROWS if isinstance(r.get("prompt"), list)]
    Dataset.from_list(conv).to_parquet(str(tmp_path / "p.parquet"))
    Dataset.from_list(conv).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "p.parquet", tmp_path / "saved"):
        assert [p["chosen"] for p in PreferencePairs(path=str(path)).pairs()] == [pairs[1]["chosen"]], path
    # the content hash (the queries and pairs stages' cache key) follows the file's bytes
    before = source.input_hash()
    _jsonl(tmp_path / "p.jsonl", ROWS[:2])
    assert source.input_hash() != before and len(source.pairs()) == 2


@pytest.mark.parametrize(("row", "field"), [
    ({"prompt": "q", "rejected": "r"}, "chosen"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "r"}, "chosen"),
    ({"prompt": [{"role": "assistant", "content": "q"}], "chosen": "c", "rejected": "r"}, "prompt"),
    ({"prompt": "q", "chosen": "c", "rejected": "  "}, "rejected"),
    ({"prompt": "q", "chosen": "c", "rejected": "r", "language": "de"}, "language"),
    ({"prompt": "q", "chosen": "c", "rejected": "r", "score_chosen": "high"}, "score_chosen"),
])
def test_a_bad_row_names_its_place_and_field(row: dict, field: str) -> None:
    with pytest.raises(DataError, match=rf"^f\.jsonl:7: field '{field}': "):
        preference_rows([("f.jsonl:7", row)])


@pytest.mark.slow
def test_the_pairs_stage_export_loads_with_datasets_and_trl_orpo_takes_a_step(tmp_path: Path,
                                                                             tiny_model_dir: Path) -> None:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    prompt = [{"role": "system", "content": "You are careful."}, {"role": "user", "content": "How do locks work?"}]
    pairs = [PairRecord(id=f"q{i}", prompt=prompt, chosen=f"Pin tumblers align at the shear line ({i}).",
                        rejected="No.", chosen_reward=0.9, rejected_reward=0.2, query_id=f"q{i}",
                        policy="best_vs_initial", language="en") for i in range(3)]
    pairs.append(PairRecord(id="q9", prompt=prompt, chosen="", rejected="", failure="no_improvement: x"))
    entry = CacheEntry(tmp_path / "cache", "pairs", "k")
    write_trl(entry, pairs)
    ds = load_from_disk(str(entry.dir / "files" / TRL_DATASET))
    assert len(ds) == 3 and ds[0]["prompt"] == prompt          # skipped pairs are left out
    assert ds[0]["chosen"] == [{"role": "assistant", "content": pairs[0].chosen}]
    assert ds[0]["margin"] == pytest.approx(0.7) and ds[0]["policy"] == "best_vs_initial"
    lines = (entry.dir / "files" / TRL_FILE).read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["q0", "q1", "q2"]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()]
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, fp16=False, max_steps=1,
                      per_device_train_batch_size=2, max_length=128, report_to=[], save_strategy="no",
                      logging_steps=1, learning_rate=1e-3)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss == result.training_loss   # a real, finite loss
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_pairs_from_the_data_source_take_the_data_engine_out_of_the_graph(compose_cfg, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", ROWS)
    assert {s.name for s in graph_stages(compose_cfg(), default_stages())} >= ENGINE
    cfg = compose_cfg("data=pairs", f"data.path={path}")
    assert isinstance(instantiate(cfg.data), PreferencePairs)
    assert [s.name for s in graph_stages(cfg, default_stages())] == ["queries", "pairs", "train", "evaluate", "report"]
    from oyster_exp.run.dry_run import stage_estimates, workload

    assert not ENGINE & set(stage_estimates(cfg, workload(cfg)))


def _cli(out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(out), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", "model=tiny_random", "debug=fast",
                           "print_config=false", *overrides], capture_output=True, text=True, env=env,
                          cwd=out.parent, timeout=600)


@pytest.mark.slow
def test_data_pairs_trains_evaluates_and_reports_without_a_data_engine_call(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "pairs.jsonl", ROWS)
    out = tmp_path / "outputs"
    p = _cli(out, "data=pairs", f"data.path={path}", "stage=[train,evaluate,report]", "eval.models=[trained]",
             "eval.strata_sword.limit=1")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (run,) = sorted((out / "runs").glob("*/*"))
    m = json.loads((run / "manifest.json").read_text())
    assert set(m["counters"]["stage_cache"]) == {"queries", "pairs", "train", "evaluate", "report"}
    # the only LLM calls are the evaluation's (the model under test, the eval judge): none by the data engine
    assert m["llm_usage"] and {k.split("/")[0] for k in m["llm_usage"]} == {"evaluate"}
    train = json.loads((run / "artifacts" / "train.jsonl").read_text())
    assert train["failure"] is None and train["steps"] == 2
    pairs = [json.loads(x) for x in (run / "artifacts" / "pairs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in pairs] == ["std-1", "conv-1", "pair-00003"] and all(r["failure"] is None for r in pairs)
    assert (run / "pairs" / TRL_FILE).read_text().count("\n") == 3 and (run / "report.md").exists()

    # a bad row: one line naming the file, the line and the field; exit 2 before any model loads
    bad = _jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"prompt": "q", "chosen": "c"}])
    p = _cli(out, "data=pairs", f"data.path={bad}", "stage=[train]")
    assert p.returncode == 2, p.stderr[-2000:]
    assert f"{bad}:2: field 'rejected': missing" in p.stderr and "Traceback" not in p.stderr
