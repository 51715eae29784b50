"""`trainer=ddp_cpu`: two real gloo processes (re-launched ranks, as `trainer=ddp` on GPUs) train the tiny model,
batch 1 each, and follow the loss curve of one process with batch 2 (the same global batch).

The data module shards each epoch's permutation by rank, so without length bucketing the two ranks'
batches at a step are exactly the single process's batch; the chosen answers have equal token counts,
so the mean of the per-rank losses is the single-process loss. What is left is floating-point order in
the gradient all-reduce. Tolerance, stated: per-step loss within a relative 1e-5, final weights within
1e-4 absolute (measured: ~2e-7 relative, ~9e-6 absolute).
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
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "losses.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(single_process_run: Path,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "train_driver.py"), str(out), "--trainer", "ddp_cpu",
                        "--batch-size", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in p.stderr + p.stdout       # really two processes
    ddp, single = _losses(out), _losses(single_process_run)
    assert sorted(ddp) == sorted(single) == list(range(1, 11))
    for step, loss in single.items():
        assert abs(ddp[step] - loss) <= LOSS_RTOL * abs(loss), (step, ddp[step], loss)
    assert single[10] < single[1]                                       # it did learn
    a, b = torch.load(out / "weights.pt"), torch.load(single_process_run / "weights.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in b) <= WEIGHT_ATOL
    assert (out / "export" / "model.safetensors").exists()
