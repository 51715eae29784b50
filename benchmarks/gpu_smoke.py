"""GPU smoke run: ORPO on SmolLM2 with `trainer=gpu` (bf16-mixed) and `trainer=fsdp` on one device, against CPU fp32.

    .venv/bin/python benchmarks/gpu_smoke.py                     # on a CUDA machine; one JSON line last
    .venv/bin/python benchmarks/gpu_smoke.py --model-dir /ckpt   # a copied SmolLM2 checkpoint (no network there)
    .venv/bin/python benchmarks/gpu_smoke.py --model tiny --steps 4   # the tiny random model: seconds

Why: CI has no GPU, so the first time the GPU paths run is on a lent machine; this script is the
whole check, sized to well under 10 minutes on one GPU and needing no network. Every arm trains the
same fp32 weights (the paper policy: fp32 master weights, bf16 compute) on the same batches in the
same order (the benchmark pairs of `train_throughput.py`, our length-bucketed sampler, one seed),
through the repository's own trainer configs (`conf/trainer/{gpu,fsdp,cpu}.yaml`, composed by Hydra,
built by `training.run.build_trainer`), each arm in its own process so peak memory and the process
group are its own. Printed per arm: tokens/s over the steps after a warm-up step, MFU (6 x params x
tokens/s against the device's dense bf16 peak from `BF16_PEAK_TFLOPS`), peak CUDA memory, and every
step's loss, compared with the CPU fp32 arm's losses on the same batches.

Without a CUDA device the script prints why on stderr, a JSON line with `"skipped": true`, and exits 0.
An arm that fails is reported with its error in the JSON line (exit 1) rather than hiding the others.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BETA = 0.1
LR = 5e-6
MAX_LENGTH = 512
BATCH_PAIRS = 2

BF16_PEAK_TFLOPS = (          # dense bf16 tensor-core peaks (vendor datasheets, no sparsity); first match wins
    ("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0),
    ("L4", 121.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
)
ARMS = {"gpu": "gpu", "fsdp": "fsdp", "cpu_fp32": "cpu"}   # arm -> conf/trainer option


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by its CUDA name (`torch.cuda.get_device_name`); None if unknown."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def mfu(params: int, tokens_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: 6 FLOPs per parameter per trained token (forward + backward)."""
    return None if not peak_tflops else 6 * params * tokens_per_s / (peak_tflops * 1e12)


def _compose_trainer(option: str, steps: int) -> Any:
    from hydra import compose, initialize_config_dir

    import oyster_exp.run.cli  # noqa: F401 - registers the schema and resolvers
    from oyster_exp.run.components import register_all

    register_all()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"trainer={option}", "trainer.devices=1",
                                                       f"trainer.max_steps={steps + 1}"])
    return cfg.trainer


def _model_dir(args: argparse.Namespace) -> str:
    if args.model_dir:
        return args.model_dir
    if args.model == "tiny":
        from oyster_exp.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    from oyster_exp.models.embedded import ensure_embedded_model

    return str(ensure_embedded_model())


