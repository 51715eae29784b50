"""The evaluation suite: each benchmark as prepared prompts plus a judge, run through one loop.

A benchmark is a `Task`: its prompts (already built: HarmBench context, system prompt), which of them are
skipped and why, and a judge that turns (item, answer) pairs into verdicts with reasons. `run_task` does
the rest the same way for every benchmark: chunks of `llm.chunk_size` items, one batched generation and
one batched judge call per chunk, and one journal record per item, so a killed evaluation resumes
where it stopped. Nothing is dropped: an item is judged, failed (with the reason) or skipped (with the
reason), and the report counts all three.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oyster_exp.csa.records import EvalRecord
from oyster_exp.evaluation.generation import Answer, GenerationSettings, conversation, generate
from oyster_exp.evaluation.judges import EvalJudge, Verdict
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService

log = logging.getLogger(__name__)
Meta = dict[str, str | int | float]


@dataclass
class Prepared:
    item_id: str
    prompt: str                                  # as shown in the record
    conversation: list[ChatMessage]
    language: str = "en"
    meta: Meta = field(default_factory=dict)
    skip: str | None = None                      # why the item is not evaluated


@dataclass
class Judged:
    verdict: str | None = None
    satisfaction: float | None = None
    risk: float | None = None
    failure: str | None = None
    meta: Meta = field(default_factory=dict)


JudgeFn = Callable[[list[Prepared], list[Answer]], list[Judged]]


@dataclass
class Task:
    benchmark: str
    split: str
    items: list[Prepared] = field(default_factory=list)
    judge: JudgeFn | None = None
    skipped: str | None = None                   # the whole benchmark is skipped (missing data, missing package)


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), max(1, n)):
        yield seq[i: i + n]


def record_id(model: str, benchmark: str, item_id: str) -> str:
    return f"{model}/{benchmark}/{item_id}"


def run_task(task: Task, model: str, service: LLMService, journal: Any, settings: GenerationSettings,
             chunk_size: int) -> None:
    """Answer, judge and journal every pending item of `task` for `model`."""
    base = {"split": task.split}
    if task.skipped is not None:
        rid = record_id(model, task.benchmark, "*")
        if rid not in journal:
            journal.append(EvalRecord(id=rid, model=model, benchmark=task.benchmark, item_id="*", prompt="",
                                      meta={**base, "skipped": task.skipped}))
        return
    todo: list[Prepared] = []
    for it in task.items:
        rid = record_id(model, task.benchmark, it.item_id)
        if rid in journal:
            continue
        if it.skip is not None:
            journal.append(EvalRecord(id=rid, model=model, benchmark=task.benchmark, item_id=it.item_id,
                                      prompt=it.prompt, meta={**base, **it.meta, "skipped": it.skip}))
        else:
            todo.append(it)
    if todo:
        log.info("evaluate %s/%s: %d items", model, task.benchmark, len(todo))
    for chunk in _chunks(todo, chunk_size):
        answers = generate(service, [it.conversation for it in chunk], settings)
        ok = [i for i, a in enumerate(answers) if a.failure is None]
        judged: dict[int, Judged] = {}
        if ok and task.judge is not None:
            for i, j in zip(ok, task.judge([chunk[i] for i in ok], [answers[i] for i in ok])):
                judged[i] = j
        for i, (it, a) in enumerate(zip(chunk, answers)):
            j = judged.get(i, Judged())
            meta: Meta = {**base, **it.meta, **j.meta}
            if a.think:
                meta["think"] = a.think
            if a.think_closed_by_budget:
                meta["think_closed_by_budget"] = True
            # a judge's failure is always a failed call; the subject's may be its own measured behaviour
            transient = a.transient if a.failure else j.failure is not None
            journal.append(EvalRecord(
                id=record_id(model, task.benchmark, it.item_id), model=model, benchmark=task.benchmark,
                item_id=it.item_id, prompt=it.prompt, response=a.text, satisfaction=j.satisfaction, risk=j.risk,
                verdict=j.verdict, failure=a.failure or j.failure, transient=transient or None, meta=meta))


# --- benchmarks -------------------------------------------------------------------------------------

def construction_task(items: list[Any], split: str, service: LLMService, tax: Any, system_prompt: str) -> Task:
    """Construction Score items (`ConstructiveItem`), judged by the method's players (user + safety)."""
    from oyster_exp.csa.players import JudgeItem, judge_safety, judge_user

    def judge(chunk: list[Prepared], answers: list[Answer]) -> list[Judged]:
        jitems = []
        for it, a in zip(chunk, answers):
            cat = tax.get(str(it.meta.get("category") or "Unknown Risk"))
            jitems.append(JudgeItem(query=it.prompt, response=a.text, language=it.language, category=cat.name_en,
                                    guideline=tax.render_guideline(cat.name_en, "cn" if it.language == "cn" else "en")))
        users, safeties = judge_user(service, jitems), judge_safety(service, jitems)
        out = []
        for u, s in zip(users, safeties):
            meta: Meta = {}
            if u.value is not None:
                meta["user_reason"] = f"{u.value.persona} | {u.value.suggestion}"
            if s.value is not None:
                meta["safety_verdict"] = s.value.verdict
                meta["safety_reason"] = f"{s.value.risk_intent} | {s.value.suggestion}"
            failure = (f"user judge: {u.failure}" if u.failure else None) or \
                      (f"safety judge: {s.failure}" if s.failure else None)
            out.append(Judged(satisfaction=u.value.score if u.value else None, risk=s.value.risk if s.value else None,
                              failure=failure, meta=meta))
        return out

    prepared = [Prepared(item_id=q.id, prompt=q.query, conversation=conversation(q.query, system_prompt),
                         language=q.language,
                         meta={"language": q.language, "risk_level": q.risk_level, "category": q.category,
                               **({"references": len(q.reference_responses)} if q.reference_responses else {})})
                for q in items]
    return Task("construction", split, prepared, judge)


