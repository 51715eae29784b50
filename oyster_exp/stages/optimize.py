"""optimize: Lingo-BP over each query's safety chain (with Stackelberg selection), the full judged trace.

Queries go through the loop in chunks of `llm.chunk_size`, all of a chunk in lockstep; each query's
record is journaled when its own loop ends, so a killed run resumes without redoing finished queries.
"""
from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from oyster_exp.core.estimates import CHARS_PER_TOKEN, GUIDELINE_CHARS, CallEstimate, Workload
from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.guideline_strength import GuidelineStrength
from oyster_exp.csa.lingo_bp import MODES, EditSettings, LingoBPSettings, Recombiner, lingo_schedule
from oyster_exp.csa.optimize import LoopSettings, QueryInput, QueryResult, best_index, optimize_batch
from oyster_exp.csa.players import judge_item_for
from oyster_exp.csa.prompts import template_chars
from oyster_exp.csa.records import OptimizeRecord, transient_failure
from oyster_exp.csa.stackelberg import LeaderRule, normalise_posterior
from oyster_exp.csa.strategies import StrategySimilarity
from oyster_exp.data.taxonomy import TAXONOMY_ASSET, taxonomy_for, taxonomy_inputs
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage


def settings_from(cfg: Any, actor_max_tokens: int | None = None) -> LoopSettings:
    """Loop settings from the `lingo_bp` and `stackelberg` groups, both built by `instantiate`.

    The embedding similarity reads the base model's embedding matrix: it receives the model
    directory here (resolved only if that similarity asks for it, and read on first use).
    """
    lb: LingoBPSettings = instantiate(cfg.lingo_bp, _convert_="all")
    leader: LeaderRule = instantiate(cfg.stackelberg, _convert_="all")

    def model_dir() -> Any:
        from oyster_exp.models.resolve import resolve_model_dir

        return resolve_model_dir(cfg.model)

    edit = EditSettings(unfrozen={m: tuple(lb.unfrozen[m]) for m in MODES},
                        max_changes=int(lb.max_strategy_changes), similarity=lb.similarity.with_base_model(model_dir))
    if actor_max_tokens is None:
        actor_max_tokens = int(cfg.llm.roles.actor.max_tokens)
    return LoopSettings(iterations=lingo_schedule(lb), edit=edit, recombiner=lb.recombiner,
                        regression_guard=bool(lb.regression_guard), later_wins_ties=bool(lb.later_wins_ties),
                        early_stop=lb.early_stop.points(), leader=leader, actor_max_tokens=actor_max_tokens,
                        system_prompt=str(cfg.data.system_prompt or ""))


def record_from(res: QueryResult, s: LoopSettings) -> OptimizeRecord:
    """A query's loop result; with no judged entry at all, a transient failure (its judge or actor calls failed)."""
    it, best = res.item, best_index(res.trace, s.later_wins_ties)
    failure = None if best is not None else (res.trace[0].failure if res.trace else None) or "no judged trace entry"
    return OptimizeRecord(id=it.id, query=it.query, language=it.lang, trace=res.trace, best_index=best,
                          **(transient_failure(failure) if failure else {}), stop_reason=res.stop_reason,
                          follower_posterior=normalise_posterior(it.posterior) if s.leader.weighs_followers else None)


def instantiate_strength(cfg: Any) -> GuidelineStrength:
    """`risk.guideline_strength` as the dataclass (the node is typed by the risk schema)."""
    node = cfg.risk.get("guideline_strength")
    return instantiate(node, _convert_="all") if node is not None else GuidelineStrength()


