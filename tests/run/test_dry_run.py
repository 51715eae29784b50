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
    from oyster_exp.core.estimates import Workload
    from oyster_exp.run.dry_run import estimate_llm

    work = Workload(train=10, heldout=5, query_chars=100.0)
    paper = estimate_llm(compose_cfg("lingo_bp=paper"), work)
    one = estimate_llm(compose_cfg("lingo_bp=one_step"), work)
    off = estimate_llm(compose_cfg("lingo_bp=off"), work)
    assert (paper["optimize_calls_per_query"], one["optimize_calls_per_query"], off["optimize_calls_per_query"]) \
        == (14, 6, 2)
    assert paper["llm_calls"] == 10 * 18
    k4 = estimate_llm(compose_cfg("stackelberg=on", "stackelberg.candidates=4"), work)
    # Stackelberg samples K candidates in optimize (the initial answer and every recombination), each judged
    # by both judges and, for the follower model, by the follower role; generate still asks once for the answer
    # and once for its reasoning
    assert k4["per_stage"]["generate"]["calls"] == 10 * 2
    assert k4["optimize_calls_per_query"] == 4 + 3 * 4 + 1 + 4 + 3 * 4
    no_model = estimate_llm(compose_cfg("stackelberg=on", "stackelberg.candidates=4",
                                        "stackelberg.follower_model=false"), work)
    assert no_model["optimize_calls_per_query"] == 4 + 2 * 4 + 1 + 4 + 2 * 4


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
