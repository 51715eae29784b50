"""assess: the multi-dimensional risk vector of each training query (categories, level, intent, p(theta|x)).

Queries go to the assessor in chunks of `llm.chunk_size` (one service call per chunk); the journal
still commits per record, so a killed run resumes after the last finished query. The assessor reads
the query only (not the actor's answer), so this stage depends on `queries`, not on `generate`.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from oyster_exp.core.estimates import CallEstimate, Workload
from oyster_exp.csa.assessment import RiskSettings, guidelines_for, reply_model, to_assessment
from oyster_exp.csa.prompts import render, template_chars
from oyster_exp.csa.records import AssessmentRecord, QueryRecord, transient_failure
from oyster_exp.csa.replies import NO_RISK
from oyster_exp.csa.stackelberg import FOLLOWER_TYPES
from oyster_exp.data.taxonomy import TAXONOMY_ASSET, Taxonomy, taxonomy_for, taxonomy_inputs
from oyster_exp.llm.base import ChatMessage
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage


def assess_conversation(q: QueryRecord, tax: Taxonomy, s: RiskSettings) -> list[ChatMessage]:
    """Instructions as the system turn; the query is the user turn, never rendered into a template."""
    if q.language == "cn":
        cats = [f"{c.name_en}（{c.name_cn}）" for c in tax.categories]
    else:
        cats = tax.names_en()
    system = render("assess", q.language, dimensions=s.dimension_names, categories=cats,
                    max_secondary=s.max_secondary, score_words=list(s.score_scale),
                    likelihood_words=list(s.follower.likelihood_scale))
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=q.query)]


def record_for(q: QueryRecord, value: Any, tax: Taxonomy, s: RiskSettings) -> AssessmentRecord:
    a = to_assessment(value, s)
    by_cat = guidelines_for(a, tax, q.language)
    return AssessmentRecord(id=q.id, language=q.language, assessment=a,
                            guideline=[r for rules in by_cat.values() for r in rules], guideline_by_category=by_cat)


class AssessStage(Stage):
    name = "assess"
    version = 2
    record_type = AssessmentRecord
    inputs = ("queries",)
    config_keys = ("llm.roles.safety_judge", "llm.max_retries", "risk", "seed")
    unkeyed_keys = ("llm.chunk_size",)       # see GenerateStage
    templates = ("assess",)
    assets = (TAXONOMY_ASSET,)

    def estimate(self, cfg: DictConfig, work: Workload) -> list[CallEstimate]:
        """One safety-judge request per train query, none when no risk dimension is asked (exact)."""
        if not instantiate(cfg.risk, _convert_="all").asks_anything:
            return []
        return [CallEstimate("safety_judge", work.train, work.query_chars + template_chars("assess"))]

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        return taxonomy_inputs(ctx.cfg)

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        tax = taxonomy_for(ctx.cfg)
        s: RiskSettings = instantiate(ctx.cfg.risk, _convert_="all")
        model = reply_model(tax, s) if s.asks_anything else None
        todo = [q for q in inputs["queries"] if q.split == "train" and q.id not in journal]
        chunk = int(ctx.cfg.llm.chunk_size)
        for start in range(0, len(todo), chunk):
            batch: list[QueryRecord] = todo[start:start + chunk]
            if model is None:  # no dimension is asked: the record carries the prior posterior only
                for q in batch:
                    journal.append(record_for(q, None, tax, s))
                continue
            outs = ctx.service.structured("safety_judge", [assess_conversation(q, tax, s) for q in batch], model)
            for q, out in zip(batch, outs):
                if out.value is None:
                    journal.append(AssessmentRecord(id=q.id, language=q.language,
                                                    **transient_failure(f"assessor: {out.failure or 'no reply'}")))
                else:
                    journal.append(record_for(q, out.value, tax, s))

    def summarize(self, ctx: RunContext, records: list[Any]) -> dict[str, Any] | None:
        return assess_summary(records, ctx.outputs.get("queries", []))


def assess_summary(records: list[AssessmentRecord], queries: list[QueryRecord]) -> dict[str, Any]:
    """Counts per level/intent/language, multi-label rate, mean posterior, and agreement with the
    labels a query file declares (the seed set declares level and category)."""
    ok = [r for r in records if r.assessment is not None and r.failure is None]
    declared = {q.id: q for q in queries}
    levels = Counter(r.assessment.level for r in ok if r.assessment and r.assessment.level)
    intents = Counter(r.assessment.intent for r in ok if r.assessment and r.assessment.intent)
    out: dict[str, Any] = {
        "assessed": len(ok),
        "failures": dict(Counter((r.failure or "").split(":")[0] for r in records if r.failure)),
        "languages": dict(Counter(r.language for r in ok)),
        "levels": dict(sorted(levels.items())),
        "intents": dict(sorted(intents.items())),
        "no_risk": sum(1 for r in ok if r.assessment and r.assessment.category == NO_RISK),
        "unknown_risk": sum(1 for r in ok if r.assessment and r.assessment.category == "Unknown Risk"),
        "multi_label": sum(1 for r in ok if r.assessment and len(r.assessment.categories) > 1),
    }
    posts = [r.assessment.follower_posterior for r in ok if r.assessment and r.assessment.follower_posterior]
    if posts:
        out["mean_follower_posterior"] = {t: round(sum(p[t] for p in posts) / len(posts), 4) for t in FOLLOWER_TYPES}
    lvl_pairs = [(r.assessment.level, declared[r.id].risk_level) for r in ok
                 if r.assessment and r.assessment.level and r.id in declared and declared[r.id].risk_level]
    if lvl_pairs:
        out["level_agreement"] = round(sum(a == b for a, b in lvl_pairs) / len(lvl_pairs), 4)
    cat_pairs = [(r.assessment, declared[r.id].category) for r in ok
                 if r.assessment and r.assessment.category and r.id in declared and declared[r.id].category]
    if cat_pairs:
        hits = sum(1 for a, c in cat_pairs if c == a.category or c in {x["name"] for x in a.categories})
        out["category_agreement"] = round(hits / len(cat_pairs), 4)
    return out
