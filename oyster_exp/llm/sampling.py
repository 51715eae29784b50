"""Token sampling shared by the local backend's free-text generation and its constrained decoder.

Both draw a token the same way (greedy at temperature 0, else nucleus sampling) from a generator seeded
per request, so a reply depends on its request only: not on its batch, nor on which decoder produced it.
"""
from __future__ import annotations

import hashlib

import torch

from oyster_exp.llm.base import ChatRequest


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy when temperature is 0, else nucleus sampling from `gen`."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sorted_p, 0) - sorted_p) < top_p   # the top token is always kept
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def sampling_seed(req: ChatRequest) -> int:
    """The request's seed mixed with its messages.

    The service gives every conversation of a step the same seed; with that seed alone a weak model
    samples the same tokens whatever the prompt (the tiny test model then rates every response alike).
    Mixing in the text gives each conversation its own, still reproducible, stream.
    """
    h = hashlib.sha256(str(req.seed).encode())
    for m in req.messages:
        h.update(b"\x00" + m.role.encode() + b"\x00" + m.content.encode())
    return int.from_bytes(h.digest()[:8], "big") >> 1
