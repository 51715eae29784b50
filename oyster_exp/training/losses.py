"""ORPO and SFT losses as pure functions (parity-tested against TRL's ORPO trainer).

Log-probabilities are computed in float32 whatever the model's dtype; `log1mexp` is the stable
log(1 - exp(x)) that keeps the odds ratio finite when a completion's probability nears 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Per-sequence sum (or mean) of token log-probs where labels != -100 (next-token shifted)."""
    logits = logits[:, :-1, :].float()
    labels = labels[:, 1:]
    mask = labels != IGNORE
    safe = labels.masked_fill(~mask, 0)
    # gather before normalising: log_softmax(x)[y] = x[y] - logsumexp(x), without a vocab-sized copy
    picked = torch.gather(logits, 2, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    total = (picked * mask).sum(-1)
    if not average:
        return total
    return total / mask.sum(-1).clamp(min=1)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, switching formulas at -ln 2 for accuracy on both sides."""
    t = -0.6931471805599453
    return torch.where(x < t, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions where labels != -100 (the SFT loss)."""
    return F.cross_entropy(logits[:, :-1, :].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return token_nll(logits, labels)


def orpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_nll: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = NLL(chosen) - beta * mean(log sigmoid(log odds(chosen) - log odds(rejected))).

    `*_logps` are MEAN token log-probs of the completions; metric names follow TRL.
    """
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    ratio = F.logsigmoid(log_odds)
    loss = chosen_nll - beta * ratio.mean()
    rc, rr = beta * chosen_logps.detach(), beta * rejected_logps.detach()
    metrics = {
        "rewards/chosen": rc.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/accuracies": (rc > rr).float().mean(),
        "rewards/margins": (rc - rr).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
        "nll_loss": chosen_nll.detach(),
        "log_odds_ratio": ratio.detach().mean(),
        "log_odds_chosen": log_odds.detach().mean(),
    }
    return loss, metrics
