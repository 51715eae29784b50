"""The LightningModule: ORPO or SFT on preference pairs, with TRL-compatible metric names.

Chosen and rejected share one call into `forward.scored_token_logps`: unpadded sequences on CPU,
one padded pass on accelerators, and only scored tokens through a chunked LM head, never the full
(batch, length, vocab) logits. Metrics are logged as `train/<name>` per step and `val/<name>` per
epoch, so a W&B dashboard can put our runs next to TRL's (`rewards/margins`, `log_odds_ratio`, ...).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import lightning as L
import torch

from oyster_exp.training.forward import output_head, scored_token_logps, stack_padded
from oyster_exp.training.losses import IGNORE, orpo_loss, sequence_logps, sft_loss, token_nll
from oyster_exp.training.model_setup import LoraSettings, export_pretrained, load_causal_lm, model_card

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
OBJECTIVES = ("orpo", "sft")
NLL_SPANS = ("response", "prompt_and_response")
DEFAULT_LR = 5e-5
IGNORE_PAD_ID = 0
"""Token id for padding added when chosen and rejected are stacked; masked out, so any id works."""


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    """Accept plain strings and the schema's str enums alike."""
    value = value.value if isinstance(value, Enum) else str(value)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _wants_total_steps(factory: Callable[..., Any]) -> bool:
    """Does a (partial) scheduler factory take `total_steps` (ours) rather than the optimizer alone?"""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "total_steps" in params


