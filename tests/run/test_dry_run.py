"""`dry_run=true`: the paper's configs compose, validate, build on the meta device and print estimates, here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAPER = ["paper_qwen3_14b_sft", "paper_qwen3_14b_orpo", "paper_r1_distill_qwen_14b_sft",
         "paper_r1_distill_qwen_14b_orpo"]


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, dict]]:
    """Every paper config and demo_cpu, dry-run by one `oyster-exp -m experiment=...` process (one import of
    torch/transformers for all five); each job prints its tables and then one JSON line."""
    tmp = tmp_path_factory.mktemp("dry_run")
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(tmp / "outputs"), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", "-m", f"experiment={','.join(PAPER + ['demo_cpu'])}",
                        "dry_run=true", "print_config=false"], capture_output=True, text=True, env=env, cwd=tmp,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out: dict[str, tuple[str, dict]] = {}
    chunk: list[str] = []
    for line in p.stdout.splitlines():
        if line.startswith('{"dry_run"'):
            est = json.loads(line)["dry_run"]
            out[est["experiment"]] = ("\n".join(chunk), est)
            chunk = []
        else:
            chunk.append(line)
    assert not (tmp / "outputs" / "cache" / "stages").exists()        # no stage ran
    return out


@pytest.mark.parametrize("experiment", PAPER)
def test_paper_config_dry_runs_and_prints_estimates(experiment: str, dry_runs: dict[str, tuple[str, dict]]) -> None:
    text, est = dry_runs[experiment]
    assert est["experiment"] == experiment and est["data_engine_llm"] == "dashscope_qwq"
    assert est["lingo_bp"] == ["both", "both", "both"]
    mem = est["memory_per_gpu"]
    # both bases are ~14.8B parameters (Qwen3-14B: 14.77B; R1-Distill-Qwen-14B, a Qwen2.5-14B: 14.77B)
    assert 14.6e9 < mem["params"] < 15.0e9
    assert mem["gpus"] == 8 and mem["strategy"] == "fsdp" and mem["precision"] == "bf16-mixed"
    # FSDP shards fp32 weights, grads and both Adam moments (16 bytes/param) over 8 GPUs
    assert abs(mem["weights_gib"] + mem["grads_gib"] + mem["optimizer_gib"] - 16 * mem["params"] / 8 / 2**30) < 1.0
    assert mem["fits_80gib"] and mem["activations_gib"] > 0
    llm = est["llm"]
    assert llm["optimize_calls_per_query"] == 14 and llm["calls_per_train_query"] == 18
    assert llm["llm_calls"] == 18 * est["train_queries"] and est["train_queries"] + est["heldout_queries"] == 84
    assert llm["tokens_in"] > 0 and llm["tokens_out"] > 0 and llm["eval_llm_calls"] > 0
    assert "memory per GPU" in text and "calls per train query" in text
    assert "on meta" in text                                # the model really was built on the meta device


def test_demo_cpu_dry_run_reads_the_embedded_architecture(dry_runs: dict[str, tuple[str, dict]]) -> None:
    _, est = dry_runs["demo_cpu"]
    assert 130e6 < est["memory_per_gpu"]["params"] < 140e6          # SmolLM2-135M
    assert est["data_engine_llm"] == "local" and est["memory_per_gpu"]["gpus"] == 1


def test_memory_estimate_follows_the_sharding_rules() -> None:
    from oyster_exp.run.dry_run import estimate_memory

    arch = {"hidden_size": 4096, "num_hidden_layers": 32, "vocab_size": 1000}
    ddp = estimate_memory(10**9, arch, 8, "ddp", "bf16-mixed", 1, 1024)
    fsdp = estimate_memory(10**9, arch, 8, "fsdp", "bf16-mixed", 1, 1024)
    zero2 = estimate_memory(10**9, arch, 8, "deepspeed_stage_2", "bf16-mixed", 1, 1024)
    assert ddp.optimizer_gib == pytest.approx(8e9 / 2**30, abs=0.01)        # two fp32 moments, replicated
    assert fsdp.optimizer_gib == pytest.approx(ddp.optimizer_gib / 8, abs=0.01)
    assert zero2.weights_gib == ddp.weights_gib and zero2.grads_gib == fsdp.grads_gib
    assert ddp.activations_gib == fsdp.activations_gib                      # activations are per GPU anyway
    longer = estimate_memory(10**9, arch, 8, "fsdp", "bf16-mixed", 1, 2048)
    assert longer.activations_gib == pytest.approx(2 * fsdp.activations_gib, rel=0.01)


def test_llm_estimate_scales_with_the_schedule(compose_cfg) -> None:
    from oyster_exp.run.dry_run import estimate_llm

    paper = estimate_llm(compose_cfg("lingo_bp=paper"), 10, 5, 0, 100.0)
    one = estimate_llm(compose_cfg("lingo_bp=one_step"), 10, 5, 0, 100.0)
    off = estimate_llm(compose_cfg("lingo_bp=off"), 10, 5, 0, 100.0)
    assert (paper["optimize_calls_per_query"], one["optimize_calls_per_query"], off["optimize_calls_per_query"]) \
        == (14, 6, 2)
    assert paper["llm_calls"] == 10 * 18
    k4 = estimate_llm(compose_cfg("stackelberg=on", "stackelberg.candidates=4"), 10, 5, 0, 100.0)
    assert k4["per_stage"]["generate"]["calls"] == 10 * (2 * 4 + 2 * 4)       # K answers+reasonings, each judged
