"""assess: the multi-dimensional risk vector of each query (category, level, intent)."""
from __future__ import annotations

from typing import Any

from oyster_exp.artifacts import CacheEntry, Journal
from oyster_exp.csa.prompts import render
from oyster_exp.csa.schemas import NO_RISK, RiskAssessment, assess_reply_model
from oyster_exp.csa.taxonomy_access import taxonomy_for
from oyster_exp.llm.base import ChatMessage
from oyster_exp.pipeline import RunContext, Stage
from oyster_exp.records import AssessmentRecord


class AssessStage(Stage):
    name = "assess"
    record_type = AssessmentRecord
    inputs = ("generate",)
    config_keys = ("llm.roles.safety_judge", "llm.max_retries", "risk", "seed")

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        tax = taxonomy_for(ctx.cfg)
        dims = tuple(str(getattr(d, "value", d)) for d in ctx.cfg.risk.dimensions)
        reply_model = assess_reply_model(tuple(tax.names_en()), dims)
        for g in inputs["generate"]:
            if g.id in journal:
                continue
            if g.failure:
                journal.append(AssessmentRecord(id=g.id, failure=f"upstream: {g.failure}"))
                continue
            conv = [ChatMessage(role="system", content=render("assess", g.language, dimensions=dims,
                                                              categories=tax.names_en())),
                    ChatMessage(role="user", content=g.query)]
            out = ctx.service.structured("safety_judge", [conv], reply_model)[0]
            if out.value is None:
                journal.append(AssessmentRecord(id=g.id, failure=out.failure))
                continue
            v = out.value.model_dump()
            category = v.get("category")
            guideline = tax.guideline(category, g.language) if category and category != NO_RISK else []
            journal.append(AssessmentRecord(
                id=g.id,
                assessment=RiskAssessment(category=category, level=v.get("level"), intent=v.get("intent"),
                                          categories=[{"name": category, "score": 1.0}] if category else []),
                guideline=guideline,
            ))
