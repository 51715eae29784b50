"""Build the Trainer, fit (resuming from the last checkpoint), export, and return the final metrics.

What the train stage records; kept apart from the stage so tests drive the same path without Hydra.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from oyster_exp.training.card import CardMeta
from oyster_exp.training.data import PreferenceDataModule
from oyster_exp.training.module import PreferenceModule
from oyster_exp.training.parallelism import gathered_state_dict, launched_ranks

log = logging.getLogger(__name__)
LAST_CKPT = "last.ckpt"


class TrainerConfigError(RuntimeError):
    """The trainer config cannot be built on this machine; the message names the key and the fix."""


def build_trainer(node: Any, **kwargs: Any) -> L.Trainer:
    """`hydra.utils.instantiate` of a `trainer` node, with one-line errors for the usual misfits.

    A strategy whose package is missing (DeepSpeed), ZeRO stage 3 (see below) or an accelerator this
    machine lacks (a GPU config on CPU) raises `TrainerConfigError` naming the missing piece instead of a
    deep traceback.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    strategy = node.get("strategy") if hasattr(node, "get") else None
    if isinstance(strategy, str) and strategy.startswith("deepspeed_stage_3"):
        # ZeRO-3 partitions the weights, so rank 0's save_pretrained would write empty tensors; a gathering
        # export cannot be tested here (DeepSpeed has no CPU build), so stage 3 is refused, not half-supported
        raise TrainerConfigError(f"trainer.strategy={strategy}: DeepSpeed ZeRO stage 3 is not supported (its export "
                                 "is untested); use trainer=fsdp to shard parameters, or deepspeed_stage_1/_2")
    if isinstance(strategy, str) and strategy.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise TrainerConfigError(f"trainer.strategy={strategy} needs the deepspeed package, which is not "
                                     "installed (pip install deepspeed on a CUDA machine)")
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, MisconfigurationException, RuntimeError, ValueError) as e:
        cause = e.__cause__ or e
        accel = kwargs.get("accelerator", node.get("accelerator") if hasattr(node, "get") else None)
        if accel in ("gpu", "cuda") and not torch.cuda.is_available():
            raise TrainerConfigError(f"trainer.accelerator={accel}: no CUDA GPU on this machine "
                                     "(use trainer=cpu or trainer=ddp_cpu)") from e
        raise TrainerConfigError(f"trainer: {type(cause).__name__}: {str(cause).splitlines()[0]}") from e


def progress_bar_wanted() -> bool:
    """Lightning's progress bar only where someone watches: stdout is a terminal (not a log file or a pipe)."""
    import sys

    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar_for(trainer_node: Any) -> bool:
    """`trainer.enable_progress_bar` when set, else whether stdout is a terminal."""
    value = trainer_node.get("enable_progress_bar") if hasattr(trainer_node, "get") else None
    return progress_bar_wanted() if value is None else bool(value)


def last_checkpoint(ckpt_dir: Path | None, resume: str) -> Path | None:
    """`ckpt_dir/last.ckpt` when `resume == "auto"` and a complete one exists (saves are atomic)."""
    if ckpt_dir is None or str(getattr(resume, "value", resume)) != "auto":
        return None
    path = Path(ckpt_dir) / LAST_CKPT
    return path if path.is_file() or path.is_dir() else None


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's last logged scalar values (`train/*` of the last step, `val/*` of the last epoch)."""
    out: dict[str, float] = {}
    for key, value in trainer.callback_metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            continue
        out[key] = float(value)
    return dict(sorted(out.items()))


def fit_preference_model(module: PreferenceModule, datamodule: PreferenceDataModule, trainer: L.Trainer,
                         export_dir: Path, card_config: dict[str, Any] | None = None,
                         ckpt_path: Path | str | None = None, card_meta: CardMeta | None = None) -> dict[str, float]:
    """Train (from `ckpt_path` when given), then export the model with a card holding `card_config` and metrics.

    Only global rank 0 writes the export; the others wait at a barrier so no rank returns before the
    directory is complete. A sharded model (FSDP) is first gathered by every rank together, since no
    rank holds all of it (a rank-0-only `save_pretrained` would wait forever for the others).
    """
    if ckpt_path is not None:
        log.info("resuming training from %s", ckpt_path)
        # Lightning warns that a mid-epoch resume replays the epoch from its start; ours does not: the
        # PreferenceDataModule restarts at the restored epoch and skips the batches already trained on
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    metrics = final_metrics(trainer)
    state = gathered_state_dict(trainer)
    if trainer.is_global_zero:
        module.export(Path(export_dir), card_config=card_config, metrics=metrics, card_meta=card_meta,
                      state=state)
    trainer.strategy.barrier("oyster_exp.export")
    return metrics


def train_and_export(module: PreferenceModule, datamodule: PreferenceDataModule, trainer_node: Any, *,
                     export_dir: Path, ckpt_dir: Path, checkpoint_every_n_steps: int = 0, resume: str = "auto",
                     loggers: list[Any] | None = None, callbacks: list[Any] | None = None,
                     card_config: dict[str, Any] | None = None, card_meta: CardMeta | None = None,
                     **trainer_kwargs: Any) -> tuple[dict[str, float], L.Trainer]:
    """The train stage's whole training: build the Trainer, resume if a last checkpoint exists, fit, export.

    `ckpt_dir` must be stable across reruns of the same job (the stage passes its cache entry), so a
    killed run's `last.ckpt` is found again; the W&B run id stored beside it makes the loggers
    continue the same W&B run. `resume="never"` deletes old checkpoints first. The checkpoints are
    deleted after a successful export. With a logger attached, Lightning's `LearningRateMonitor` logs
    `train/lr` every step; `trainer.enable_progress_bar: null` shows Lightning's bar only on a terminal.
    """
    import shutil

    from oyster_exp.tracking.wandb import point_wandb_at, start_resumed_wandb, stored_wandb_id
    from oyster_exp.training.callbacks import AtomicLastCheckpoint, WandbRunIdBesideCheckpoint

    ckpt_dir = Path(ckpt_dir)
    resume = str(getattr(resume, "value", resume))
    loggers = list(loggers or [])
    if resume == "never" and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_path = last_checkpoint(ckpt_dir, resume)
    if ckpt_path is not None and (run_id := stored_wandb_id(ckpt_dir)):
        if point_wandb_at(loggers, run_id):
            start_resumed_wandb(loggers)
        else:
            log.warning("a W&B run had already started; the resumed training cannot continue W&B run %s", run_id)
    callbacks = list(callbacks or [])
    if loggers:
        from lightning.pytorch.callbacks import LearningRateMonitor

        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_kwargs.setdefault("enable_progress_bar", progress_bar_for(trainer_node))
    if checkpoint_every_n_steps > 0:
        callbacks += [AtomicLastCheckpoint(ckpt_dir, checkpoint_every_n_steps), WandbRunIdBesideCheckpoint(ckpt_dir)]
    trainer = build_trainer(trainer_node, logger=loggers or False, callbacks=callbacks,
                            enable_checkpointing=checkpoint_every_n_steps > 0, **trainer_kwargs)
    with launched_ranks(trainer):
        metrics = fit_preference_model(module, datamodule, trainer, Path(export_dir), card_config=card_config,
                                       ckpt_path=ckpt_path, card_meta=card_meta)
    if trainer.is_global_zero:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return metrics, trainer