class PreferenceModule(L.LightningModule):
    """A causal LM trained with ORPO (default) or SFT.

    `optimizer` is a factory taking the parameters (a `functools.partial`, e.g. Hydra
    `_partial_: true`); the default is AdamW at lr 5e-5. `scheduler` is a factory taking the optimizer,
    stepped once per optimisation step. `nll_span` picks ORPO's NLL tokens: `response` (default) or
    `prompt_and_response` (TRL). Dropout is disabled by default, as TRL does, because the odds ratio
    compares two noisy forward passes otherwise.
    """

    def __init__(self, model_path: str, objective: str = "orpo", beta: float = 0.1, nll_span: str = "response",
                 optimizer: OptimizerFactory | None = None, scheduler: SchedulerFactory | None = None,
                 gradient_checkpointing: bool = False, disable_dropout: bool = True,
                 lora: LoraSettings | None = None, dtype: str = "float32"):
        super().__init__()
        self.objective = _choice(objective, OBJECTIVES, "objective")
        self.nll_span = _choice(nll_span, NLL_SPANS, "nll_span")
        self.beta = float(beta)
        self.save_hyperparameters({"model_path": str(model_path), "objective": self.objective, "beta": self.beta,
                                   "nll_span": self.nll_span, "gradient_checkpointing": gradient_checkpointing,
                                   "disable_dropout": disable_dropout, "dtype": str(dtype),
                                   "lora": None if lora is None else vars(lora)},
                                  logger=False)  # the loggers get the whole resolved config instead; these
        # flat keys (objective, beta) would overwrite the config's groups of the same name in W&B
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model, self.tokenizer = load_causal_lm(model_path, dtype=dtype, lora=lora,
                                                    gradient_checkpointing=gradient_checkpointing,
                                                    disable_dropout=disable_dropout)

    def _logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    forward_layout: str = "auto"
    """Decoder layout for the scored-token path: `unpadded` (each sequence at its own length, the CPU
    choice), `padded` (one right-padded batch, the accelerator choice) or `auto` (by device)."""

    share_prompt_forward: bool = True
    """Unpadded layout: run the prompt chosen and rejected share once (see `forward`); False runs each
    sequence whole, the reference the shared path is tested against."""

    def _output_head(self) -> torch.nn.Linear | None:
        """The LM head for the chunked path, checked once per model (None: use full logits)."""
        cached = getattr(self, "_head_cache", None)  # a tuple, so nn.Module does not register the head twice
        if cached is None or cached[0] is not self.model:
            self._head_cache = cached = (self.model, output_head(self.model))
        return cached[1]

    def compute(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and detached metrics for one collated batch (see `data.collate`).

        Chosen and rejected go through the decoder together (`forward.scored_token_logps`) and only
        the scored positions through the LM head; models whose logits are not a plain linear head
        of the last hidden state take `compute_from_logits`, the same maths on full logits.
        """
        head = self._output_head()
        if head is None:
            return self.compute_from_logits(batch)
        full = self.nll_span == "prompt_and_response"
        chosen_scored = batch["chosen_labels_full" if full else "chosen_labels"]
        if self.objective == "sft":
            tokens = scored_token_logps(self.model, head, batch["chosen_input_ids"], batch["chosen_attention_mask"],
                                        chosen_scored, batch["chosen_labels"], self.forward_layout)
            loss = tokens.nll(tokens.num_sequences, response_only=False)
            return loss, {"nll_loss": loss.detach(), "logps/chosen": tokens.response_mean().detach().mean()}
        n = batch["chosen_input_ids"].size(0)
        tokens = scored_token_logps(
            self.model, head, stack_padded([batch["chosen_input_ids"], batch["rejected_input_ids"]], IGNORE_PAD_ID),
            stack_padded([batch["chosen_attention_mask"], batch["rejected_attention_mask"]], 0),
            stack_padded([chosen_scored, batch["rejected_labels"]], IGNORE),
            stack_padded([batch["chosen_labels"], batch["rejected_labels"]], IGNORE), layout=self.forward_layout,
            pair_offset=n if self.share_prompt_forward else None)
        logps = tokens.response_mean()
        return orpo_loss(logps[:n], logps[n:], tokens.nll(n, response_only=False), self.beta)

    def compute_from_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`compute` on the model's full logits: the reference path, and the fallback for heads
        `forward.output_head` cannot split off (soft-capping, scaled or PEFT-wrapped heads)."""
        full = self.nll_span == "prompt_and_response"
        if self.objective == "sft":
            width = int(batch["chosen_attention_mask"].sum(-1).max())  # drop columns only rejected needs
            logits = self._logits(batch["chosen_input_ids"][:, :width], batch["chosen_attention_mask"][:, :width])
            labels = batch["chosen_labels_full" if full else "chosen_labels"][:, :width]
            loss = sft_loss(logits, labels)
            logps = sequence_logps(logits.detach(), batch["chosen_labels"][:, :width], average=True)
            return loss, {"nll_loss": loss.detach(), "logps/chosen": logps.mean()}
        n = batch["chosen_input_ids"].size(0)
        def cat(field: str, value: int) -> torch.Tensor:
            return stack_padded([batch[f"chosen_{field}"], batch[f"rejected_{field}"]], value)

        logits = self._logits(cat("input_ids", IGNORE_PAD_ID), cat("attention_mask", 0))
        logps = sequence_logps(logits, cat("labels", IGNORE), average=True)
        chosen_labels = batch["chosen_labels_full" if full else "chosen_labels"]
        chosen_nll = token_nll(logits[:n, :chosen_labels.shape[1]], chosen_labels)
        return orpo_loss(logps[:n], logps[n:], chosen_nll, self.beta)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        loss, metrics = self.compute(batch)
        size = batch["chosen_input_ids"].size(0)
        train = stage == "train"
        kwargs = {"on_step": train, "on_epoch": not train, "batch_size": size, "sync_dist": not train}
        self.log(f"{stage}/loss", loss.detach(), prog_bar=True, **kwargs)
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, **kwargs)
        if train:
            sides = ("chosen",) if self.objective == "sft" else ("chosen", "rejected")
            tokens = sum(int(batch[f"{s}_attention_mask"].sum()) for s in sides)
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
            return optimizer
        if _wants_total_steps(self.scheduler_factory):
            scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        else:
            scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export(self, out_dir: Path, card_config: dict[str, Any] | None = None,
               metrics: dict[str, float] | None = None) -> Path:
        """Write a `from_pretrained`-loadable directory: weights (LoRA merged), tokenizer, a README card.

        The card records the objective, the final metrics and `card_config` (e.g. the resolved Hydra
        config, secrets already stripped) as YAML, so the model carries its own provenance. A LoRA
        model is merged in place, so `self.model` is the plain merged model afterwards.
        """
        summary = (f"Trained with `{self.objective}` (beta={self.beta}, nll_span={self.nll_span}) "
                   f"from `{self.hparams['model_path']}`"
                   + (f", LoRA r={self.hparams['lora']['r']} merged." if self.hparams.get("lora") else "."))
        card = model_card(summary, self.objective, metrics, card_config)
        self.model = export_pretrained(self.model, self.tokenizer, Path(out_dir), card,
                                       base_path=self.hparams["model_path"])
        return Path(out_dir)
