"""optimize: Lingo-BP over each query's safety chain, with the full judged trace."""
from __future__ import annotations

from typing import Any

from oyster_exp.artifacts import CacheEntry, Journal
from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.optimize import LoopSettings, optimize_query
from oyster_exp.csa.schemas import NO_RISK
from oyster_exp.pipeline import RunContext, Stage
from oyster_exp.records import OptimizeRecord


def settings_from(cfg: Any) -> LoopSettings:
    lb = cfg.lingo_bp
    return LoopSettings(iterations=[str(getattr(m, "value", m)) for m in lb.iterations],
                        max_changes=int(lb.max_strategy_changes), pruning=bool(lb.pruning),
                        w_satisfaction=float(lb.satisfaction_weight), w_safety=float(lb.safety_weight))


class OptimizeStage(Stage):
    name = "optimize"
    record_type = OptimizeRecord
    inputs = ("generate", "assess", "extract")
    config_keys = ("llm.roles", "llm.max_retries", "lingo_bp", "stackelberg", "seed")

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        s = settings_from(ctx.cfg)
        assess = {r.id: r for r in inputs["assess"]}
        chains = {r.id: r for r in inputs["extract"]}
        for g in inputs["generate"]:
            if g.id in journal:
                continue
            a, c = assess.get(g.id), chains.get(g.id)
            upstream = g.failure or (a.failure if a else "no assessment") or (c.failure if c else "no chain")
            if upstream:
                journal.append(OptimizeRecord(id=g.id, query=g.query, language=g.language,
                                              failure=f"upstream: {upstream}"))
                continue
            category = (a.assessment.category if a.assessment else None) or NO_RISK
            guideline = "\n".join(f"{i}. {r}" for i, r in enumerate(a.guideline, 1))
            chain = c.chain or SafetyChain()
            trace = optimize_query(ctx.service, g.query, g.language, g.think, g.response, chain, category,
                                   guideline, s)
            rewards = [(e.reward, i) for i, e in enumerate(trace) if e.reward is not None]
            best = max(rewards)[1] if rewards else None
            failure = None if best is not None else (trace[0].failure or "no judged trace entry")
            journal.append(OptimizeRecord(id=g.id, query=g.query, language=g.language, trace=trace,
                                          best_index=best, failure=failure))
