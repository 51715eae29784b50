"""What logging the exported model as an offline W&B `model` artifact costs at the end of a run.

    .venv/bin/python benchmarks/wandb_artifacts.py [--model-dir DIR] [--repeats 3]   # prints one JSON line last

The embedded SmolLM2-135M checkpoint (fp32, ~0.5 GB, what `make run` exports) is logged into a fresh
offline run each time, through the same `tracking.wandb.log_stage_artifact` the CLI uses; the time is
`log_stage_artifact` plus `wandb.finish` (wandb-core hashes every file; files are added as immutable,
so nothing is copied). Runs are sequential; on a shared box the figures are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def one(model_dir: Path) -> float:
    import wandb

    from oyster_exp.tracking.wandb import log_stage_artifact

    with tempfile.TemporaryDirectory() as tmp:
        from lightning.pytorch.loggers import WandbLogger

        lg = WandbLogger(project="oyster-exp-bench", save_dir=tmp, offline=True)
        _ = lg.experiment
        t0 = time.perf_counter()
        (art,) = log_stage_artifact([lg], name="bench-model", kind="model", paths=[model_dir])
        wandb.finish()
        seconds = time.perf_counter() - t0
        assert len(art.manifest.entries) > 0
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None, help="default: the converted embedded SmolLM2")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    model_dir = args.model_dir
    if model_dir is None:
        from oyster_exp.models.embedded import ensure_embedded_model

        model_dir = Path(ensure_embedded_model())
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    times = [one(model_dir) for _ in range(args.repeats)]
    print(json.dumps({"benchmark": "wandb_model_artifact_offline", "model_dir": str(model_dir),
                      "mbytes": round(size / 2**20, 1), "repeats": args.repeats,
                      "seconds_median": round(statistics.median(times), 2), "seconds": [round(t, 2) for t in times]}))


if __name__ == "__main__":
    main()
