"""extract: the four-node safety chain, read out of the actor's reasoning."""
from __future__ import annotations

from typing import Any

from oyster_exp.artifacts import CacheEntry, Journal
from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.prompts import render
from oyster_exp.csa.schemas import ChainReply
from oyster_exp.llm.base import ChatMessage
from oyster_exp.pipeline import RunContext, Stage
from oyster_exp.records import ChainRecord


class ExtractStage(Stage):
    name = "extract"
    record_type = ChainRecord
    inputs = ("generate",)
    config_keys = ("llm.roles.editor", "llm.max_retries", "seed")

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        for g in inputs["generate"]:
            if g.id in journal:
                continue
            if g.failure:
                journal.append(ChainRecord(id=g.id, failure=f"upstream: {g.failure}"))
                continue
            conv = [ChatMessage(role="user", content=render("extract", g.language, query=g.query, think=g.think))]
            out = ctx.service.structured("editor", [conv], ChainReply)[0]
            chain = SafetyChain(**out.value.model_dump()) if out.value else None
            journal.append(ChainRecord(id=g.id, chain=chain, failure=out.failure if chain is None else None))
