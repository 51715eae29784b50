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
from oyster_exp.evaluation.generation import Answer, GenerationSettings, generate
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


def split_name(path: Path, prefix: str = "") -> str:
    """A readable split name from a data file: harmbench_behaviors_text_val.csv -> val."""
    stem = path.stem
    return stem[len(prefix):] if prefix and stem.startswith(prefix) else stem
