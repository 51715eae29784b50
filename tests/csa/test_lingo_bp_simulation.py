"""Lingo-BP and Stackelberg selection in a deterministic rule-based world (tests/lingo_world.py).

The real loop, the real LLMService (schema validation, retries, call cache) and the real config
tree; only the model is simulated, by rules whose optimum is known for every query.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lingo_world import (
    MARK,
    OPTIMUM,
    Case,
    WorldClient,
    make_cases,
    reachable,
    render_reply,
    sat_score,
    tokens_of,
    verdict,
    world_reactions,
    world_reward,
)

from oyster_exp.csa.optimize import QueryInput, QueryResult, optimize_batch
from oyster_exp.csa.stackelberg import CandidateOutcome, expected_payoff, normalise_posterior
from oyster_exp.llm.cache import CallCache
from oyster_exp.llm.service import LLMService, RoleBinding
from oyster_exp.stages.optimize import settings_from

ROLES = ("actor", "user_judge", "safety_judge", "editor", "follower")
POSTERIORS: list[dict[str, float] | None] = [None, {"benign": 0.8, "sensitive": 0.15, "malicious": 0.05},
                                             {"benign": 0.1, "sensitive": 0.2, "malicious": 0.7}]


def run_world(cfg: Any, cases: list[Case], tmp: Path, malformed_every: int = 0
              ) -> tuple[list[QueryResult], dict[str, WorldClient], LLMService]:
    by_id = {c.qid: c for c in cases}
    clients = {r: WorldClient(r, by_id, malformed_every=malformed_every if r != "actor" else 0) for r in ROLES}
    roles = {r: RoleBinding(client=clients[r], temperature=float(cfg.llm.roles[r].temperature),
                            max_tokens=int(cfg.llm.roles[r].max_tokens)) for r in ROLES}
    service = LLMService(roles, cache=CallCache(tmp / "calls.sqlite"), max_retries=2, seed=42)
    items = [QueryInput(id=c.qid, query=c.query, lang="en", think="(initial reasoning)",
                        response=render_reply(c.qid, sorted(tokens_of(c.initial))), chain=c.initial,
                        category="Unknown Risk", guideline="1. no operational help",
                        posterior=POSTERIORS[i % len(POSTERIORS)]) for i, c in enumerate(cases)]
    return optimize_batch(service, items, settings_from(cfg)), clients, service


def _reached(res: QueryResult) -> bool:
    return res.best_index is not None and res.trace[res.best_index].reward == OPTIMUM


SAFETY_SCORE = {"safe": 1.0, "partly_safe": 0.5, "unsafe": 0.0}   # a verdict as a safety score


def test_lingo_bp_reaches_the_world_optimum_for_90_percent_of_50_queries(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("lingo_bp=paper")
    cases = make_cases(50)
    results, clients, service = run_world(cfg, cases, tmp_path, malformed_every=5)
    assert [r.item.id for r in results] == [c.qid for c in cases]
    reached = [_reached(r) for r in results]
    assert sum(reached) / len(cases) >= 0.9
    # every query that the schedule can fix is fixed; the rest are exactly the ones it cannot
    assert reached == [reachable(c, epochs=3) for c in cases]
    assert not all(reached), "the world should hold a few queries beyond three epochs"
    for case, res in zip(cases, results):
        # each entry's scores are the world's truth for that entry's own response (no aliasing)
        for e in res.trace:
            toks = set(MARK.findall(e.response))
            assert e.user is not None and e.user.score == pytest.approx(sat_score(case, toks))
            assert e.safety is not None and e.safety.verdict == verdict(case, toks)
            assert e.chain is not None and tokens_of(e.chain) == toks
        if _reached(res):
            assert res.stop_reason is None or "pearl point" in res.stop_reason
    # malformed first attempts were re-asked, and none became data or a failure
    usage = service.usage.totals()
    assert usage["retries"] > 0 and usage["failures"] == 0
    # lockstep: every step is one service call over every still-active query
    assert clients["editor"].batches[0] == sum(1 for r in results if len(r.trace) > 1)
    assert len(clients["editor"].batches) <= 3 + usage["retries"]


def test_stackelberg_on_picks_the_payoff_maximising_candidate_every_time(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("lingo_bp=paper", "stackelberg=on", "stackelberg.candidates=4", "stackelberg.gamma=0.5")
    cases = make_cases(30, seed=11)
    results, _, _ = run_world(cfg, cases, tmp_path)
    w = settings_from(cfg).leader   # the leader rule carries the payoff weights
    max_tokens = int(cfg.llm.roles.actor.max_tokens)
    checked = not_first = 0
    for case, res in zip(cases, results):
        posterior = normalise_posterior(res.item.posterior)
        for e in res.trace:
            assert e.candidates is not None and len(e.candidates) == 4 and e.chosen is not None
            # brute force over the recorded candidates, from the world's own rules (not the judges' replies)
            truth = []
            for c in e.candidates:
                toks = set(MARK.findall(c.response))
                retention, risk = w.reactions.of(world_reactions(case, toks))
                outcome = CandidateOutcome(satisfaction=sat_score(case, toks),
                                           risk=1.0 - SAFETY_SCORE[verdict(case, toks)],
                                           cost=min(1.0, len(c.response.split()) / max_tokens),
                                           reaction=retention, reaction_risk=risk)
                truth.append(expected_payoff(outcome, posterior, w))
                assert c.payoff == pytest.approx(truth[-1])
                assert c.reactions == world_reactions(case, toks)
            best = max(range(len(truth)), key=lambda k: (truth[k], -k))
            assert e.chosen == best, (case.qid, e.iteration, truth)
            assert e.response == e.candidates[best].response
            # the payoff that chose the entry is its reward: the best entry and the pairs follow it
            assert e.reward == pytest.approx(truth[best]) and e.payoff == pytest.approx(truth[best])
            assert e.reactions == e.candidates[best].reactions
            assert len({c.seed for c in e.candidates}) == 4
            checked += 1
            not_first += best != 0
    assert checked >= 60 and not_first > 0, "the choice must sometimes differ from the first candidate"


def test_lingo_bp_off_leaves_the_initial_score_unchanged(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("lingo_bp=off")
    cases = make_cases(20, seed=3)
    results, clients, _ = run_world(cfg, cases, tmp_path)
    for case, res in zip(cases, results):
        assert len(res.trace) == 1 and res.best_index == 0
        assert res.trace[0].reward == pytest.approx(world_reward(case, tokens_of(case.initial)))
        assert res.trace[0].response == res.item.response and res.trace[0].chain == case.initial
    assert not clients["editor"].requests and not clients["actor"].requests


@pytest.mark.parametrize("guard", [True, False])
def test_regression_guard_restarts_from_the_best_entry(compose_cfg, tmp_path: Path, guard: bool) -> None:
    cfg = compose_cfg("lingo_bp=paper", f"lingo_bp.regression_guard={str(guard).lower()}",
                      "lingo_bp.early_stop.enabled=false", "lingo_bp.max_strategy_changes=4")
    cases = [c for c in make_cases(30, seed=5, sabotage=True) if c.sabotage][:8]
    results, clients, _ = run_world(cfg, cases, tmp_path)
    prompts = ["\n".join(m.content for m in r.messages) for r in clients["editor"].requests]
    for res in results:
        t = res.trace
        assert len(t) == 4
        assert t[1].reward is not None and t[0].reward is not None and t[1].reward < t[0].reward  # the sabotage
        retried = [p for p in prompts if res.item.id in p and "Try a different change" in p]
        if guard:
            assert t[2].parent == 0                       # went back to the best entry ...
            assert len(retried) == 1 and f"Reply: {t[0].response}\n" in retried[0]   # ... and its response
            assert t[2].reward is not None and t[2].reward >= t[0].reward
            good = {c.qid: set(c.good_u) for c in cases}[res.item.id]
            assert tokens_of(t[0].chain) & good <= tokens_of(t[2].chain)  # type: ignore[arg-type]
        else:
            assert t[2].parent is None and not retried    # continued from the worse entry
            assert any(f"Reply: {t[1].response}\n" in p for p in prompts)
    if guard:
        assert all(_reached(r) or len(r.trace) == 4 for r in results)


def test_early_stop_at_configured_pearl_point_below_perfect(compose_cfg, tmp_path: Path) -> None:
    cases = make_cases(20, seed=9)
    loose = compose_cfg("lingo_bp=paper", "lingo_bp.early_stop.both.satisfaction=0.6",
                        "lingo_bp.early_stop.both.safety=0.5")
    res_loose, _, _ = run_world(loose, cases, tmp_path / "a")
    off = compose_cfg("lingo_bp=paper", "lingo_bp.early_stop.enabled=false")
    res_off, _, _ = run_world(off, cases, tmp_path / "b")
    stopped = 0
    for a, b in zip(res_loose, res_off):
        assert len(b.trace) == 4 and b.stop_reason is None     # disabled: the whole schedule runs
        last = a.trace[-1]
        assert last.user is not None and last.safety is not None
        if len(a.trace) < 4:
            stopped += 1
            assert "pearl point" in (a.stop_reason or "")
            assert last.user.score >= 0.6 and last.safety.score >= 0.5
        # no entry before the last one already met the thresholds (the loop stops at the first)
        for e in a.trace[:-1]:
            assert not (e.user.score >= 0.6 and e.safety.score >= 0.5)  # type: ignore[union-attr]
    assert stopped >= 5
