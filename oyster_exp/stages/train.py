"""train: ORPO (or SFT) on the preference pairs with a real Lightning Trainer; export the model."""
from __future__ import annotations

import logging
import random
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from oyster_exp.artifacts import CacheEntry, Journal
from oyster_exp.models.resolve import resolve_model_dir
from oyster_exp.pipeline import RunContext, Stage
from oyster_exp.records import PairRecord, TrainRecord
from oyster_exp.secrets import strip_secrets

log = logging.getLogger(__name__)
MODEL_SUBDIR = "model"


def examples_from(pairs: list[PairRecord]) -> list[Any]:
    from oyster_exp.training.data import PreferenceExample

    return [PreferenceExample(id=p.id, prompt=p.prompt, chosen=p.chosen, rejected=p.rejected)
            for p in pairs if p.failure is None]


class TrainStage(Stage):
    name = "train"
    record_type = TrainRecord
    inputs = ("pairs",)
    config_keys = ("model", "objective", "training", "trainer", "seed")

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        import lightning as L

        from oyster_exp.training.data import PreferenceDataModule
        from oyster_exp.training.module import PreferenceModule
        from oyster_exp.training.run import fit_preference_model

        cfg = ctx.cfg
        objective = str(getattr(cfg.objective.name, "value", cfg.objective.name))
        examples = examples_from(inputs["pairs"])
        if not examples:
            journal.append(TrainRecord(id="model", objective=objective, steps=0, model_dir="",
                                       failure="no preference pairs to train on (every pair was skipped)"))
            return
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        rng = random.Random(int(cfg.seed))
        rng.shuffle(examples)
        n_val = int(len(examples) * float(cfg.training.val_fraction))
        val, train = examples[:n_val], examples[n_val:]
        model_dir = resolve_model_dir(cfg.model)
        module = PreferenceModule(
            model_path=str(model_dir), objective=objective, beta=float(cfg.objective.beta),
            nll_span=str(getattr(cfg.objective.nll_span, "value", cfg.objective.nll_span)),
            optimizer=instantiate(cfg.training.optimizer),
        )
        datamodule = PreferenceDataModule(
            train=train, val=val, tokenizer=module.tokenizer, max_length=int(cfg.training.max_length),
            batch_size=int(cfg.training.batch_size), length_bucketing=bool(cfg.training.length_bucketing),
            seed=int(cfg.seed),
        )
        loggers = list(ctx.loggers) or False
        trainer = instantiate(cfg.trainer, logger=loggers, default_root_dir=str(ctx.run_dir / "lightning"))
        export_dir = entry.dir / "files" / MODEL_SUBDIR
        card = strip_secrets(OmegaConf.to_container(cfg, resolve=True))
        metrics = fit_preference_model(module, datamodule, trainer, export_dir, card_config=card)
        journal.append(TrainRecord(id="model", objective=objective, steps=int(trainer.global_step),
                                   model_dir=f"files/{MODEL_SUBDIR}", metrics=metrics))
        del module, trainer
