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
    p = subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", "-m",
                        f"experiment={','.join(PAPER + ['demo_cpu'])}", "dry_run=true", "print_config=false"],
                       capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
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
    assert mem["weight_dtype"] == "float32" and mem["bytes_per_param"]["weights"] == 4
    assert abs(mem["weights_gib"] + mem["grads_gib"] + mem["optimizer_gib"] - 16 * mem["params"] / 8 / 2**30) < 1.0
    assert 1.5e9 < mem["root_params"] < 1.6e9 and mem["root_gib"] > 5     # embeddings + LM head, gathered
    assert "weights float32, bf16-mixed" in text and "unsharded root" in text
    assert mem["fits_80gib"] and mem["activations_gib"] > 0
    llm = est["llm"]
    # optimize: 2 judges on the initial answer + 5 per epoch (edit, answer, the actor's reasoning, 2 judges)
    assert llm["optimize_calls_per_query"] == 17 and llm["calls_per_train_query"] == 21
    assert llm["llm_calls"] == 21 * est["train_queries"] and est["train_queries"] + est["heldout_queries"] == 84
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
    assert zero2.optimizer_gib == fsdp.optimizer_gib and zero2.master_gib == pytest.approx(4e9 / 8 / 2**30, abs=0.01)
    assert zero2.weights_gib == pytest.approx(2e9 / 2**30, abs=0.01)       # DeepSpeed casts the model to bf16
    assert ddp.activations_gib == fsdp.activations_gib                      # activations are per GPU anyway
    longer = estimate_memory(10**9, arch, 8, "fsdp", "bf16-mixed", 1, 2048)
    assert longer.activations_gib == pytest.approx(2 * fsdp.activations_gib, rel=0.01)
    bf16 = estimate_memory(10**9, arch, 8, "fsdp", "bf16-mixed", 1, 1024, weight_dtype="bfloat16")
    assert bf16.weights_gib + bf16.grads_gib + bf16.optimizer_gib == pytest.approx(8e9 / 8 / 2**30, abs=0.02)
    true16 = estimate_memory(10**9, arch, 8, "fsdp", "bf16-true", 1, 1024, weight_dtype="float32")
    assert true16.bytes_per_param == bf16.bytes_per_param                 # bf16-true casts the weights


GB = 2**30


def test_memory_estimate_arithmetic_by_hand_for_two_configs() -> None:
    """Every row recomputed here from the formulas, for the paper's policy and for a bf16 single GPU."""
    from oyster_exp.run.dry_run import estimate_memory

    # Qwen3-14B shape, FSDP over 8 GPUs, fp32 weights + bf16-mixed, ORPO batch 1 (2 sequences) at 2048 tokens
    arch = {"hidden_size": 5120, "num_hidden_layers": 40, "vocab_size": 151936}
    p, root = 14_768_307_200, 1_555_824_640
    m = estimate_memory(p, arch, 8, "fsdp", "bf16-mixed", 1, 2048, weight_dtype="float32", root_params=root)
    assert m.bytes_per_param == {"weights": 4, "grads": 4, "optimizer": 8, "master": 0, "compute": 2}
    assert m.weights_gib == m.grads_gib == round(p * 4 / 8 / GB, 2) == 6.88
    assert m.optimizer_gib == round(p * 8 / 8 / GB, 2) == 13.75 and m.master_gib == 0
    assert m.gathered_gib == round(2 * (p - root) / 40 * 2 / GB, 2) == 1.23     # this unit + the prefetched one
    assert m.root_gib == round(root * (2 + 2) / GB, 2) == 5.80                  # bf16 weights + bf16 gradient
    assert m.activations_gib == round(34 * 2048 * 2 * 5120 * 40 * 2 / 2 / GB, 2) == 26.56
    assert m.logits_gib == round(2 * 2048 * 151936 * (2 + 4) / GB, 2) == 3.48
    assert m.total_gib == pytest.approx(6.88 * 2 + 13.75 + 1.23 + 5.80 + 26.56 + 3.48, abs=0.02)

    # a 1B model in bf16 on one GPU under bf16-mixed, SFT batch 4 at 512 tokens: nothing sharded, no copies
    arch = {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 32000}
    s = estimate_memory(10**9, arch, 1, "auto", "bf16-mixed", 4, 512, pairs=False, weight_dtype="bfloat16",
                        root_params=10**8)
    assert (s.weights_gib, s.grads_gib, s.optimizer_gib) == (round(2e9 / GB, 2), round(2e9 / GB, 2),
                                                             round(4e9 / GB, 2)) == (1.86, 1.86, 3.73)
    assert s.master_gib == s.gathered_gib == s.root_gib == 0                 # root counted in the weights already
    assert s.activations_gib == round(34 * 512 * 4 * 2048 * 16 * 2 / 2 / GB, 2) == 2.12
    assert s.logits_gib == round(4 * 512 * 32000 * 6 / GB, 2) == 0.37


