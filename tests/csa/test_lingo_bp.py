"""Lingo-BP pieces: minimal update, similarities, config mapping and validation, lockstep batching."""
from __future__ import annotations

from pathlib import Path

import pytest
from lingo_world import WorldClient, make_cases, render_reply, tokens_of

from oyster_exp.config.errors import ConfigError
from oyster_exp.config.structured import validate_config
from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.lingo_bp import EditSettings, NaturalRecombiner, PearlPoint, Recombiner
from oyster_exp.csa.optimize import LoopSettings, QueryInput, best_index, optimize_batch, start_index
from oyster_exp.csa.records import OptimizeRecord, TraceEntry
from oyster_exp.csa.strategies import (
    EmbeddingSimilarity,
    ExactSimilarity,
    JaccardSimilarity,
    SimHashSimilarity,
    StrategySimilarity,
    exact,
    jaccard,
    minimal_update,
    simhash_similarity,
)
from oyster_exp.llm.service import LLMService, RoleBinding
from oyster_exp.stages.optimize import settings_from


def test_minimal_update_replaces_in_place_adds_at_the_end_and_counts_items() -> None:
    cur = ["explain the law", "suggest a lawyer", "stay calm"]
    # a close rewording replaces in place (1 edit), a new idea is appended (1 edit), the rest is kept
    out = minimal_update(cur, ["explain the relevant law", "suggest a lawyer", "list hotlines"], 2, jaccard, 0.3)
    assert out == ["explain the relevant law", "suggest a lawyer", "stay calm", "list hotlines"]
    # the whole proposal fits a budget of 3 (one replacement, one addition, one deletion): taken as is
    assert minimal_update(cur, ["explain the relevant law", "suggest a lawyer", "list hotlines"], 3, jaccard, 0.3) \
        == ["explain the relevant law", "suggest a lawyer", "list hotlines"]
    assert minimal_update(cur, ["X", "Y", "Z"], 0) == cur
    assert minimal_update(cur, [], 2) == cur                 # an empty proposal is no opinion
    assert minimal_update(["a", "a ", "b"], ["a", "b"], 0) == ["a", "b"]   # duplicates are one item


@pytest.mark.parametrize("sim", [exact, jaccard, simhash_similarity])
def test_similarities_are_bounded_and_reflexive(sim) -> None:
    pairs = [("explain the law", "explain the relevant law"), ("解释相关法律", "提醒法律风险"), ("a", "zzz qq")]
    for a, b in pairs:
        assert sim(a, a) == pytest.approx(1.0)
        assert 0.0 <= sim(a, b) <= 1.0 and sim(a, b) == pytest.approx(sim(b, a))


def test_simhash_tells_a_rewording_from_a_new_idea() -> None:
    close = simhash_similarity("explain the relevant law to the user clearly", "explain the relevant law to the user")
    far = simhash_similarity("explain the relevant law to the user clearly", "bake a chocolate cake for the party")
    assert close > far and close >= 0.75


def test_embedding_similarity_from_the_embedded_model() -> None:
    from oyster_exp.models.embedded import ensure_embedded_model

    sim = EmbeddingSimilarity(model_dir=str(ensure_embedded_model()))
    assert sim("explain the law", "explain the law") == pytest.approx(1.0, abs=1e-5)
    assert sim("explain the law", "explain the relevant laws") > sim("explain the law", "bake a chocolate cake")
    with pytest.raises(ValueError, match="needs a local model"):
        EmbeddingSimilarity()("a", "b")


SIMILARITY_OPTIONS = {"exact": (ExactSimilarity, 1.0), "jaccard": (JaccardSimilarity, 0.3),
                      "simhash": (SimHashSimilarity, 0.75), "embedding": (EmbeddingSimilarity, 0.7)}


@pytest.mark.parametrize("name", sorted(SIMILARITY_OPTIONS))
def test_each_similarity_option_builds_its_class_with_its_own_threshold(compose_cfg, name: str) -> None:
    cls, threshold = SIMILARITY_OPTIONS[name]
    s = settings_from(compose_cfg("lingo_bp=paper", f"lingo_bp/similarity={name}", "model=tiny_random"))
    sim = s.edit.similarity
    assert type(sim) is cls and sim.replace_threshold == threshold
    assert sim("explain the law", "explain the law") == pytest.approx(1.0, abs=1e-5)
    if name == "embedding":   # the stage handed it the run's base model (model=tiny_random here)
        from oyster_exp.models.resolve import resolve_model_dir

        assert sim.model_dir == str(resolve_model_dir(compose_cfg("model=tiny_random").model))
    moved = settings_from(compose_cfg(f"lingo_bp/similarity={name}", "lingo_bp.similarity.replace_threshold=0.05",
                                      "model=tiny_random")).edit.similarity
    assert moved.replace_threshold == 0.05 and type(moved) is cls


