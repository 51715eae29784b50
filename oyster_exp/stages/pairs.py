"""pairs: preference pairs from the Lingo-BP traces (chosen = best entry, rejected per policy)."""
from __future__ import annotations

from typing import Any

from oyster_exp.artifacts import CacheEntry, Journal
from oyster_exp.pipeline import RunContext, Stage
from oyster_exp.records import OptimizeRecord, PairRecord, TraceEntry


def completion(entry: TraceEntry, include_think: bool) -> str:
    if include_think and entry.think.strip():
        return f"<think>\n{entry.think.strip()}\n</think>\n\n{entry.response.strip()}"
    return entry.response.strip()


def select_pair(rec: OptimizeRecord, policy: str, min_margin: float) -> tuple[TraceEntry, TraceEntry] | str:
    """(chosen, rejected), or the reason there is no pair."""
    scored = [e for e in rec.trace if e.reward is not None]
    if rec.best_index is None or len(scored) < 2:
        return "fewer than two judged trace entries"
    best = rec.trace[rec.best_index]
    if policy == "best_vs_initial":
        rejected = rec.trace[0]
        if best is rejected:
            return "no Lingo-BP step improved on the initial response"
    else:  # best_vs_worst
        rejected = min(scored, key=lambda e: e.reward)  # type: ignore[arg-type, return-value]
    if rejected.reward is None or best.reward - rejected.reward < min_margin:  # type: ignore[operator]
        return f"reward margin below pairs.min_margin={min_margin}"
    if best.response.strip() == rejected.response.strip():
        return "chosen and rejected responses are identical"
    return best, rejected


class PairsStage(Stage):
    name = "pairs"
    record_type = PairRecord
    inputs = ("queries", "optimize")
    config_keys = ("pairs", "data.system_prompt")

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        p = ctx.cfg.pairs
        policy = str(getattr(p.policy, "value", p.policy))
        sp = str(ctx.cfg.data.system_prompt or "")
        for rec in inputs["optimize"]:
            if rec.id in journal:
                continue
            prompt = ([{"role": "system", "content": sp}] if sp else []) + [{"role": "user", "content": rec.query}]
            if rec.failure:
                journal.append(PairRecord(id=rec.id, prompt=prompt, chosen="", rejected="",
                                          failure=f"upstream: {rec.failure}"))
                continue
            sel = select_pair(rec, policy, float(p.min_margin))
            if isinstance(sel, str):
                journal.append(PairRecord(id=rec.id, prompt=prompt, chosen="", rejected="", failure=sel))
                continue
            chosen, rejected = sel
            journal.append(PairRecord(
                id=rec.id, prompt=prompt, chosen=completion(chosen, bool(p.include_think)),
                rejected=completion(rejected, bool(p.include_think)),
                chosen_reward=chosen.reward, rejected_reward=rejected.reward,
            ))