class OptimizeStage(Stage):
    name = "optimize"
    version = 4                            # 2: the auditor sees every assessed category's rules; 3: natural
                                           # recombination, judges with rubrics, the editor sees both assessments;
                                           # 4: entries ranked by the leader rule (alpha*S - beta*R or the payoff),
                                           # guideline strength from p(theta|x)
    record_type = OptimizeRecord
    inputs = ("generate", "assess", "extract", "queries")   # queries: the persona and task the judges see
    # llm.roles covers llm.roles.follower (the follower model's own role, when configured)
    config_keys = ("llm.roles", "llm.max_retries", "lingo_bp", "stackelberg", "seed", "data.system_prompt",
                   "risk.taxonomy_path", "risk.guideline_strength")
    unkeyed_keys = ("llm.chunk_size",)       # see GenerateStage
    templates = ("user_judge", "safety_judge", "edit", "recombine", "recombine_think", "follower",
                 "guideline_strength")
    assets = (TAXONOMY_ASSET,)

    def declared_keys(self, cfg: DictConfig) -> tuple[str, ...]:
        # the embedding similarity embeds strategies with the base model: then the model decides the output
        similarity: StrategySimilarity = instantiate(cfg.lingo_bp.similarity, _convert_="all")
        return (*self.config_keys, "model") if similarity.reads_base_model else self.config_keys

    def estimate(self, cfg: DictConfig, work: Workload) -> list[CallEstimate]:
        """Requests per train query, K = stackelberg.candidates when on, else 1, E = Lingo-BP epochs:
        the initial answer judged (K actor samples first when K > 1), then per epoch one edit, K
        recombinations (and, with the natural recombiner, one reasoning call) and both judges on each (and
        the follower role on each when the leader rule models followers: stackelberg=on with follower_model).
        An upper bound, exact when no query stops early: a query that reaches its pearl point
        (lingo_bp.early_stop) or fails a step skips its remaining epochs, and a failed candidate is not judged."""
        leader: LeaderRule = instantiate(cfg.stackelberg, _convert_="all")
        k = int(leader.candidates)                           # the leader rule: 1 unless stackelberg=on
        epochs = len(lingo_schedule(cfg.lingo_bp))
        n, q = work.train, work.query_chars
        resp = int(cfg.llm.roles.actor.max_tokens) * CHARS_PER_TOKEN
        chain = int(cfg.llm.roles.editor.max_tokens) * CHARS_PER_TOKEN
        judged = n * k * (1 + epochs)
        out = [CallEstimate("user_judge", judged, q + resp + template_chars("user_judge")),
               CallEstimate("safety_judge", judged, q + resp + GUIDELINE_CHARS + template_chars("safety_judge"))]
        if leader.models_followers:   # the follower role (the user simulator's backend unless configured)
            out.append(CallEstimate("follower", judged, q + resp + template_chars("follower")))
        if k > 1:
            out.append(CallEstimate("actor", n * k, q))
        if epochs:
            edit_chars = q + resp + chain + 2 * GUIDELINE_CHARS + template_chars("edit")
            out += [CallEstimate("editor", n * epochs, edit_chars),
                    CallEstimate("actor", n * k * epochs, q + chain + template_chars("recombine"))]
            recombiner: Recombiner = instantiate(cfg.lingo_bp.recombiner, _convert_="all")
            if recombiner.fixed_think(SafetyChain(), "en") is None:   # the actor writes its reasoning: one call
                out.append(CallEstimate("actor", n * epochs, q + chain + template_chars("recombine_think")))
        return out

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        return taxonomy_inputs(ctx.cfg)

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        s = settings_from(ctx.cfg)
        tax = taxonomy_for(ctx.cfg)
        strength: GuidelineStrength = instantiate_strength(ctx.cfg)
        assess = {r.id: r for r in inputs["assess"]}
        chains = {r.id: r for r in inputs["extract"]}
        queries = {r.id: r for r in inputs.get("queries", [])}
        todo: list[QueryInput] = []
        for g in inputs["generate"]:
            if g.id in journal:
                continue
            a, c = assess.get(g.id), chains.get(g.id)
            upstream = g.failure or (a.failure if a else "no assessment") or (c.failure if c else "no chain")
            if upstream:
                journal.append(OptimizeRecord(id=g.id, query=g.query, language=g.language,
                                              failure=f"upstream: {upstream}"))
                continue
            # the auditor's view: every assessed category, one rule block each, in the query's language
            view = judge_item_for(g.query, "", g.language, a, tax)
            posterior = getattr(a.assessment, "follower_posterior", None) if a.assessment else None
            q = queries.get(g.id)
            # p(theta|x) sets how strictly the auditor applies those rules (risk.guideline_strength)
            category, guideline = view.category, strength.apply(view.guideline, posterior, g.language)
            todo.append(QueryInput(id=g.id, query=g.query, lang=g.language, think=g.think, response=g.response,
                                   chain=c.chain or SafetyChain(), category=category, guideline=guideline,
                                   posterior=posterior, persona=q.persona if q else "", task=q.task if q else ""))
        size = int(ctx.cfg.llm.chunk_size)
        for start in range(0, len(todo), size):
            optimize_batch(ctx.service, todo[start:start + size], s,
                           on_done=lambda res: journal.append(record_from(res, s)))
