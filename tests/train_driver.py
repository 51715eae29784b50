"""Trains the tiny model through `training.run.train_and_export`, the train stage's own path, in a process
of its own: the resume test SIGKILLs it, the DDP test runs it with two gloo processes.

    python tests/train_driver.py OUT [--kill-at-step N] [--trainer ddp_cpu|fsdp_cpu] [--batch-size 1] [--wandb]
        [--lora] [--set trainer.strategy.state_dict_type=sharded ...]

Writes OUT/weights.pt (every weight of the exported model, as `from_pretrained` reads it back, so a
sharded run is compared through its export), OUT/losses.json (per optimisation step, the loss averaged
over processes), OUT/run_ids.txt (one W&B run id per process start), and the export.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)  # also in spawned DDP workers, which import this module again
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402

STEPS, PAIRS = 10, 8


def examples() -> list[Any]:
    """Eight pairs whose chosen answers have the same token count, so per-process mean losses average
    to the single-process token-weighted loss exactly (the DDP comparison is about parallelism only)."""
    from oyster_exp.training.tokenize import PreferenceExample

    return [PreferenceExample(id=f"p{i}", prompt=[{"role": "user", "content": "question " * (1 + i % 3) + str(i)}],
                              chosen=f"safe helpful answer {i}", rejected="unsafe answer " * (1 + i % 2))
            for i in range(PAIRS)]


class KillAt(L.Callback):
    """SIGKILL this process when optimisation step `step` is about to start (steps 0..step-1 are done)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class LossTrace(L.Callback):
    """Loss per optimisation step, averaged over processes; rank 0 appends it to `path` as it goes."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": trainer.global_step, "loss": float(loss)}) + "\n")


class GradNormTrace(L.Callback):
    """Total gradient norm before clipping, per optimisation step (rank 0 appends it to `path`).

    Under FSDP each rank holds a slice of every gradient, so the norm comes from FSDP's own collective
    `clip_grad_norm_` with an infinite bound (it scales by 1); otherwise the local gradients are whole.
    """

    def __init__(self, path: Path):
        self.path = path

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        from oyster_exp.training.parallelism import sharded_root

        root = sharded_root(trainer)
        if root is not None:
            norm = root.clip_grad_norm_(float("inf"))
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters() if p.grad is not None])
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": trainer.global_step + 1, "norm": float(norm)}) + "\n")


class RunIdTrace(L.Callback):
    def __init__(self, path: Path):
        self.path = path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            with open(self.path, "a") as f:
                f.write(f"{trainer.logger.version}\n")


LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def run(out: Path, kill_at_step: int | None = None, trainer: str = "cpu", batch_size: int = 2, every: int = 2,
        wandb: bool = False, lora: bool = False, overrides: tuple[str, ...] = ()) -> Path:
    from omegaconf import OmegaConf

    from oyster_exp.models.tiny import ensure_tiny_model
    from oyster_exp.training.data import PreferenceDataModule
    from oyster_exp.training.model_setup import LoraSettings
    from oyster_exp.training.module import PreferenceModule
    from oyster_exp.training.run import train_and_export
    from oyster_exp.training.schedules import warmup_decay

    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0, verbose=False)
    model_dir = ensure_tiny_model()
    module = PreferenceModule(str(model_dir), optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
                              scheduler=functools.partial(warmup_decay, warmup_steps=2),
                              lora=LoraSettings(**LORA) if lora else None)
    data = PreferenceDataModule(examples(), [], module.tokenizer, max_length=96, batch_size=batch_size,
                                length_bucketing=False, seed=0)
    node = OmegaConf.load(ROOT / "conf" / "trainer" / f"{trainer}.yaml")
    base = OmegaConf.load(ROOT / "conf" / "trainer" / "cpu.yaml")
    node = OmegaConf.merge(base, {k: v for k, v in node.items() if k != "defaults"}, {"max_steps": STEPS},
                           OmegaConf.from_dotlist([o.removeprefix("trainer.") for o in overrides]))
    callbacks: list[Any] = [LossTrace(out / "losses.jsonl"), GradNormTrace(out / "grad_norms.jsonl")]
    loggers: list[Any] = []
    if wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="oyster-exp-test", save_dir=str(out), offline=True))
        callbacks.append(RunIdTrace(out / "run_ids.txt"))
    if kill_at_step is not None:
        callbacks.append(KillAt(kill_at_step))
    _, fitted = train_and_export(module, data, node, export_dir=out / "export", ckpt_dir=out / "checkpoints",
                                 checkpoint_every_n_steps=every, loggers=loggers, callbacks=callbacks,
                                 default_root_dir=str(out / "lightning"))
    if fitted.is_global_zero:
        from transformers import AutoModelForCausalLM

        exported = AutoModelForCausalLM.from_pretrained(out / "export")
        torch.save({n: p.detach().cpu() for n, p in exported.state_dict().items()}, out / "weights.pt")
    if wandb:
        import wandb as wb

        wb.finish()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--trainer", default="cpu")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--wandb", action="store_true")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--set", action="append", default=[], help="trainer.KEY=VALUE (OmegaConf dotlist)")
    a = p.parse_args()
    run(a.out, a.kill_at_step, a.trainer, a.batch_size, a.every, a.wandb, a.lora, tuple(a.set))


if __name__ == "__main__":
    main()
