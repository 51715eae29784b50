"""Training objectives as components: ORPO and SFT behind one base class (`conf/objective/*.yaml`).

Why objects: the LightningModule asks the objective which sides of a pair it scores and hands it the
scored quantities; it never branches on an objective's name, so a new objective is one class here and
one YAML file. The maths stays in `training.losses` (pure tensor functions that cite their equations,
TRL-parity tested); these classes only choose and combine them. This module imports no torch at the
top, because the CLI imports it (to register the config schemas) before it knows whether it trains.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

from oyster_exp.config.components import ge, register_component

if TYPE_CHECKING:
    import torch


class NllSpan(str, Enum):
    """Which tokens the NLL term covers. The odds-ratio term always scores the response only."""

    response = "response"                        # the chosen response (LLaMA-Factory's choice)
    prompt_and_response = "prompt_and_response"  # prompt and response (TRL, the ORPO paper's code)


@dataclass(frozen=True)
class TrainingLoss:
    """A training objective over preference pairs: which sides it scores, and its loss and metrics.

    The module computes, for every side in `sides`, the mean response-token log-prob of each sequence,
    plus the token-weighted NLL of the chosen sequences over the `nll_span` tokens, then calls the
    objective with them. Metrics are detached scalars named as TRL names them.
    """

    name: str = "loss"                           # display name: reports, the model card, the train record
    nll_span: NllSpan = NllSpan.response

    sides: ClassVar[tuple[str, ...]] = ("chosen", "rejected")
    """The sequences of a pair this objective needs forwarded ("rejected" costs a second sequence)."""

    @property
    def uses_rejected(self) -> bool:
        return "rejected" in self.sides

    @property
    def full_sequence_nll(self) -> bool:
        return NllSpan(self.nll_span) is NllSpan.prompt_and_response

    def __call__(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor | None,
                 chosen_nll: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def describe(self) -> str:
        """`orpo (beta=0.1, nll_span=response)`: the name and every knob, for cards and logs."""
        knobs = ", ".join(f"{f.name}={getattr(getattr(self, f.name), 'value', getattr(self, f.name))}"
                          for f in dataclasses.fields(self) if f.name not in ("name", "_target_"))
        return f"{self.name} ({knobs})"


@dataclass(frozen=True)
class ORPOLoss(TrainingLoss):
    """ORPO (Hong et al. 2024, Eqs. 4 and 7): chosen NLL - beta * mean log sigmoid(log odds ratio).

    `beta` is the paper's lambda (TRL's default 0.1); see `losses.orpo_loss` for the numerics.
    """

    name: str = "orpo"
    beta: float = field(default=0.1, metadata=ge(0.0))

    def __call__(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor | None,
                 chosen_nll: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from oyster_exp.training.losses import orpo_loss

        if rejected_logps is None:
            raise ValueError("ORPO needs the rejected completions' log-probs")
        return orpo_loss(chosen_logps, rejected_logps, chosen_nll, float(self.beta))


@dataclass(frozen=True)
class SFTLoss(TrainingLoss):
    """Supervised fine-tuning on the chosen completions only: the NLL term alone (the paper's baseline).

    Only the chosen side is forwarded, so an SFT step costs about half an ORPO step.
    """

    name: str = "sft"
    sides: ClassVar[tuple[str, ...]] = ("chosen",)

    def __call__(self, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor | None,
                 chosen_nll: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return chosen_nll, {"nll_loss": chosen_nll.detach(), "logps/chosen": chosen_logps.detach().mean()}


register_component("objective", "orpo", ORPOLoss)
register_component("objective", "sft", SFTLoss)
