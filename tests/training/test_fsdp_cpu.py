"""`trainer=fsdp_cpu`: two gloo processes shard the tiny model with Lightning's FSDP (through
`parallelism.ShardedStrategy`) and follow one process with the same global batch, through a SIGKILL and
a resume, with gradient clipping on, to an export equal to the single process's weights.

Same data argument as test_ddp_cpu.py: each rank's batch of 1 is half of the single process's batch of
2 and the chosen answers have equal token counts, so only float order (the sharded reduce-scatter, the
gathered norm) differs. Tolerances, stated: per-step loss within a relative 1e-5, the gradient norm before
clipping within 1e-4 relative, weights within 1e-4 absolute (measured for full fine-tuning: loss ~2e-7,
norm ~5e-6 relative, weights ~4e-6 absolute).

The killed run is resumed from `last.ckpt` written at step 4: as a full state dict (gathered on rank 0,
one file) in the first test, as a sharded one (a directory, one shard per rank, nothing gathered) in the
second. Each resumed run must land on the uninterrupted single-process trajectory within the tolerance.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
RTOL = {"losses": 1e-5, "grad_norms": 1e-4}
WEIGHT_ATOL = 1e-4
KILL_AT = 5                      # steps 1..5 run, then SIGKILL; last.ckpt holds step 4 (every 2 steps)


def _trace(out: Path, name: str) -> dict[int, list[float]]:
    """step -> values in the order written (a resumed run repeats the steps after its checkpoint)."""
    rows: dict[int, list[float]] = {}
    for r in map(json.loads, (out / f"{name}.jsonl").read_text().splitlines()):
        rows.setdefault(r["step"], []).append(r["loss"] if "loss" in r else r["norm"])
    return rows


def _driver(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "train_driver.py"), str(out), "--trainer", "fsdp_cpu",
                           "--batch-size", "1", *args], env=env, capture_output=True, text=True, timeout=600)


def _killed_then_resumed(out: Path, *args: str) -> None:
    killed = _driver(out, *args, "--kill-at-step", str(KILL_AT))
    assert killed.returncode != 0 and not (out / "export").exists(), killed.stderr[-2000:]
    assert (out / "checkpoints" / "last.ckpt").exists()
    resumed = _driver(out, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in resumed.stderr + resumed.stdout      # really two processes


def _assert_same_trajectory(run: Path, single: Path) -> dict[int, list[float]]:
    for name in ("losses", "grad_norms"):
        mine, ref = _trace(run, name), _trace(single, name)
        assert sorted(mine) == sorted(ref) == list(range(1, 11)), name
        # steps 1-5 ran before the kill, the resume restarted after step 4: only step 5 ran twice
        assert [len(mine[s]) for s in sorted(mine)] == [2 if s == KILL_AT else 1 for s in range(1, 11)], name
        for step, (value,) in ref.items():
            assert all(abs(v - value) <= RTOL[name] * abs(value) for v in mine[step]), (name, step, mine[step], value)
    a, b = torch.load(run / "weights.pt"), torch.load(single / "weights.pt")
    assert sorted(a) == sorted(b)
    assert max(float((a[k] - b[k]).abs().max()) for k in b) <= WEIGHT_ATOL
    return _trace(single, "grad_norms")


@pytest.fixture(scope="module")
def single_lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import train_driver

    return train_driver.run(tmp_path_factory.mktemp("single_lora"), lora=True)


@pytest.mark.slow
def test_fsdp_full_state_checkpoint_resumes_and_matches_one_process(single_process_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "fsdp"
    _killed_then_resumed(out)
    assert (out / "checkpoints").exists() is False                  # removed after the export
    norms = _assert_same_trajectory(out, single_process_run)
    assert max(v for (v,) in norms.values()) > 1.0                  # gradient_clip_val 1.0 really clipped
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "export").num_parameters() > 0


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_lora_and_activation_checkpointing(single_lora_run: Path, tmp_path: Path) -> None:
    """LoRA under FSDP, FSDP's own activation checkpointing with the unpadded shared-prefix layout (its
    guard must see the wrapper), a sharded checkpoint, and an export of the merged model gathered from
    both ranks, equal to the single process's merged export."""
    out = tmp_path / "fsdp_lora"
    args = ("--lora", "--set", "trainer.strategy.state_dict_type=sharded",
            "--set", "trainer.strategy.activation_checkpointing=true")
    killed = _driver(out, *args, "--kill-at-step", str(KILL_AT))
    assert killed.returncode != 0 and not (out / "export").exists(), killed.stderr[-2000:]
    assert (out / "checkpoints" / "last.ckpt").is_dir()             # one shard per rank, not a gathered file
    assert len(list((out / "checkpoints" / "last.ckpt").glob("*.distcp"))) == 2
    resumed = _driver(out, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_trajectory(out, single_lora_run)
    merged = torch.load(out / "weights.pt")
    assert not any("lora" in k for k in merged)                     # a plain model, adapters folded in
