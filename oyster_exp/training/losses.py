"""ORPO and SFT losses as pure tensor functions, numerically matched to TRL's ORPO trainer.

Why pure functions: the Lightning module, the TRL parity test and any future trainer (DDP, FSDP,
PEFT) share one definition of the objective. Log-probabilities are always taken in float32, one
sequence at a time, so a bf16 model never materialises a float32 copy of the whole
(batch, length, vocab) logits tensor. `log1mexp` keeps the odds ratio finite as a completion's mean
probability approaches 1, the failure TRL saw as NaNs (trl#3237, trl#2564).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

IGNORE = -100
"""Label value that excludes a position from every loss (prompt and padding tokens)."""

NllSpan = Literal["response", "prompt_and_response"]
"""Which tokens ORPO's NLL term covers: the chosen response only (LLaMA-Factory) or the whole
prompt and response (TRL, the ORPO paper's code). The odds-ratio term always uses the response."""

_NEG_LN2 = -0.6931471805599453
LOG1MEXP_CAP = -1e-6


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log p(next label) in float32, with the mask of positions that count.

    Position t of the result scores `labels[:, t + 1]` under `logits[:, t]` (causal shift), so both
    outputs have shape (batch, length - 1); masked positions hold 0. Computed as
    `logit[label] - logsumexp(logits)` row by row, the gather form of log_softmax, which never builds
    a second vocab-sized tensor for the whole batch.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    target = labels[:, 1:]
    mask = target != IGNORE
    index = target.masked_fill(~mask, 0).unsqueeze(-1)
    rows = []
    for row_logits, row_index in zip(logits[:, :-1], index):
        row = row_logits.float()
        rows.append(row.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row, dim=-1))
    logps = torch.stack(rows) if rows else logits.new_zeros(target.shape, dtype=torch.float32)
    return torch.where(mask, logps, torch.zeros_like(logps)), mask