def test_the_threshold_travels_with_the_similarity_into_the_edit() -> None:
    """Same proposal, same similarity measure: the similarity's own threshold decides replace vs add."""
    chain = SafetyChain(user_needs="n", usefulness_strategies=["explain the law"])
    from oyster_exp.csa.lingo_bp import apply_edit
    from oyster_exp.csa.replies import EditReply

    edit = EditReply(suggestion="x", user_needs="", risk_intent="", safety_guidelines="",
                     usefulness_strategies=["explain the relevant law"], safety_strategies=[])
    unfrozen = {"user": ["usefulness_strategies"]}
    loose = apply_edit(chain, edit, "user", EditSettings(unfrozen, 1, JaccardSimilarity()))   # 0.75 >= 0.3
    strict = apply_edit(chain, edit, "user", EditSettings(unfrozen, 1, JaccardSimilarity(replace_threshold=0.9)))
    assert loose.usefulness_strategies == ["explain the relevant law"]      # replaced in place: one edit
    assert strict.usefulness_strategies == ["explain the law", "explain the relevant law"]   # an addition instead
    assert isinstance(JaccardSimilarity(), StrategySimilarity)


def test_recombiners_render_the_edited_chain_as_the_actors_system_turn(compose_cfg) -> None:
    chain = SafetyChain(user_needs="wants the law", risk_intent="legal risk", safety_guidelines="no advice",
                        usefulness_strategies=["explain the law"], safety_strategies=["suggest a lawyer"])
    natural = settings_from(compose_cfg()).recombiner                 # the default
    assert type(natural) is NaturalRecombiner and natural.template == "recombine"
    fixed, conv = natural.messages(chain, "what does the law say?", "en")
    assert fixed is None                                               # the actor writes the reasoning
    assert [m.role for m in conv] == ["system", "user"] and conv[1].content == "what does the law say?"
    assert chain.render("en") in conv[0].content
    ask = natural.think_messages(chain, "what does the law say?", "en")
    assert "explain the law" in ask[0].content and "Do not write the answer yet" in ask[0].content
    template = settings_from(compose_cfg("lingo_bp/recombiner=plan_as_system")).recombiner
    assert type(template) is Recombiner
    think, conv = template.messages(chain, "what does the law say?", "en")
    assert think == chain.render("en") and think in conv[0].content


def test_natural_recombination_puts_the_actors_own_reasoning_in_every_entry() -> None:
    """Both sides of a pair must reason in the actor's words: no trace entry's think is the chain's template."""
    cases = make_cases(6, seed=3)
    by_id = {c.qid: c for c in cases}
    clients = {r: WorldClient(r, by_id) for r in ("actor", "user_judge", "safety_judge", "editor")}
    service = LLMService({r: RoleBinding(client=c) for r, c in clients.items()}, cache=None, seed=42)
    unfrozen = {m: ["user_needs", "usefulness_strategies", "safety_strategies"] for m in ("user", "developer", "both")}
    items = [QueryInput(id=c.qid, query=c.query, lang="en", think=f"Thinking about {c.qid}: initial", chain=c.initial,
                        category="x", guideline="g", response=render_reply(c.qid, sorted(tokens_of(c.initial))))
             for c in cases]
    for recombiner, actor_written in ((NaturalRecombiner(), True), (Recombiner(), False)):
        s = LoopSettings(iterations=["both", "both"], edit=EditSettings(unfrozen, 2, JaccardSimilarity()),
                         recombiner=recombiner)
        entries = [e for r in optimize_batch(service, items, s) for e in r.trace]
        edited = [e for e in entries if e.iteration > 0 and e.chain is not None]
        assert edited and all(e.think.startswith("Thinking about QID-") for e in entries if e.iteration == 0)
        for e in edited:
            assert (e.think != e.chain.render("en")) is actor_written
            assert e.think.startswith("Thinking about QID-") is actor_written
            # the reasoning follows the edited chain: it names the chain's strategies in the actor's words
            if actor_written:
                assert "User needs" not in e.think and "Usefulness strategies" not in e.think


