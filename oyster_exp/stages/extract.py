"""extract: the four-node safety chain, read out of the actor's reasoning.

`llm.chunk_size` records per service call (micro-batched locally, concurrent remotely); each
record is journaled on its own, in input order, so resume skips finished ids.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from oyster_exp.core.estimates import CHARS_PER_TOKEN, CallEstimate, Workload
from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.prompts import render, template_chars
from oyster_exp.csa.records import ChainRecord, transient_failure
from oyster_exp.csa.replies import ChainReply
from oyster_exp.llm.base import ChatMessage
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage
from oyster_exp.stages.generate import chunks


class ExtractStage(Stage):
    name = "extract"
    record_type = ChainRecord
    inputs = ("generate",)
    config_keys = ("llm.roles.editor", "llm.max_retries", "seed")
    unkeyed_keys = ("llm.chunk_size",)       # see GenerateStage
    templates = ("extract",)

    def estimate(self, cfg: DictConfig, work: Workload) -> list[CallEstimate]:
        """One editor request per train query whose generation succeeded (exact when all did)."""
        reasoning = int(cfg.llm.roles.actor.max_tokens) * CHARS_PER_TOKEN
        return [CallEstimate("editor", work.train, work.query_chars + reasoning + template_chars("extract"))]

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        todo = [g for g in inputs["generate"] if g.id not in journal]
        for batch in chunks(todo, ctx.cfg.llm.chunk_size):
            ask = [g for g in batch if not g.failure]
            convs = [[ChatMessage(role="user", content=render("extract", g.language, query=g.query, think=g.think))]
                     for g in ask]
            outs = dict(zip((g.id for g in ask), ctx.service.structured("editor", convs, ChainReply) if ask else []))
            for g in batch:
                if g.failure:
                    journal.append(ChainRecord(id=g.id, failure=f"upstream: {g.failure}"))
                    continue
                out = outs[g.id]
                if out.value is None:
                    journal.append(ChainRecord(id=g.id, **transient_failure(f"editor: {out.failure or 'no reply'}")))
                else:
                    journal.append(ChainRecord(id=g.id, chain=SafetyChain(**out.value.model_dump())))
