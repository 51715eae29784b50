"""generate: the actor's initial reasoning (think) and response per training query.

Queries go to the service `llm.chunk_size` at a time (the local backend micro-batches them,
remote backends run them concurrently); records are still journaled one by one, so a killed
run resumes after the last finished query.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from oyster_exp.core.estimates import CallEstimate, Workload
from oyster_exp.csa.prompts import render, template_chars
from oyster_exp.csa.records import GenerationRecord, QueryRecord, transient_failure
from oyster_exp.llm.base import ChatMessage
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage


def user_turn(q: QueryRecord, system_prompt: str) -> list[ChatMessage]:
    msgs = [ChatMessage(role="system", content=system_prompt)] if system_prompt else []
    return msgs + [ChatMessage(role="user", content=q.query)]


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


class GenerateStage(Stage):
    name = "generate"
    record_type = GenerationRecord
    inputs = ("queries",)
    config_keys = ("llm.roles.actor", "llm.max_retries", "data.system_prompt", "seed")
    # llm.chunk_size is outside the key on purpose: a reply depends on its request (and seed) only, not on
    # which requests shared its batch, so changing the chunk size reuses the cached stage.
    unkeyed_keys = ("llm.chunk_size",)
    templates = ("actor_think",)

    def estimate(self, cfg: DictConfig, work: Workload) -> list[CallEstimate]:
        """An answer and a reasoning per train query: exact when every answer succeeds and the backend returns
        no reasoning of its own (then the reasoning call is skipped: an upper bound)."""
        q = work.query_chars
        return [CallEstimate("actor", work.train, q),
                CallEstimate("actor", work.train, q + template_chars("actor_think"))]

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        todo = [q for q in inputs["queries"] if q.split == "train" and q.id not in journal]
        sp = str(ctx.cfg.data.system_prompt or "")
        for batch in chunks(todo, ctx.cfg.llm.chunk_size):
            answers = ctx.service.text("actor", [user_turn(q, sp) for q in batch])
            # A thinking backend returns its reasoning with the answer; otherwise ask for it separately.
            need_think = [i for i, a in enumerate(answers) if a.failure is None and not a.reasoning]
            thinks = ctx.service.text("actor", [
                [ChatMessage(role="system", content=render("actor_think", batch[i].language)),
                 ChatMessage(role="user", content=batch[i].query)] for i in need_think])
            think_by = {i: t for i, t in zip(need_think, thinks)}
            for i, (q, a) in enumerate(zip(batch, answers)):
                t = think_by.get(i)
                failure = a.failure or (t.failure if t else None)
                journal.append(GenerationRecord(
                    id=q.id, query=q.query, language=q.language, response=a.text,
                    think=a.reasoning or (t.text if t else ""),
                    **(transient_failure(f"actor: {failure}") if failure else {}),
                ))
