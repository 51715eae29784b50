"""Lightning callbacks of the train stage: crash-safe last checkpoint, W&B run id beside it, sample table.

Why these three: a resumed run must find a complete `last.ckpt` (a `kill -9` during a save must not
leave a torn file behind), must continue the same W&B run (its id lives next to the checkpoint), and
a reviewer wants to read what the model says, not only its loss.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from oyster_exp.tracking.wandb import WANDB_ID_FILE, wandb_loggers

log = logging.getLogger(__name__)


class AtomicLastCheckpoint(ModelCheckpoint):
    """Keeps only `last.ckpt` in `dirpath`, every `every_n_steps` optimisation steps, written atomically.

    The checkpoint is saved under a temporary name and renamed over `last.ckpt` once complete
    (`os.replace`), so a process killed mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int):
        super().__init__(dirpath=str(dirpath), every_n_train_steps=int(every_n_steps), save_top_k=0, save_last=True,
                         enable_version_counter=False)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = filepath + ".tmp"
        super()._save_checkpoint(trainer, tmp)
        trainer.strategy.barrier("oyster_exp.checkpoint")
        if trainer.is_global_zero and os.path.exists(tmp):
            if os.path.isdir(tmp) and os.path.exists(filepath):  # sharded (DeepSpeed) checkpoints are directories
                shutil.rmtree(filepath)
            os.replace(tmp, filepath)
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("oyster_exp.checkpoint_renamed")


class WandbRunIdBesideCheckpoint(L.Callback):
    """Writes the W&B run id into the checkpoint directory when training starts (rank 0)."""

    def __init__(self, ckpt_dir: str | Path):
        self.ckpt_dir = Path(ckpt_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for lg in wandb_loggers(trainer.loggers):
            run = lg.experiment
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.ckpt_dir / (WANDB_ID_FILE + ".tmp")
            tmp.write_text(json.dumps({"id": run.id, "project": lg.name}))
            tmp.replace(self.ckpt_dir / WANDB_ID_FILE)
            return


class SampleGenerationTable(L.Callback):
    """A W&B table of greedy generations (prompt, chosen, model output) at each validation end.

    Runs on rank 0 on the unwrapped model. Without a validation split it logs once when training
    ends. Skipped under sharded strategies (FSDP, DeepSpeed), where one rank alone cannot generate.
    """

    COLUMNS = ["step", "id", "prompt", "chosen", "output"]

    def __init__(self, examples: list[Any], n: int, max_new_tokens: int = 48, key: str = "val/samples"):
        self.examples, self.n, self.max_new_tokens, self.key = list(examples)[:n], n, max_new_tokens, key
        self.logged = 0

    def _sharded(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        return isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy))  # ours subclass FSDPStrategy

    @torch.no_grad()
    def rows(self, pl_module: L.LightningModule, step: int) -> list[list[Any]]:
        model, tok = pl_module.model, pl_module.tokenizer
        was_training = model.training
        model.eval()
        out = []
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        try:
            for ex in self.examples:
                text = tok.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=False)
                ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(pl_module.device)
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=self.max_new_tokens, pad_token_id=pad)
                reply = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
                out.append([step, ex.id, text, ex.chosen, reply])
        finally:
            model.train(was_training)
        return out

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.examples or trainer.sanity_checking or not trainer.is_global_zero:
            return
        targets = wandb_loggers(trainer.loggers)
        if not targets:
            return
        if self._sharded(trainer):
            log.warning("sample generations skipped: %s shards the model", type(trainer.strategy).__name__)
            return
        data = self.rows(pl_module, trainer.global_step)
        for lg in targets:
            lg.log_table(self.key, columns=self.COLUMNS, data=data, step=trainer.global_step)
        self.logged += 1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logged == 0:
            self._log(trainer, pl_module)
