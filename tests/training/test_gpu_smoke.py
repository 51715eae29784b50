"""benchmarks/gpu_smoke.py without a GPU: the skip path, the peak table and MFU, and its CPU reference arm."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, hide_gpus: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""            # the skip path even on a machine with a GPU
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_without_cuda_it_says_so_and_prints_a_skipped_json_line() -> None:
    p = _run()
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"benchmark": "gpu_smoke", "skipped": True,
                                                             "reason": "no CUDA device"}
    assert "no CUDA device" in p.stderr and "nothing was run" in p.stderr


def test_peak_table_and_mfu_arithmetic() -> None:
    smoke = _script()
    assert smoke.bf16_peak_tflops("NVIDIA H200") == 989.0
    assert smoke.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert smoke.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert smoke.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert smoke.bf16_peak_tflops("Some Future GPU") is None and smoke.mfu(10, 1.0, None) is None
    assert smoke.mfu(135_000_000, 100_000.0, 989.0) == pytest.approx(6 * 135e6 * 1e5 / 989e12)


def test_cpu_reference_arm_trains_the_same_batches_through_the_trainer_config() -> None:
    """The arm every GPU arm is compared with, run for real on the tiny model (2 timed steps)."""
    p = _run("--arm", "cpu_fp32", "--model", "tiny", "--steps", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["trainer"] == "cpu" and r["precision"] == "32-true" and r["steps"] == 3
    assert len(r["losses"]) == 3 and all(0 < x < 20 for x in r["losses"]) and r["tokens_per_s"] > 0
    smoke = _script()
    same = smoke.compare(r, r)
    assert same["loss_abs_diff_max"] == 0 and same["same_batches"]
