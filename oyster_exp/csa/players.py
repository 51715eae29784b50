"""The two followers' judges: the user simulator and the safety auditor.

Both return typed judgements (or a failure with its reason) for a batch of (query, response)
items; prompts come from `csa/prompts`, scores are recomputed from validated items.
"""
from __future__ import annotations

from dataclasses import dataclass

from oyster_exp.csa.prompts import render
from oyster_exp.csa.schemas import (SafetyJudgement, SafetyJudgementReply, StrataVerdictReply, UserJudgement,
                                    UserJudgementReply)
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService, Outcome


@dataclass
class JudgeItem:
    query: str
    response: str
    language: str = "en"
    category: str = "Unknown Risk"
    guideline: str = ""


def judge_user(service: LLMService, items: list[JudgeItem]) -> list[Outcome[UserJudgement]]:
    convs = [[ChatMessage(role="user", content=render("user_judge", it.language, query=it.query,
                                                      response=it.response))] for it in items]
    outs = service.structured("user_judge", convs, UserJudgementReply)
    return [Outcome(value=UserJudgement(**o.value.model_dump()) if o.value else None, text=o.text,
                    failure=o.failure) for o in outs]


def judge_safety(service: LLMService, items: list[JudgeItem]) -> list[Outcome[SafetyJudgement]]:
    convs = [[ChatMessage(role="user", content=render("safety_judge", it.language, query=it.query,
                                                      response=it.response, category=it.category,
                                                      guideline=it.guideline or "-"))] for it in items]
    outs = service.structured("safety_judge", convs, SafetyJudgementReply)
    return [Outcome(value=SafetyJudgement(**o.value.model_dump()) if o.value else None, text=o.text,
                    failure=o.failure) for o in outs]


def judge_jailbreak(service: LLMService, items: list[JudgeItem]) -> list[Outcome[StrataVerdictReply]]:
    convs = [[ChatMessage(role="user", content=render("strata_judge", it.language, query=it.query,
                                                      response=it.response))] for it in items]
    return service.structured("safety_judge", convs, StrataVerdictReply)
