"""One Linguistic Backpropagation step: feedback -> editor -> updated chain (frozen nodes kept)."""
from __future__ import annotations

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.prompts import render
from oyster_exp.csa.schemas import EditReply, SafetyJudgement, UserJudgement
from oyster_exp.csa.strategies import minimal_update
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService, Outcome

# Nodes each mode may change; the rest are frozen (copied from the current chain).
UNFROZEN: dict[str, frozenset[str]] = {
    "user": frozenset({"user_needs", "usefulness_strategies"}),
    "developer": frozenset({"user_needs", "risk_intent", "safety_guidelines", "usefulness_strategies",
                            "safety_strategies"}),
    "both": frozenset({"user_needs", "risk_intent", "safety_guidelines", "usefulness_strategies",
                       "safety_strategies"}),
}


def edit_prompt(query: str, response: str, chain: SafetyChain, user: UserJudgement | None,
                safety: SafetyJudgement | None, mode: str, lang: str, max_changes: int) -> list[ChatMessage]:
    # the editor sees only the feedback its mode backpropagates
    fb_user = user if mode in ("user", "both") else None
    fb_safety = safety if mode in ("developer", "both") else None
    text = render("edit", lang, query=query, response=response, plan=chain.render(lang) if not chain.is_no_risk()
                  else _full_plan(chain, lang), user=fb_user, safety=fb_safety, mode=mode, max_changes=max_changes)
    return [ChatMessage(role="user", content=text)]


def _full_plan(chain: SafetyChain, lang: str) -> str:
    return "\n".join(f"{k}: {v}" for k, v in chain.model_dump().items())


def apply_edit(chain: SafetyChain, edit: EditReply, mode: str, max_changes: int) -> SafetyChain:
    """A new chain (the old one is never mutated): unfrozen nodes updated, strategies minimally."""
    allowed = UNFROZEN[mode]
    data = chain.model_dump()
    for node in ("user_needs", "risk_intent", "safety_guidelines"):
        if node in allowed and getattr(edit, node).strip():
            data[node] = getattr(edit, node).strip()
    for node in ("usefulness_strategies", "safety_strategies"):
        if node in allowed:
            data[node] = minimal_update(getattr(chain, node), getattr(edit, node), max_changes)
    return SafetyChain(**data)


def backprop(service: LLMService, query: str, response: str, chain: SafetyChain, user: UserJudgement | None,
             safety: SafetyJudgement | None, mode: str, lang: str, max_changes: int) -> Outcome[SafetyChain]:
    conv = edit_prompt(query, response, chain, user, safety, mode, lang, max_changes)
    out = service.structured("editor", [conv], EditReply)[0]
    if out.value is None:
        return Outcome(failure=out.failure, text=out.text)
    return Outcome(value=apply_edit(chain, out.value, mode, max_changes), text=out.text)
