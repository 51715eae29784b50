"""train: the `objective` (ORPO, SFT) on the preference pairs with a real Lightning Trainer; export the model.

Checkpoints live in the stage's cache entry (`<cache>/stages/train/<key>/checkpoints/last.ckpt`), so
rerunning a killed command (same config, same pairs, same key) finds them: with `training.resume=auto`
training continues from there, in the same W&B run (its id is stored beside the checkpoint). The
checkpoints are removed once the export is written; the export is the product.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from oyster_exp.core.redaction import strip_secrets
from oyster_exp.csa.records import PairRecord, TrainRecord
from oyster_exp.models.resolve import resolve_model_dir
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage

log = logging.getLogger(__name__)
MODEL_SUBDIR = "model"
CKPT_SUBDIR = "checkpoints"
# training knobs that change how a run is kept and shown, not what it learns: outside the cache key,
# so that switching them on for a rerun still finds the killed run's checkpoint
_UNKEYED_TRAINING = ("resume", "checkpoint_every_n_steps", "sample_generations", "sample_max_new_tokens",
                     "tokenization_cache")
_UNKEYED_TRAINER = ("enable_progress_bar",)    # a terminal shows a bar, a log file does not: same model


def examples_from(pairs: list[PairRecord]) -> list[Any]:
    from oyster_exp.training.tokenize import PreferenceExample

    return [PreferenceExample(id=p.id, prompt=p.prompt, chosen=p.chosen, rejected=p.rejected)
            for p in pairs if p.failure is None]


class TrainStage(Stage):
    name = "train"
    joins_ranks = True
    record_type = TrainRecord
    inputs = ("pairs",)
    config_keys = ("model", "objective", "training", "trainer", "peft", "seed")
    unkeyed_keys = ("paths.cache_dir",)      # where the tokenization cache lives, not what is learnt
    wandb_artifact = "model"
    wandb_artifact_name = "model"

    def config_slice(self, cfg: Any) -> dict[str, Any]:
        out = super().config_slice(cfg)
        out["training"] = {k: v for k, v in (out.get("training") or {}).items() if k not in _UNKEYED_TRAINING}
        out["trainer"] = {k: v for k, v in (out.get("trainer") or {}).items() if k not in _UNKEYED_TRAINER}
        return out

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        import lightning as L

        from oyster_exp.training.callbacks import SampleGenerationTable
        from oyster_exp.training.card import CardMeta
        from oyster_exp.training.data import PreferenceDataModule
        from oyster_exp.training.model_setup import LoraSettings
        from oyster_exp.training.module import PreferenceModule
        from oyster_exp.training.parallelism import sharded_state
        from oyster_exp.training.run import train_and_export

        cfg = ctx.cfg
        tcfg = cfg.training
        loss = instantiate(cfg.objective)
        objective = loss.name
        examples = examples_from(inputs["pairs"])
        if not examples:
            journal.append(TrainRecord(id="model", objective=objective, steps=0, model_dir="",
                                       failure="no preference pairs to train on (every pair was skipped)"))
            return
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        rng = random.Random(int(cfg.seed))
        rng.shuffle(examples)
        n_val = int(len(examples) * float(tcfg.val_fraction))
        val, train = examples[:n_val], examples[n_val:]
        model_dir = resolve_model_dir(cfg.model)
        module = PreferenceModule(
            model_path=str(model_dir), loss=loss, optimizer=instantiate(tcfg.optimizer),
            scheduler=instantiate(tcfg.scheduler) if tcfg.get("scheduler") is not None else None,
            gradient_checkpointing=bool(tcfg.gradient_checkpointing), dtype=str(cfg.model.dtype),
            lora=LoraSettings.from_config(cfg.get("peft")), sharded=sharded_state(cfg.trainer.get("strategy"))[0],
        )
        cache_dir = Path(str(cfg.paths.cache_dir)) / "tokenized" if tcfg.tokenization_cache else None
        datamodule = PreferenceDataModule(
            train=train, val=val, tokenizer=module.tokenizer, max_length=int(tcfg.max_length),
            batch_size=int(tcfg.batch_size), length_bucketing=bool(tcfg.length_bucketing),
            seed=int(cfg.seed), cache_dir=cache_dir,
        )
        callbacks: list[Any] = []
        if int(tcfg.sample_generations) > 0:
            callbacks.append(SampleGenerationTable(val or train, int(tcfg.sample_generations),
                                                   int(tcfg.sample_max_new_tokens)))
        # the card records what the model was trained from: this stage's config slice (its cache key)
        card = strip_secrets(OmegaConf.to_container(OmegaConf.create(self.config_slice(cfg)), resolve=True,
                                                    enum_to_str=True))
        pairs_entry = ctx.entries.get("pairs")
        card_meta = CardMeta.from_config(tcfg.get("card"), str(cfg.model.model_id),
                                         [f"oyster-exp-pairs-{pairs_entry.key[:12]}"] if pairs_entry else [])
        metrics, trainer = train_and_export(
            module, datamodule, cfg.trainer, export_dir=entry.dir / "files" / MODEL_SUBDIR,
            ckpt_dir=entry.dir / CKPT_SUBDIR, checkpoint_every_n_steps=int(tcfg.checkpoint_every_n_steps),
            resume=str(getattr(tcfg.resume, "value", tcfg.resume)), loggers=list(ctx.loggers), callbacks=callbacks,
            card_config=card, card_meta=card_meta, default_root_dir=str(ctx.run_dir / "lightning"))
        if not trainer.is_global_zero:
            # a re-launched rank (trainer=ddp, torchrun, Slurm) has done its share: rank 0 records the
            # result, runs the later stages and writes the manifest; leaving now keeps this process
            # from writing any of them
            logging.shutdown()
            os._exit(0)
        journal.append(TrainRecord(id="model", objective=objective, steps=int(trainer.global_step),
                                   model_dir=f"files/{MODEL_SUBDIR}", metrics=metrics))
        del module, trainer
