"""Numerics of the training path: the chunked LM head under autocast, fp32 master weights, QLoRA storage dtype."""
from __future__ import annotations

import pytest
import torch

from oyster_exp.training.losses import linear_token_logps

CONFIDENT = 16
"""Rows of the LM-head case whose target the head predicts with p ~ 1 (gradient ~ 1 - p, nearly 0)."""


def _head_case(weight_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden rows (fp32, as a decoder under autocast hands them over), an LM head, targets and an upstream
    gradient; the first `CONFIDENT` rows point straight at their target's weight row."""
    g = torch.Generator().manual_seed(7)
    n, h, vocab = 64, 32, 500
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(vocab, h, generator=g) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=g)
    weight[targets[:CONFIDENT]] += 12 * hidden[:CONFIDENT] / hidden[:CONFIDENT].norm(dim=-1, keepdim=True)
    return hidden, weight.to(weight_dtype), targets, torch.randn(n, generator=g)


def _grads(fn, hidden: torch.Tensor, weight: torch.Tensor, upstream: torch.Tensor, autocast: bool):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(h, w)
    (out * upstream).sum().backward()
    return out.detach(), h.grad, w.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_chunked_lm_head_matches_autograd_under_bf16_autocast(weight_dtype: torch.dtype) -> None:
    """The reference is autograd through the same computation under the same autocast: a bf16 matmul,
    float32 log-softmax. Tolerances: the hidden gradient is the same bf16 matmul of the same operands, so
    it must agree to 1e-3 overall and on the confident rows alone (before the fix: 9% and 70x); the
    weight gradient is summed over chunks in float32 where the reference rounds one bf16 matmul, so 1e-2
    (bf16 resolution is 4e-3)."""
    hidden, weight, targets, upstream = _head_case(weight_dtype)
    probs = torch.exp(linear_token_logps(hidden, weight.float(), targets))
    assert bool((probs[:CONFIDENT] > 0.99).all())                      # the confident rows really are

    def plain(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = (h @ w.T).float()
        return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)

    ref = _grads(plain, hidden, weight, upstream, autocast=True)
    for chunk in (7, 64):
        out, g_hidden, g_weight = _grads(lambda h, w, c=chunk: linear_token_logps(h, w, targets, c), hidden, weight,
                                         upstream, autocast=True)
        assert out.dtype == torch.float32 and g_hidden.dtype == torch.float32 and g_weight.dtype == weight_dtype
        assert torch.allclose(out, ref[0], atol=1e-5)
        assert _rel(g_hidden, ref[1]) < 1e-3
        assert _rel(g_hidden[:CONFIDENT], ref[1][:CONFIDENT]) < 1e-3
        assert _rel(g_weight, ref[2]) < 1e-2


def test_chunked_lm_head_without_autocast_is_exact_in_float32() -> None:
    hidden, weight, targets, upstream = _head_case(torch.float32)
    ref = _grads(lambda h, w: torch.log_softmax(h @ w.T, -1).gather(-1, targets[:, None]).squeeze(-1),
                 hidden, weight, upstream, autocast=False)
    out = _grads(lambda h, w: linear_token_logps(h, w, targets, 5), hidden, weight, upstream, autocast=False)
    for mine, theirs in zip(out, ref):                                 # log-probs, hidden and weight gradients
        assert _rel(mine, theirs) < 1e-5