def run_arm(arm: str, model_dir: str, steps: int, max_length: int) -> dict[str, Any]:
    """Train `steps` + 1 optimisation steps under one trainer config; per-step losses and timings."""
    import functools

    import lightning as L
    import torch

    sys.path.insert(0, str(HERE))
    from train_throughput import _fingerprint, _tokens, make_pairs

    from oyster_exp.training.data import PreferenceDataModule
    from oyster_exp.training.module import PreferenceModule
    from oyster_exp.training.objectives import ORPOLoss
    from oyster_exp.training.run import build_trainer
    from oyster_exp.training.tokenize import PreferenceExample

    cuda = arm != "cpu_fp32"
    losses: list[float] = []
    ends: list[float] = []
    tokens: list[int] = []
    first: list[str] = []

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())
            losses.append(float(outputs["loss"]))
            tokens.append(_tokens(batch))
            if not first:
                first.append(_fingerprint(batch))

    L.seed_everything(0, verbose=False)
    module = PreferenceModule(model_dir, loss=ORPOLoss(beta=BETA), dtype="float32",
                              optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.0))
    pairs = make_pairs(max(64, 2 * BATCH_PAIRS * (steps + 1)))
    data = PreferenceDataModule([PreferenceExample(**p) for p in pairs], [], module.tokenizer, max_length=max_length,
                                batch_size=BATCH_PAIRS, seed=0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(_compose_trainer(ARMS[arm], steps), logger=False, enable_checkpointing=False,
                                callbacks=[Clock()], default_root_dir=tmp)
        trainer.fit(module, datamodule=data)
    seconds = ends[-1] - ends[0]
    timed = sum(tokens[1:])
    return {"arm": arm, "trainer": ARMS[arm], "precision": str(trainer.precision), "steps": len(losses),
            "tokens_per_s": timed / seconds if seconds > 0 else None, "timed_tokens": timed,
            "params": sum(p.numel() for p in module.parameters()), "losses": losses, "first_batch": first[0],
            "peak_mem_mib": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                             else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def skipped(reason: str) -> dict[str, Any]:
    return {"benchmark": "gpu_smoke", "skipped": True, "reason": reason}


def compare(arm: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """This arm's losses against the CPU fp32 arm's, step by step on the same batches."""
    diffs = [abs(a - b) for a, b in zip(arm["losses"], ref["losses"])]
    return {"loss_step0": arm["losses"][0], "cpu_loss_step0": ref["losses"][0], "loss_abs_diff_step0": diffs[0],
            "loss_abs_diff_max": max(diffs),
            "loss_rel_diff_max": max(d / abs(b) for d, b in zip(diffs, ref["losses"])),
            "same_batches": arm["first_batch"] == ref["first_batch"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="timed optimisation steps per arm (plus one warm-up)")
    ap.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    ap.add_argument("--model-dir", help="a transformers checkpoint directory instead of --model")
    ap.add_argument("--max-length", type=int, default=MAX_LENGTH)
    ap.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)   # child process: run one arm
    args = ap.parse_args()
    if args.model == "tiny" and not args.model_dir:
        args.max_length = max(args.max_length, 4096)   # the tiny model's small BPE splits text finely
    if args.arm:
        print(json.dumps(run_arm(args.arm, _model_dir(args), args.steps, args.max_length)))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device on this machine (torch.cuda.is_available() is False); nothing was run",
              file=sys.stderr)
        print(json.dumps(skipped("no CUDA device")))
        return 0
    start = time.perf_counter()
    device = torch.cuda.get_device_name(0)
    peak = bf16_peak_tflops(device)
    model_dir = _model_dir(args)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for arm in ("cpu_fp32", "gpu", "fsdp"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--steps", str(args.steps),
               "--model-dir", model_dir, "--max-length", str(args.max_length)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=480)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith('{"arm"')]
        if out.returncode != 0 or not lines:
            tail = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            errors[arm] = f"exit {out.returncode}: {tail[-1] if tail else 'no output'}"
            sys.stderr.write(out.stderr[-3000:])
            continue
        results[arm] = json.loads(lines[-1])
        print(json.dumps({k: v for k, v in results[arm].items() if k != "losses"}), file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"benchmark": "gpu_smoke", "skipped": False, "device": device, "bf16_peak_tflops": peak,
                               "model_dir": model_dir, "steps": args.steps, "batch_pairs": BATCH_PAIRS,
                               "max_length": args.max_length, "weights": "float32", "lr": LR, "beta": BETA}
    ref = results.get("cpu_fp32")
    for arm in ("gpu", "fsdp", "cpu_fp32"):
        if arm not in results:
            summary[arm] = {"error": errors.get(arm, "not run")}
            continue
        r = results[arm]
        row = {"precision": r["precision"], "tokens_per_s": round(r["tokens_per_s"] or 0.0, 1),
               "peak_mem_mib": round(r["peak_mem_mib"], 1), "params": r["params"]}
        if arm != "cpu_fp32":
            m = mfu(r["params"], r["tokens_per_s"] or 0.0, peak)
            row["mfu"] = None if m is None else round(m, 4)
            if ref is not None:
                row.update(compare(r, ref))
        summary[arm] = row
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