def test_llm_estimate_scales_with_the_schedule(compose_cfg) -> None:
    from oyster_exp.core.estimates import Workload
    from oyster_exp.run.dry_run import estimate_llm

    work = Workload(train=10, heldout=5, query_chars=100.0)
    paper = estimate_llm(compose_cfg("lingo_bp=paper"), work)
    one = estimate_llm(compose_cfg("lingo_bp=one_step"), work)
    off = estimate_llm(compose_cfg("lingo_bp=off"), work)
    assert (paper["optimize_calls_per_query"], one["optimize_calls_per_query"], off["optimize_calls_per_query"]) \
        == (17, 7, 2)
    assert paper["llm_calls"] == 10 * 21
    template = estimate_llm(compose_cfg("lingo_bp=paper", "lingo_bp/recombiner=plan_as_system"), work)
    assert template["optimize_calls_per_query"] == 14     # the fixed reasoning text needs no call
    k4 = estimate_llm(compose_cfg("stackelberg=on", "stackelberg.candidates=4"), work)
    # Stackelberg samples K candidates in optimize (the initial answer and every recombination), each judged
    # by both judges and, for the follower model, by the follower role; generate still asks once for the answer
    # and once for its reasoning
    assert k4["per_stage"]["generate"]["calls"] == 10 * 2
    assert k4["optimize_calls_per_query"] == 4 + 3 * 4 + 1 + 4 + 1 + 3 * 4   # one reasoning call per draft
    no_model = estimate_llm(compose_cfg("stackelberg=on", "stackelberg.candidates=4",
                                        "stackelberg.follower_model=false"), work)
    assert no_model["optimize_calls_per_query"] == 4 + 2 * 4 + 1 + 4 + 1 + 2 * 4


# --- each stage's estimate against a real tiny run -------------------------------------------------------------
TINY_ARMS = {"default": [], "lingo_bp=paper": ["lingo_bp=paper"], "stackelberg=on": ["stackelberg=on"]}
TINY_BASE = ["model=tiny_random", "debug=fast", "llm=local", "print_config=false"]


def _requests_by_stage_role(manifest: dict) -> dict[str, dict[str, int]]:
    """First-attempt requests per stage and role: calls + call-cache hits - retries (a retry is a call too)."""
    out: dict[str, dict[str, int]] = {}
    for key, c in manifest["llm_usage"].items():
        stage, role = key.split("/", 1)
        out.setdefault(stage, {})[role] = c["calls"] + c["cache_hits"] - c["retries"]
    return out


@pytest.fixture(scope="module")
def tiny_arms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[str], dict, Path]]:
    """The three configs run for real on the tiny model, one after another into one outputs folder (the
    later arms reuse the stages the first computed: those entries say `hit` and are not compared)."""
    tmp = tmp_path_factory.mktemp("tiny_arms")
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(tmp / "outputs"), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    out = {}
    for name, overrides in TINY_ARMS.items():
        p = subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", *TINY_BASE, *overrides],
                           capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        run = max((tmp / "outputs" / "runs").glob("*/*"), key=lambda d: d.stat().st_mtime)
        out[name] = (overrides, json.loads((run / "manifest.json").read_text()), run)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arm", list(TINY_ARMS))
def test_stage_estimates_equal_the_requests_of_a_real_run(arm: str, tiny_arms, compose_cfg) -> None:
    from oyster_exp.run.dry_run import stage_estimates, workload

    overrides, manifest, run = tiny_arms[arm]
    cfg = compose_cfg(*TINY_BASE, *overrides)
    work = workload(cfg)
    assert manifest["counters"]["records"]["queries"] == work.train + work.heldout
    seen = _requests_by_stage_role(manifest)
    compared = []
    for stage, calls in stage_estimates(cfg, work).items():
        if manifest["counters"]["stage_cache"].get(stage) != "miss":
            continue                                 # served from the cache: no calls to compare
        est: dict[str, int] = {}
        for c in calls:
            est[c.role] = est.get(c.role, 0) + c.calls
        est = {r: n for r, n in est.items() if n}
        got = seen.get(stage, {})
        assert manifest["counters"]["failures"][stage] == 0, stage  # then no estimate is a mere upper bound
        if stage == "optimize":
            stops = [json.loads(line).get("stop_reason") or "" for line in
                     (run / "artifacts" / "optimize.jsonl").read_text().splitlines()]
            if any(s.startswith("pearl point") for s in stops):   # early stop fired: the estimate bounds
                assert all(got.get(r, 0) <= n for r, n in est.items()) and set(got) <= set(est), (stage, got, est)
                continue
        assert got == est, (stage, got, est)
        compared.append(stage)
    # the first arm computes every stage; the others change optimize's config (later stages may be hits when its
    # records come out the same, as for paper's both x3 cut to one epoch by debug=fast)
    expected = {"generate", "assess", "extract", "optimize", "evaluate"} if arm == "default" else {"optimize"}
    assert expected <= set(compared), compared