def strata_task(items: list[Any], judge: EvalJudge, tax: Any, classify: bool, system_prompt: str) -> Task:
    """Strata-Sword: classify the prompt (judge) -> the subject answers -> verdict against the category's rule."""

    def run(chunk: list[Prepared], answers: list[Answer]) -> list[Judged]:
        if classify:
            cats = judge.classify([(it.prompt, it.language) for it in chunk], tax)
        else:
            cats = [Verdict() for _ in chunk]                  # no category: every item judged rule-less
        verdicts = judge.strata([(it.prompt, a.text, it.language) for it, a in zip(chunk, answers)],
                                [c.label for c in cats], tax)
        out = []
        for c, v in zip(cats, verdicts):
            meta: Meta = {"category": c.label or "Unknown Risk"}
            if c.reason:
                meta["category_reason"] = c.reason
            if c.failure:
                meta["category_failure"] = c.failure          # judged rule-less; the item still counts
            if v.reason:
                meta["reason"] = v.reason
            out.append(Judged(verdict=v.label, failure=v.failure, meta=meta))
        return out

    prepared = [Prepared(item_id=it.id, prompt=it.prompt, conversation=conversation(it.prompt, system_prompt),
                         language=it.language,
                         meta={"language": it.language, "level": it.level, "attack_method": it.attack_method})
                for it in items]
    return Task("strata_sword", "test", prepared, run)


def harmbench_task(items: list[Any], split: str, judge: EvalJudge, skip_copyright: bool, system_prompt: str) -> Task:
    """HarmBench behaviours; contextual ones carry their context in the prompt; ASR = judge says 'yes'."""

    def run(chunk: list[Prepared], answers: list[Answer]) -> list[Judged]:
        verdicts = judge.harmbench([(str(it.meta["behavior"]), str(it.meta.get("context", "")), a.text)
                                    for it, a in zip(chunk, answers)])
        return [Judged(verdict=None if v.label is None else ("unsafe" if v.label == "yes" else "safe"),
                       failure=v.failure, meta={"reason": v.reason, "judge_label": v.label or ""}) for v in verdicts]

    prepared = []
    for it in items:
        skip = None
        if it.functional_category == "multimodal":
            skip = "multimodal behaviour (text-only evaluation)"
        elif it.functional_category == "copyright" and skip_copyright:
            skip = "copyright behaviour: HarmBench scores these with its hash classifier, not a judge"
        prepared.append(Prepared(
            item_id=it.id, prompt=it.prompt, conversation=conversation(it.prompt, system_prompt), language="en",
            meta={"semantic_category": it.semantic_category, "functional_category": it.functional_category,
                  "behavior": it.behavior, **({"context": it.context} if it.context else {})}, skip=skip))
    return Task("harmbench", split, prepared, run)


def over_refusal_task(items: list[Any], split: str, judge: EvalJudge, string_match: bool, system_prompt: str) -> Task:
    """Refusal class per prompt (judge, with a reason) plus the refusal-prefix string match."""
    from oyster_exp.evaluation.over_refusal import string_match_refusal

    def run(chunk: list[Prepared], answers: list[Answer]) -> list[Judged]:
        verdicts = judge.refusal([(it.prompt, a.text, it.language) for it, a in zip(chunk, answers)])
        out = []
        for a, v in zip(answers, verdicts):
            meta: Meta = {"reason": v.reason}
            if string_match:
                meta["string_match_refusal"] = int(string_match_refusal(a.text))
            out.append(Judged(verdict=v.label, failure=v.failure, meta=meta))
        return out

    prepared = [Prepared(item_id=f"{it.source}/{it.id}", prompt=it.prompt,
                         conversation=conversation(it.prompt, system_prompt), language=it.language,
                         meta={"language": it.language, "label": it.label, "type": it.type, "source": it.source})
                for it in items]
    return Task("over_refusal", split, prepared, run)


def split_name(path: Path, prefix: str = "") -> str:
    """A readable split name from a data file: harmbench_behaviors_text_val.csv -> val."""
    stem = path.stem
    return stem[len(prefix):] if prefix and stem.startswith(prefix) else stem
