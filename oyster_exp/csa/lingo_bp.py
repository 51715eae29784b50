"""One Linguistic Backpropagation step: feedback -> editor -> updated chain (frozen nodes kept).

Which nodes a mode may change comes from config (`lingo_bp.unfrozen.<mode>`), not from code, so
the paper figure's freezing, the public code's and any ablation are config choices.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from oyster_exp.config.structured import NODE_NAMES
from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.prompts import render
from oyster_exp.csa.replies import EditReply, SafetyJudgement, UserJudgement
from oyster_exp.csa.strategies import Similarity, jaccard, minimal_update
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService, Outcome

TEXT_NODES = ("user_needs", "risk_intent", "safety_guidelines")
LIST_NODES = ("usefulness_strategies", "safety_strategies")


@dataclass(frozen=True)
class EditSettings:
    unfrozen: Mapping[str, Collection[str]]       # mode -> node names the mode may change
    max_changes: int = 2
    similarity: Similarity = jaccard
    replace_threshold: float = 0.3


def feedback_for(mode: str, user: UserJudgement | None,
                 safety: SafetyJudgement | None) -> tuple[UserJudgement | None, SafetyJudgement | None]:
    """The judgements a mode backpropagates: user -> satisfaction, developer -> safety, both -> both.

    In `both` mode the user-side feedback reaches the editor too (the public code asked for it and
    then discarded that half of the reply); our editor answers once, from both signals.
    """
    return (user if mode in ("user", "both") else None, safety if mode in ("developer", "both") else None)


@dataclass(frozen=True)
class Rejected:
    """An earlier edit of the same plan that scored worse (the regression guard went back past it)."""
    strategies: list[str]
    satisfaction: float | None
    safety: float | None


def edit_prompt(query: str, response: str, chain: SafetyChain, user: UserJudgement | None,
                safety: SafetyJudgement | None, mode: str, lang: str, s: EditSettings,
                rejected: Rejected | None = None) -> list[ChatMessage]:
    fb_user, fb_safety = feedback_for(mode, user, safety)
    text = render("edit", lang, query=query, response=response, plan=chain.editor_view(), user=fb_user,
                  safety=fb_safety, mode=mode, max_changes=s.max_changes,
                  unfrozen=[n for n in NODE_NAMES if n in s.unfrozen[mode]], rejected=rejected)
    return [ChatMessage(role="user", content=text)]


def apply_edit(chain: SafetyChain, edit: EditReply, mode: str, s: EditSettings) -> SafetyChain:
    """A new chain (the old one is never mutated): unfrozen nodes updated, strategies minimally."""
    allowed = set(s.unfrozen[mode])
    data = chain.model_dump()
    for node in TEXT_NODES:
        if node in allowed and getattr(edit, node).strip():
            data[node] = getattr(edit, node).strip()
    for node in LIST_NODES:
        if node in allowed:
            # argument order: the chain's current list is the base, the editor's list the proposal
            data[node] = minimal_update(getattr(chain, node), getattr(edit, node), s.max_changes,
                                        s.similarity, s.replace_threshold)
    return SafetyChain(**data)


@dataclass
class EditItem:
    query: str
    response: str
    chain: SafetyChain
    user: UserJudgement | None
    safety: SafetyJudgement | None
    mode: str
    lang: str
    rejected: Rejected | None = None


def backprop(service: LLMService, items: list[EditItem], s: EditSettings) -> list[Outcome[SafetyChain]]:
    """One editor call for all items; each result is the updated chain or the editor's failure."""
    convs = [edit_prompt(it.query, it.response, it.chain, it.user, it.safety, it.mode, it.lang, s, it.rejected)
             for it in items]
    outs = service.structured("editor", convs, EditReply) if convs else []
    return [Outcome(value=apply_edit(it.chain, o.value, it.mode, s), text=o.text) if o.value is not None
            else Outcome(failure=o.failure, text=o.text) for it, o in zip(items, outs)]
