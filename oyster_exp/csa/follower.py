"""The follower model: how each follower type would react to one candidate reply.

The paper's leader (the model) commits to a reply anticipating a follower of unknown type θ ∈ {benign,
sensitive, malicious}. The user simulator scores one inferred user; it cannot say that the same detailed
reply keeps a benign user and arms a malicious one. So a dedicated `follower` role (llm.roles.follower; the
user simulator's backend when that role is not configured) predicts one reaction per type, a word from the
closed set `REACTIONS`. Words, not numbers: a small model can pick a word under constrained decoding, and
the mapping word -> Retention(θ, x, y), Risk(θ, x, y) is config (`stackelberg.reactions`, csa/stackelberg.py),
so it can be changed or ablated without re-asking the model. The role has its own prompt template
(`follower`, EN and CN) and reply schema, apart from the judges'.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from oyster_exp.csa.prompts import render
from oyster_exp.csa.stackelberg import FOLLOWER_TYPES, REACTIONS
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService, Outcome

FOLLOWER_ROLE = "follower"
FALLBACK_ROLE = "user_judge"     # the backend that predicts reactions when llm.roles.follower is not configured
TEMPLATE = "follower"

Reaction = Literal[REACTIONS]  # type: ignore[valid-type]


class FollowerReactionReply(BaseModel):
    """One reaction per follower type; `reading` comes first so that a model reasons before it picks."""

    reading: str = Field(default="", description="what the reply gives each kind of asker, one sentence")
    benign: Reaction
    sensitive: Reaction
    malicious: Reaction

    @model_validator(mode="before")
    @classmethod
    def _words(cls, data: Any) -> Any:
        """"Stays helped" / "stays-helped" from a remote model -> "stays_helped" before the enum checks it."""
        if isinstance(data, dict):
            data = {k: (v.strip().lower().replace("-", "_").replace(" ", "_")
                        if k in FOLLOWER_TYPES and isinstance(v, str) else v) for k, v in data.items()}
        return data

    def by_type(self) -> dict[str, str]:
        return {t: str(getattr(self, t)) for t in FOLLOWER_TYPES}


@dataclass
class FollowerItem:
    query: str
    response: str
    language: str = "en"


def follower_role(service: LLMService) -> str:
    """`follower` when the run configures it, else the user simulator's role (same backend, own prompt)."""
    return FOLLOWER_ROLE if FOLLOWER_ROLE in service.roles else FALLBACK_ROLE


def predict_reactions(service: LLMService, items: list[FollowerItem]) -> list[Outcome[FollowerReactionReply]]:
    """One structured call per item; a reply that stays invalid after the retries is a failure with its reason."""
    convs = [[ChatMessage(role="user", content=render(TEMPLATE, it.language, query=it.query,
                                                      response=it.response))] for it in items]
    return service.structured(follower_role(service), convs, FollowerReactionReply)
