"""LLM-call estimates: what each stage states it will ask for, summed by the dry run.

The stage that makes the calls states them (`Stage.estimate`), so the estimate and the calls cannot
drift apart; tests compare the two on real tiny runs.
"""
from __future__ import annotations

from dataclasses import dataclass

CHARS_PER_TOKEN = 3.5      # for token estimates from prompt lengths
GUIDELINE_CHARS = 400      # a rendered category guideline or plan block, roughly


@dataclass(frozen=True)
class CallEstimate:
    """`calls` first-attempt requests to `role` (retries come on top), each with a prompt of about
    `prompt_chars` characters (template, query and the texts it quotes: for the token estimate)."""
    role: str
    calls: int
    prompt_chars: float = 0.0


@dataclass(frozen=True)
class Workload:
    """What a dry run knows before any stage runs: the query split and the mean query length."""
    train: int
    heldout: int
    query_chars: float = 100.0