LM_HEAD_CHUNK = 256
"""Rows per LM-head chunk: 256 rows x a 49k vocab is 50 MB of float32 logits at a time."""


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the LM-head matmul runs in: the autocast dtype when autocast is on for this device (what
    `hidden @ weight.T` would use there), else the promotion of the two inputs' dtypes."""
    device = hidden.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _LinearTokenLogps(torch.autograd.Function):
    """`log_softmax(hidden @ weight.T)[row, target]` in row chunks, recomputing the logits in backward.

    Autograd would keep every chunk's (rows, vocab) logits and softmax alive until backward, the
    same memory as the full logits; here only the hidden rows, the weight and one logsumexp per row
    are saved, and backward rebuilds one chunk of logits at a time (one extra LM-head matmul, about
    a fifth of a forward for a 135M model with a 49k vocabulary).

    Precision: backward runs outside any autocast region, so the compute dtype is fixed in forward
    (`_compute_dtype`) and both passes cast to it explicitly with autocast off. The recomputed logits
    are then bit-identical to forward's, so `exp(logits - lse)` is exactly the softmax the forward
    scored; recomputing them in another dtype (fp32 weights under bf16 autocast) made that softmax
    disagree with the saved log-sum-exp, which on confident tokens, where the true gradient is tiny,
    is the whole gradient. Log-sum-exp, softmax and the weight gradient's sum over chunks stay in
    float32; the two gradient matmuls run in the compute dtype, as autograd through autocast does.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                chunk: int) -> torch.Tensor:
        compute = _compute_dtype(hidden, weight)
        acc = torch.promote_types(compute, torch.float32)  # float32, or float64 for float64 inputs
        out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        lse = torch.empty_like(out)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute)
            for start in range(0, hidden.shape[0], chunk):
                stop = start + chunk
                logits = (hidden[start:stop].to(compute) @ w.T).to(acc)
                lse[start:stop] = torch.logsumexp(logits, dim=-1)
                out[start:stop] = logits.gather(-1, targets[start:stop, None]).squeeze(-1) - lse[start:stop]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.compute = chunk, compute
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        compute, acc = ctx.compute, lse.dtype
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=acc) if need_weight else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute)
            for start in range(0, hidden.shape[0], ctx.chunk):
                stop = start + ctx.chunk
                h, g = hidden[start:stop].to(compute), grad_out[start:stop].to(acc)
                # d logp[target] / d logits = onehot(target) - softmax(logits), from forward's own logits;
                # in place on the one (rows, vocab) buffer: each out-of-place step would be another one
                grad_logits = (h @ w.T).to(acc).sub_(lse[start:stop, None]).exp_().mul_(-g[:, None])
                grad_logits.scatter_add_(-1, targets[start:stop, None], g[:, None])
                grad_logits = grad_logits.to(compute)
                if grad_hidden is not None and grad_hidden.dtype == compute:
                    torch.mm(grad_logits, w, out=grad_hidden[start:stop])
                elif grad_hidden is not None:
                    grad_hidden[start:stop] = grad_logits @ w
                if grad_weight is not None:
                    if compute == acc:  # accumulate in place: no (vocab, hidden) temporary per chunk
                        grad_weight.addmm_(grad_logits.T, h)
                    else:
                        grad_weight += (grad_logits.T @ h).to(acc)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       chunk: int = LM_HEAD_CHUNK) -> torch.Tensor:
    """log p(target) for flat rows `hidden` (n, hidden) under an LM head `weight` (vocab, hidden).

    Equals `log_softmax(hidden @ weight.T).gather(targets)` in float32 (float64 for float64 inputs),
    with gradients for `hidden` and `weight`, but never holds more than `chunk` rows of logits. The
    matmul runs in the autocast dtype under autocast (any weight dtype), else in the inputs' dtype. Pass
    only the rows that are scored (no prompt rows the loss ignores, no padding): the LM head is the
    largest single matmul of a small model, so rows not computed are time saved as well.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1] or weight.shape[-1] != hidden.shape[-1]:
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and targets "
                         f"{tuple(targets.shape)} disagree")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    return _LinearTokenLogps.apply(hidden, weight, targets, int(chunk))


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, average: bool) -> torch.Tensor:
    """Per-sequence sum (`average=False`) or mean of token log-probs where `labels != -100`.

    ORPO's odds use the mean (a length-normalised probability); a sequence with no scored token
    gets 0 rather than NaN.
    """
    logps, mask = token_logps(logits, labels)
    total = logps.sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, with finite values and finite gradients everywhere.

    Near 0, `1 - exp(x)` cancels, so use `log(-expm1(x))`; far below 0, `log1p(-exp(x))` is exact.
    The switch at -ln 2 is Maechler's (2012), as in TRL. Two guards TRL lacks, both for memorised
    completions (mean token log-prob near 0): each branch only sees inputs from its own side, since
    a plain `where` back-propagates 0 * inf = NaN from the unused branch once exp(x) rounds to 1
    (x > -6e-8); and x is capped at `LOG1MEXP_CAP` = -1e-6, about the float32 resolution of a token
    log-prob (`logit - logsumexp` of logits of magnitude ~10), so the odds of two near-certain
    completions cannot produce a 1/|x| gradient that overflows. Below the cap, values equal TRL's.
    """
    x = x.clamp(max=LOG1MEXP_CAP)
    far = x < _NEG_LN2
    threshold = torch.full_like(x, _NEG_LN2)
    return torch.where(far, torch.log1p(-torch.exp(torch.where(far, x, threshold))),
                       torch.log(-torch.expm1(torch.where(far, threshold, x))))


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood over all scored positions of the batch.

    Token-weighted like `CrossEntropyLoss(ignore_index=-100)`, so long sequences weigh more; 0 (not
    NaN) when nothing is scored.
    """
    logps, mask = token_logps(logits, labels)
    return -logps.sum() / mask.sum().clamp(min=1)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The SFT objective: mean token NLL of the labelled (response) tokens."""
    return token_nll(logits, labels)


def full_sequence_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Labels covering prompt and response: every attended token, -100 on padding (TRL's NLL span)."""
    return input_ids.masked_fill(attention_mask == 0, IGNORE)


def orpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, chosen_nll: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO (Hong et al. 2024, Eqs. 4 and 7): `chosen_nll - beta * mean(log sigmoid(log odds ratio))`.

    `chosen_logps`/`rejected_logps` are MEAN token log-probs of each completion, shape (batch,);
    `log odds(p) = log p - log(1 - p)` is computed from log p with `log1mexp`, never from p. The metric
    names and definitions are TRL's (`get_batch_loss_metrics`), so dashboards compare directly;
    metrics are detached scalars.
    """
    chosen_logps, rejected_logps = chosen_logps.float(), rejected_logps.float()
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))
    log_sigmoid = F.logsigmoid(log_odds)
    loss = chosen_nll - beta * log_sigmoid.mean()
    chosen_rewards, rejected_rewards = beta * chosen_logps.detach(), beta * rejected_logps.detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
        "nll_loss": chosen_nll.detach(),
        "log_odds_ratio": log_sigmoid.detach().mean(),
        "log_odds_chosen": log_odds.detach().mean(),
    }
    return loss, metrics