def test_config_maps_to_loop_settings(compose_cfg) -> None:
    s = settings_from(compose_cfg("lingo_bp=safety_then_satisfaction", "stackelberg=on"))
    assert s.iterations == ["developer", "user"]
    assert set(s.edit.unfrozen["user"]) == {"user_needs", "usefulness_strategies"}
    assert "safety_strategies" in s.edit.unfrozen["developer"] and "risk_intent" not in s.edit.unfrozen["developer"]
    assert s.edit.similarity == SimHashSimilarity(replace_threshold=0.75)
    assert s.early_stop is not None and s.early_stop["user"] == PearlPoint(satisfaction=1.0, safety=None)
    assert s.leader.weighs_followers and s.k == 3 and s.regression_guard
    off = settings_from(compose_cfg("lingo_bp=off", "lingo_bp.early_stop.enabled=false", "lingo_bp/similarity=exact",
                                    "lingo_bp.similarity.replace_threshold=0.9"))
    assert off.iterations == [] and off.early_stop is None and off.k == 1
    assert off.edit.similarity == ExactSimilarity(replace_threshold=0.9)
    for option, modes in [("paper", ["both"] * 3), ("user_only", ["user"] * 3), ("developer_only", ["developer"] * 3),
                          ("one_step", ["both"])]:
        assert settings_from(compose_cfg(f"lingo_bp={option}")).iterations == modes


def test_debug_fast_caps_each_schedule_instead_of_replacing_it(compose_cfg) -> None:
    """Smoke runs of the Lingo-BP ablation (debug=fast) must keep its arms distinct."""
    for option, modes in [("off", []), ("paper", ["both"]), ("user_only", ["user"]),
                          ("developer_only", ["developer"]), ("safety_then_satisfaction", ["developer"])]:
        assert settings_from(compose_cfg(f"lingo_bp={option}", "debug=fast")).iterations == modes, option
    assert settings_from(compose_cfg("lingo_bp=paper", "lingo_bp.max_epochs=2")).iterations == ["both", "both"]


@pytest.mark.parametrize("override, key", [
    ("lingo_bp.unfrozen.user=[user_needs,usefulness]", "lingo_bp.unfrozen.user"),
    ("lingo_bp.early_stop.both.safety=1.5", "lingo_bp.early_stop.both.safety"),
    ("lingo_bp.similarity.replace_threshold=-0.1", "lingo_bp.similarity.replace_threshold"),
    ("lingo_bp.max_strategy_changes=-1", "lingo_bp.max_strategy_changes"),
    ("stackelberg=on stackelberg.candidates=0", "stackelberg.candidates"),
    ("stackelberg=on stackelberg.temperature=-1", "stackelberg.temperature"),
    ("lingo_bp.similarity=exact", "lingo_bp.similarity"),     # the old spelling points to lingo_bp/similarity=
])
def test_bad_lingo_bp_settings_name_the_key(compose_cfg, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg(*override.split()), resolve=False)
    assert e.value.key == key


def test_best_and_start_index_follow_the_regression_guard() -> None:
    t = [TraceEntry(iteration=i, mode="both", response=str(i), reward=r) for i, r in enumerate([1.0, 1.5, 0.5])]
    assert best_index(t) == 1
    assert start_index(t, guard=True) == 1 and start_index(t, guard=False) == 2
    tie = [TraceEntry(iteration=i, mode="both", response=str(i), reward=1.0) for i in range(2)]
    assert best_index(tie) == 1 and start_index(tie, guard=True) == 1   # an equal step is not a regression
    assert best_index(tie, later_wins_ties=False) == 0


def test_unused_new_fields_are_left_out_of_records() -> None:
    e = TraceEntry(iteration=0, mode="initial", response="r")
    rec = OptimizeRecord(id="a", query="q", trace=[e])
    for absent in ("parent", "candidates", "chosen", "follower_posterior", "stop_reason"):
        assert absent not in rec.model_dump_json()
    assert OptimizeRecord.model_validate_json(rec.model_dump_json()) == rec


