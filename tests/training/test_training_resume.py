"""Kill training with SIGKILL, rerun, and get bit-for-bit the weights of an uninterrupted run (CPU, tiny model).

The driver (tests/train_driver.py) trains through `training.run.train_and_export`, the train stage's own
path: `last.ckpt` every 2 steps in a stable checkpoint directory, `resume=auto`. Run 1 is killed before
step 5 (last checkpoint: step 4, the end of epoch 0), run 2 before step 7 (checkpoint: step 6, in the middle
of epoch 1), run 3 finishes. The optimizer, the lr schedule and the data order (epoch permutation and the
batches already seen) must all resume exactly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DRIVER = [sys.executable, str(ROOT / "tests" / "train_driver.py")]
TOLERANCE = 1e-6          # max |w_resumed - w_uninterrupted| over every parameter


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "losses.jsonl").read_text().splitlines())]


@pytest.fixture
def inherited_wandb_service():
    """A wandb-core service owned by another live process, exported as `WANDB_SERVICE` the way wandb
    exports it to the children of any process that used W&B (a sweep driver, this test runner). It keeps
    a SIGKILLed client's run id in use forever; the resumed job must still start its run (CI failed on
    exactly this when an earlier test in the same pytest process had used W&B)."""
    code = "import os, sys, wandb; wandb.setup(); print(os.environ['WANDB_SERVICE'], flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "WANDB_MODE": "offline"})
    try:
        token = holder.stdout.readline().strip()
        assert token, "the service holder printed no WANDB_SERVICE token"
        yield token
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_uninterrupted_weights(single_process_run: Path, tmp_path: Path,
                                                            inherited_wandb_service: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SERVICE": inherited_wandb_service}
    out = tmp_path / "killed"
    for kill_at in (5, 7):
        p = subprocess.run([*DRIVER, str(out), "--kill-at-step", str(kill_at), "--wandb"], env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
        assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "weights.pt").exists()
        assert not list((out / "checkpoints").glob("*.tmp"))
    p = subprocess.run([*DRIVER, str(out), "--wandb"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]

    steps = [s for s, _ in _losses(out)]
    assert steps == [1, 2, 3, 4, 5, 5, 6, 7, 7, 8, 9, 10]   # steps 5 and 7 ran twice: killed, then redone
    ours = torch.load(out / "weights.pt")
    ref = torch.load(single_process_run / "weights.pt")
    assert ours.keys() == ref.keys()
    worst = max(float((ours[k] - ref[k]).abs().max()) for k in ref)
    assert worst <= TOLERANCE, worst
    assert dict(_losses(out)) == dict(_losses(single_process_run))   # the same loss at every step
    run_ids = (out / "run_ids.txt").read_text().split()
    assert len(run_ids) == 3 and len(set(run_ids)) == 1, run_ids     # one W&B run across the three processes
    assert not (out / "checkpoints").exists()                         # removed after the export
    assert (out / "export" / "model.safetensors").exists()


def test_resume_never_starts_over_and_auto_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    from oyster_exp.training.run import last_checkpoint

    assert last_checkpoint(tmp_path, "auto") is None
    (tmp_path / "last.ckpt").write_bytes(b"x")
    assert last_checkpoint(tmp_path, "auto") == tmp_path / "last.ckpt"
    assert last_checkpoint(tmp_path, "never") is None
    assert last_checkpoint(None, "auto") is None


def test_rerun_with_other_resume_knobs_finds_the_same_train_entry(compose_cfg) -> None:
    """The checkpoint lives in the train stage's cache entry: switching checkpointing, resume or sample
    tables on for the rerun of a killed job must not change the entry's key; what is learned must."""
    from oyster_exp.stages.train import TrainStage

    stage = TrainStage()
    base = stage.config_slice(compose_cfg())
    same = stage.config_slice(compose_cfg("training.checkpoint_every_n_steps=5", "training.resume=never",
                                          "training.sample_generations=3", "training.tokenization_cache=false"))
    assert same == base
    for override in ("training.optimizer.lr=1e-3", "peft=lora", "training.scheduler.warmup_steps=3",
                     "trainer.accumulate_grad_batches=2"):
        assert stage.config_slice(compose_cfg(override)) != base, override
