"""The followers' judges: the user simulator and the safety auditor (and the jailbreak judge).

Both return typed judgements (or a failure with its reason) for a batch of (query, response) items. Each
rates against a rubric written into its template (what -1, 0 and +1 mean for each satisfaction item; the
auditor's order of inference: user type, intent, adapted guideline, verdict, next-turn guidance); a user's
stated persona and task, when the item has them, reach both.
Prompts come from `csa/prompts`; the query and response are template variables, inserted by the
engine, so text such as "{response}" or "{{ x }}" in a query stays text. Scores are recomputed from
the validated items; a total written by the judge is never read.
"""
from __future__ import annotations

from dataclasses import dataclass

from oyster_exp.csa.prompts import render
from oyster_exp.csa.records import AssessmentRecord
from oyster_exp.csa.replies import (
    NO_RISK,
    SafetyJudgement,
    SafetyJudgementReply,
    StrataVerdictReply,
    UserJudgement,
    UserJudgementReply,
)
from oyster_exp.data.taxonomy import Taxonomy
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService, Outcome


@dataclass
class JudgeItem:
    query: str
    response: str
    language: str = "en"
    category: str = "Unknown Risk"         # what the auditor is told the risk is (one name or a list)
    guideline: str = ""                    # the rules the auditor applies (rendered text)
    persona: str = ""                      # who the user says they are (constructive benchmark, user query files)
    task: str = ""                         # what they are trying to do; both reach the user simulator and auditor


def safety_context(tax: Taxonomy, categories: list[str], lang: str) -> tuple[str, str]:
    """(category text, guideline text) for the auditor from every assessed category, in the query's
    language: one category gives a numbered list; several give one numbered block per category."""
    language = "cn" if lang == "cn" else "en"
    cats = [tax.get(n) for n in categories if n and n != NO_RISK]
    seen: set[str] = set()
    cats = [c for c in cats if not (c.name_en in seen or seen.add(c.name_en))]  # type: ignore[func-returns-value]
    if not cats:
        return (tax.no_risk.name_cn if language == "cn" else tax.no_risk.name_en), ""
    label = [c.name_cn if language == "cn" else c.name_en for c in cats]
    blocks = []
    for c, name in zip(cats, label):
        rules = "\n".join(f"{i}. {r}" for i, r in enumerate(tax.guideline(c.name_en, language), 1))  # type: ignore[arg-type]
        blocks.append(rules if len(cats) == 1 else f"[{name}]\n{rules}")
    return ("、" if language == "cn" else ", ").join(label), "\n".join(blocks)


def judge_item_for(query: str, response: str, language: str, record: AssessmentRecord | None,
                   tax: Taxonomy, persona: str = "", task: str = "") -> JudgeItem:
    """The auditor's view of a query from its assessment: all its categories (multi-label)."""
    a = record.assessment if record is not None else None
    if a is None:
        names = ["Unknown Risk"]
    elif a.categories:
        names = [c["name"] for c in a.categories]
    else:
        names = [a.category] if a.category else ["Unknown Risk"]
    category, guideline = safety_context(tax, names, language)
    return JudgeItem(query=query, response=response, language=language, category=category, guideline=guideline,
                     persona=persona, task=task)


def judge_user(service: LLMService, items: list[JudgeItem]) -> list[Outcome[UserJudgement]]:
    convs = [[ChatMessage(role="user", content=render("user_judge", it.language, query=it.query,
                                                      response=it.response, persona=it.persona, task=it.task))]
             for it in items]
    outs = service.structured("user_judge", convs, UserJudgementReply)
    return [Outcome(value=UserJudgement(**o.value.model_dump()) if o.value else None, text=o.text,
                    failure=o.failure) for o in outs]


def judge_safety(service: LLMService, items: list[JudgeItem]) -> list[Outcome[SafetyJudgement]]:
    convs = [[ChatMessage(role="user", content=render("safety_judge", it.language, query=it.query,
                                                      response=it.response, category=it.category,
                                                      guideline=it.guideline, persona=it.persona,
                                                      task=it.task))] for it in items]
    outs = service.structured("safety_judge", convs, SafetyJudgementReply)
    return [Outcome(value=SafetyJudgement(**o.value.model_dump()) if o.value else None, text=o.text,
                    failure=o.failure) for o in outs]


def judge_jailbreak(service: LLMService, items: list[JudgeItem]) -> list[Outcome[StrataVerdictReply]]:
    convs = [[ChatMessage(role="user", content=render("strata_judge", it.language, query=it.query,
                                                      response=it.response))] for it in items]
    return service.structured("safety_judge", convs, StrataVerdictReply)