def test_each_step_is_one_service_call_over_all_active_queries(tmp_path: Path) -> None:
    cases = make_cases(9, seed=1)
    by_id = {c.qid: c for c in cases}
    clients = {r: WorldClient(r, by_id) for r in ("actor", "user_judge", "safety_judge", "editor")}
    service = LLMService({r: RoleBinding(client=c) for r, c in clients.items()}, cache=None, seed=42)
    unfrozen = {m: ["user_needs", "usefulness_strategies", "safety_strategies"] for m in ("user", "developer", "both")}
    s = LoopSettings(iterations=["both", "both", "both"], edit=EditSettings(unfrozen, 2, JaccardSimilarity()),
                     early_stop={"both": PearlPoint()})
    items = [QueryInput(id=c.qid, query=c.query, lang="en", think="t", chain=c.initial, category="x", guideline="g",
                        response=render_reply(c.qid, sorted(tokens_of(c.initial)))) for c in cases]
    done: list[str] = []
    results = optimize_batch(service, items, s, on_done=lambda r: done.append(r.item.id))
    active = [sum(1 for r in results if len(r.trace) > i) for i in range(1, 4)]   # queries edited at step i
    assert clients["editor"].batches == [a for a in active if a]
    # each step: one call for all answers, one for all of the actor's reasonings (natural recombination)
    assert clients["actor"].batches == [b for a in active if a for b in (a, a)]
    assert clients["user_judge"].batches == [9] + [a for a in active if a]
    assert sorted(done) == sorted(c.qid for c in cases) and len(done) == len(set(done))
    # queries that stopped early were handed over before the ones that ran the whole schedule
    lengths = {r.item.id: len(r.trace) for r in results}
    assert [lengths[i] for i in done] == sorted(lengths[i] for i in done)


def test_stage_runs_chunks_in_lockstep_journals_per_record_and_resumes(compose_cfg, tmp_path: Path) -> None:
    from oyster_exp.csa.records import AssessmentRecord, ChainRecord, GenerationRecord
    from oyster_exp.csa.replies import RiskAssessment
    from oyster_exp.pipeline.artifacts import CacheEntry, Journal
    from oyster_exp.pipeline.runner import RunContext
    from oyster_exp.stages.optimize import OptimizeStage

    cases = make_cases(7, seed=21)
    by_id = {c.qid: c for c in cases}
    clients = {r: WorldClient(r, by_id) for r in ("actor", "user_judge", "safety_judge", "editor")}
    cfg = compose_cfg("lingo_bp=one_step", "llm.chunk_size=3", "stackelberg=on", "stackelberg.candidates=2")
    ctx = RunContext(cfg=cfg, run_dir=tmp_path, cache_root=tmp_path)
    ctx.service = LLMService({r: RoleBinding(client=c) for r, c in clients.items()}, cache=None, seed=42)
    inputs = {
        "generate": [GenerationRecord(id=c.qid, query=c.query, think="t",
                                      response=render_reply(c.qid, sorted(tokens_of(c.initial)))) for c in cases]
        + [GenerationRecord(id="broken", query="QID-000 x", failure="actor: empty reply")],
        "assess": [AssessmentRecord(id=c.qid, assessment=RiskAssessment(
            category="Unknown Risk", follower_posterior={"malicious": 1.0} if i % 2 else None))
            for i, c in enumerate(cases)] + [AssessmentRecord(id="broken", failure="upstream")],
        "extract": [ChainRecord(id=c.qid, chain=c.initial) for c in cases] + [ChainRecord(id="broken")],
    }
    path = tmp_path / "optimize.jsonl"
    done_before = OptimizeStage().record_type(id=cases[0].qid, query=cases[0].query)
    journal = Journal(path, OptimizeRecord)
    journal.append(done_before)                                   # a record a killed run already wrote
    OptimizeStage().run(ctx, inputs, journal, CacheEntry(tmp_path, "optimize", "k" * 20))
    recs = [OptimizeRecord.model_validate_json(x) for x in path.read_text().splitlines()]
    ids = [r.id for r in recs]
    assert sorted(ids) == sorted([*by_id, "broken"]) and len(ids) == len(set(ids))
    assert recs[0] == done_before                                 # kept, not recomputed
    assert next(r for r in recs if r.id == "broken").failure == "upstream: actor: empty reply"
    assert max(clients["editor"].batches) <= 3                    # chunks of llm.chunk_size
    assert clients["actor"].batches[0] == 3 * 2                   # 3 queries x K=2 initial candidates, one call
    for r in recs[1:]:
        if r.id != "broken":
            assert r.follower_posterior is not None and r.trace[0].candidates is not None
