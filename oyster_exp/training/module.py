"""The LightningModule: ORPO or SFT on preference pairs, with TRL-compatible metric names.

Chosen and rejected share one call into `forward.scored_token_logps`: one packed, padding-free row on
CPU, one padded pass on accelerators, and only scored tokens through a chunked LM head, never the full
(batch, length, vocab) logits. Metrics are logged as `train/<name>` per step and `val/<name>` per
epoch, so a W&B dashboard can put our runs next to TRL's (`rewards/margins`, `log_odds_ratio`, ...).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from oyster_exp.training.card import CardMeta, model_card
from oyster_exp.training.forward import output_head, packs, scored_token_logps, stack_padded
from oyster_exp.training.losses import IGNORE, sequence_logps, token_nll
from oyster_exp.training.model_setup import LoraSettings, export_pretrained, load_causal_lm, rebuilt_from_state
from oyster_exp.training.objectives import ORPOLoss, TrainingLoss

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
DEFAULT_LR = 5e-5
LR_METRIC = "train/lr"
IGNORE_PAD_ID = 0
"""Token id for padding added when chosen and rejected are stacked; masked out, so any id works."""


def _wants_total_steps(factory: Callable[..., Any]) -> bool:
    """Does a (partial) scheduler factory take `total_steps` (ours) rather than the optimizer alone?"""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "total_steps" in params


class PreferenceModule(L.LightningModule):
    """A causal LM trained with a `TrainingLoss` (default ORPO at beta 0.1; `objectives.SFTLoss` for SFT).

    The loss object says which sides of a pair are forwarded and turns the scored log-probs into the
    loss and its metrics; this module never looks at which objective it holds. `optimizer` is a
    factory taking the parameters (a `functools.partial`, e.g. Hydra `_partial_: true`); the default
    is AdamW at lr 5e-5. `scheduler` is a factory taking the optimizer, stepped once per optimisation
    step. Dropout is disabled by default, as TRL does, because the odds ratio compares two noisy
    forward passes otherwise. `sharded`: the trainer's strategy shards parameters (FSDP, ZeRO-3), which
    changes how a QLoRA base is stored (`model_setup.quantization_kwargs`).
    """

    def __init__(self, model_path: str, loss: TrainingLoss | None = None,
                 optimizer: OptimizerFactory | None = None, scheduler: SchedulerFactory | None = None,
                 gradient_checkpointing: bool = False, disable_dropout: bool = True,
                 lora: LoraSettings | None = None, dtype: str = "float32", sharded: bool = False):
        super().__init__()
        self.loss = loss if loss is not None else ORPOLoss()
        self.save_hyperparameters({"model_path": str(model_path), "objective": self.loss.describe(),
                                   "gradient_checkpointing": gradient_checkpointing,
                                   "disable_dropout": disable_dropout, "dtype": str(dtype),
                                   "lora": None if lora is None else vars(lora)},
                                  logger=False)  # the loggers get the whole resolved config instead; these
        # flat keys would overwrite the config's groups of the same name in W&B
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model, self.tokenizer = load_causal_lm(model_path, dtype=dtype, lora=lora,
                                                    gradient_checkpointing=gradient_checkpointing,
                                                    disable_dropout=disable_dropout, sharded=sharded)

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    forward_layout: str = "auto"
    """Decoder layout for the scored-token path: `packed` (all sequences in one padding-free row, the CPU
    choice where `forward.packs` holds), `unpadded` (one call per sequence, the CPU fallback), `padded`
    (one right-padded batch, the accelerator choice) or `auto` (by device and model)."""

    share_prompt_forward: bool = True
    """Packed and unpadded layouts: run the prompt chosen and rejected share once (see `forward`); False
    runs each sequence whole, the reference the shared path is tested against."""

    def scoring_head(self, recheck: bool = False) -> torch.nn.Linear | None:
        """The LM head for the chunked path, checked once per model (None: use full logits). `recheck`
        forgets the last check, e.g. after a forward hook changed what the model does with its logits."""
        return self._checked(recheck)[1]

    def _checked(self, recheck: bool = False) -> tuple[Any, torch.nn.Linear | None, bool]:
        """(model, `forward.output_head`, `forward.packs`), checked once per model object."""
        cached = None if recheck else getattr(self, "_head_cache", None)  # a tuple: nn.Module does not register it
        if cached is None or cached[0] is not self.model:
            head = output_head(self.model)
            self._head_cache = cached = (self.model, head, head is not None and packs(self.model))
        return cached

    def _sides(self, batch: dict[str, Any], field: str, pad: int) -> torch.Tensor:
        """`field` of every side the loss scores, stacked chosen first (padded to one width)."""
        parts = [batch[f"{side}_{field}"] for side in self.loss.sides]
        return parts[0] if len(parts) == 1 else stack_padded(parts, pad)

    def _split(self, logps: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return logps[:n], (logps[n:] if self.loss.uses_rejected else None)

    def compute(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and detached metrics for one collated batch (see `data.collate`).

        The sides the loss needs go through the decoder together (`forward.scored_token_logps`) and
        only the scored positions through the LM head; models whose logits are not a plain linear head
        of the last hidden state take `compute_from_logits`, the same maths on full logits.
        """
        head = self.scoring_head()
        if head is None:
            return self.compute_from_logits(batch)
        n = batch["chosen_input_ids"].size(0)
        chosen_scored = batch["chosen_labels_full" if self.loss.full_sequence_nll else "chosen_labels"]
        scored = [chosen_scored] + [batch[f"{s}_labels"] for s in self.loss.sides[1:]]
        tokens = scored_token_logps(
            self.model, head, self._sides(batch, "input_ids", IGNORE_PAD_ID), self._sides(batch, "attention_mask", 0),
            scored[0] if len(scored) == 1 else stack_padded(scored, IGNORE), self._sides(batch, "labels", IGNORE),
            layout=self.forward_layout,
            pair_offset=n if self.share_prompt_forward and self.loss.uses_rejected else None,
            packable=self._checked()[2])
        chosen, rejected = self._split(tokens.response_mean(), n)
        return self.loss(chosen, rejected, tokens.nll(n, response_only=False))

    def compute_from_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`compute` on the model's full logits: the reference path, and the fallback for heads
        `forward.output_head` cannot split off (soft-capping, scaled or PEFT-wrapped heads)."""
        n = batch["chosen_input_ids"].size(0)
        mask = self._sides(batch, "attention_mask", 0)
        width = int(mask.sum(-1).max())  # drop padding columns no scored side needs
        logits = self._logits(self._sides(batch, "input_ids", IGNORE_PAD_ID)[:, :width], mask[:, :width])
        logps = sequence_logps(logits, self._sides(batch, "labels", IGNORE)[:, :width], average=True)
        chosen_labels = batch["chosen_labels_full" if self.loss.full_sequence_nll else "chosen_labels"][:, :width]
        chosen_nll = token_nll(logits[:n, :chosen_labels.shape[1]], chosen_labels)
        chosen, rejected = self._split(logps if self.loss.uses_rejected else logps.detach(), n)
        return self.loss(chosen, rejected, chosen_nll)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss, metrics = self.compute(batch)
        size = batch["chosen_input_ids"].size(0)
        train = stage == "train"
        kwargs = {"on_step": train, "on_epoch": not train, "batch_size": size, "sync_dist": not train}
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, **kwargs)
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, **kwargs)
        if train:
            tokens = sum(int(batch[f"{s}_attention_mask"].sum()) for s in self.loss.sides)
            self.log("train/tokens", float(tokens), on_step=True, on_epoch=False, batch_size=size)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        """Optimizer over the trainable parameters (LoRA: the adapters only) and a per-step schedule.

        A scheduler factory that takes `total_steps` (e.g. `schedules.warmup_decay`) gets the
        Trainer's estimate of optimisation steps, which already accounts for accumulation,
        devices and `max_steps`.
        """
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=DEFAULT_LR))
        optimizer = factory([p for p in self.model.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            # a constant schedule, so that Lightning's LearningRateMonitor logs `train/lr` in every run
            scheduler: Any = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)
        elif _wants_total_steps(self.scheduler_factory):
            scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        else:
            scheduler = self.scheduler_factory(optimizer)
        # the scheduler's name is the metric LearningRateMonitor logs its learning rate under
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": LR_METRIC}}

    def export(self, out_dir: Path, card_config: dict[str, Any] | None = None,
               metrics: dict[str, float] | None = None, card_meta: CardMeta | None = None,
               state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a `from_pretrained`-loadable directory: weights (LoRA merged), tokenizer, a README card.

        The card records the objective, the final metrics and `card_config` (e.g. the resolved Hydra
        config, secrets already stripped) as YAML, with `card_meta` (base model, datasets, licence) as
        the Hub's front matter, so the model carries its own provenance. A LoRA
        model is merged in place, so `self.model` is the plain merged model afterwards.

        `state` is this module's full state dict gathered from the ranks of a sharded run
        (`parallelism.gathered_state_dict`): then the weights are saved from a copy rebuilt from it,
        because the sharded `self.model` holds only this rank's slice, and `self.model` stays as it is.
        """
        summary = (f"Trained with `{self.loss.describe()}` from `{self.hparams['model_path']}`"
                   + (f", LoRA r={self.hparams['lora']['r']} merged." if self.hparams.get("lora") else "."))
        card = model_card(summary, self.loss.name, metrics, card_config, card_meta)
        if state is not None:
            lora = self.hparams.get("lora")
            weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            rebuilt = rebuilt_from_state(self.hparams["model_path"], weights, dtype=self.hparams["dtype"],
                                         lora=None if lora is None else LoraSettings(**lora))
            export_pretrained(rebuilt, self.tokenizer, Path(out_dir), card)
            return Path(out_dir)
        self.model = export_pretrained(self.model, self.tokenizer, Path(out_dir), card,
                                       base_path=self.hparams["model_path"])
        return Path(out_dir)
