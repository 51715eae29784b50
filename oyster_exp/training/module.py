"""The LightningModule: ORPO or SFT on preference pairs, TRL-compatible metric names."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from oyster_exp.training.losses import orpo_loss, sequence_logps, token_nll


class PreferenceModule(L.LightningModule):
    def __init__(self, model_path: str, objective: str = "orpo", beta: float = 0.1, nll_span: str = "response",
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 scheduler: Callable[..., Any] | None = None, gradient_checkpointing: bool = False):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if objective not in ("orpo", "sft"):
            raise ValueError(f"objective must be 'orpo' or 'sft', got {objective!r}")
        if nll_span not in ("response", "prompt_and_response"):
            raise ValueError(f"nll_span must be 'response' or 'prompt_and_response', got {nll_span!r}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.objective, self.beta, self.nll_span = objective, beta, nll_span
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.model.train()  # from_pretrained returns eval mode; Lightning leaves modes as they are

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def compute(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = batch["chosen_input_ids"].size(0)
        if self.objective == "sft":
            logits = self._forward(batch["chosen_input_ids"], batch["chosen_attention_mask"])
            labels = batch["chosen_labels_full"] if self.nll_span == "prompt_and_response" else batch["chosen_labels"]
            loss = token_nll(logits, labels)
            return loss, {"nll_loss": loss.detach()}
        ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
        mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
        labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])
        logits = self._forward(ids, mask)
        logps = sequence_logps(logits, labels, average=True)
        nll_labels = batch["chosen_labels_full"] if self.nll_span == "prompt_and_response" else batch["chosen_labels"]
        chosen_nll = token_nll(logits[:n], nll_labels)
        return orpo_loss(logps[:n], logps[n:], chosen_nll, self.beta)

    def _step(self, batch: dict[str, Any], prefix: str) -> torch.Tensor:
        loss, metrics = self.compute(batch)
        bs = batch["chosen_input_ids"].size(0)
        on_step = prefix == "train"
        self.log(f"{prefix}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True, batch_size=bs)
        for k, v in metrics.items():
            self.log(f"{prefix}/{k}", v, on_step=on_step, on_epoch=not on_step, batch_size=bs)
        if on_step:
            tokens = int(batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum())
            self.log("train/tokens", float(tokens), on_step=True, reduce_fx="sum", batch_size=bs)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=5e-5))
        opt = factory(self.model.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    def export(self, out_dir: Path, card_config: dict[str, Any] | None = None,
               metrics: dict[str, float] | None = None) -> Path:
        """save_pretrained for model and tokenizer, plus a model card with the config and metrics."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        card = ["# oyster-exp model", "", f"Objective: `{self.objective}` (beta={self.beta}, nll_span={self.nll_span}).",
                "", "## Final metrics", "", "```yaml", yaml.safe_dump(metrics or {}, sort_keys=True).strip(), "```",
                "", "## Config", "", "```yaml", yaml.safe_dump(card_config or {}, sort_keys=False).strip(), "```", ""]
        (out_dir / "README.md").write_text("\n".join(card))
        return out_dir
