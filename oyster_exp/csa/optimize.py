"""The Lingo-BP loop for one query: judge -> backprop -> recombine -> re-judge, keeping a trace.

Every trace entry owns its own chain (no aliasing); a failed step is recorded in the trace with its
reason and ends the loop for that query, the entries before it stay usable.
"""
from __future__ import annotations

from dataclasses import dataclass

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.lingo_bp import backprop
from oyster_exp.csa.players import JudgeItem, judge_safety, judge_user
from oyster_exp.csa.prompts import render
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService
from oyster_exp.records import TraceEntry


@dataclass
class LoopSettings:
    iterations: list[str]
    max_changes: int = 2
    pruning: bool = False
    w_satisfaction: float = 1.0
    w_safety: float = 1.0


def reward(entry: TraceEntry, s: LoopSettings) -> float | None:
    if entry.user is None or entry.safety is None:
        return None
    return s.w_satisfaction * entry.user.score + s.w_safety * entry.safety.score


def recombine(service: LLMService, chain: SafetyChain, query: str, lang: str) -> tuple[str, str, str | None]:
    """New (think, response) from a chain: the chain is the reasoning, the actor answers by it."""
    think = chain.render(lang)  # benign queries get the collapsed no-risk chain here
    conv = [ChatMessage(role="system", content=render("recombine", lang, plan=think)),
            ChatMessage(role="user", content=query)]
    out = service.text("actor", [conv])[0]
    return think, out.text, out.failure


def _judge(service: LLMService, entry: TraceEntry, item: JudgeItem, s: LoopSettings) -> TraceEntry:
    u = judge_user(service, [item])[0]
    sf = judge_safety(service, [item])[0]
    entry.user, entry.safety = u.value, sf.value
    fails = [f for f in (u.failure, sf.failure) if f]
    entry.failure = "; ".join(fails) or None
    entry.reward = reward(entry, s)
    return entry


def satisfied(prev: TraceEntry, mode: str) -> bool:
    user_ok = prev.user is not None and prev.user.score >= 1.0
    safe_ok = prev.safety is not None and prev.safety.score >= 1.0
    return {"user": user_ok, "developer": safe_ok, "both": user_ok and safe_ok}[mode]


def optimize_query(service: LLMService, query: str, lang: str, think: str, response: str, chain: SafetyChain,
                   category: str, guideline: str, s: LoopSettings) -> list[TraceEntry]:
    item = JudgeItem(query=query, response=response, language=lang, category=category, guideline=guideline)
    trace = [_judge(service, TraceEntry(iteration=0, mode="initial", chain=chain, think=think, response=response),
                    item, s)]
    for i, mode in enumerate(s.iterations, start=1):
        prev = trace[-1]
        if prev.failure and (prev.user is None or prev.safety is None):
            break
        if s.pruning and satisfied(prev, mode):
            break
        assert prev.chain is not None
        step = backprop(service, query, prev.response, prev.chain, prev.user, prev.safety, mode, lang, s.max_changes)
        if step.value is None:
            trace.append(TraceEntry(iteration=i, mode=mode, chain=None, response=prev.response,
                                    failure=f"editor: {step.failure}"))
            break
        new_think, new_response, fail = recombine(service, step.value, query, lang)
        if fail:
            trace.append(TraceEntry(iteration=i, mode=mode, chain=step.value, think=new_think,
                                    response=prev.response, failure=f"recombine: {fail}"))
            break
        entry = TraceEntry(iteration=i, mode=mode, chain=step.value, think=new_think, response=new_response)
        item = JudgeItem(query=query, response=new_response, language=lang, category=category, guideline=guideline)
        trace.append(_judge(service, entry, item, s))
    return trace
