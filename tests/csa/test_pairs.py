"""Preference pairs: the four policy components, margins, safety filter, refusals, dedup, SFT export, stats."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from oyster_exp.csa.pair_policies.all_improving import AllImproving
from oyster_exp.csa.pair_policies.best_vs_initial import BestVsInitial
from oyster_exp.csa.pair_policies.best_vs_worst import BestVsWorst
from oyster_exp.csa.pair_policies.refusal_as_rejected import RefusalAsRejected
from oyster_exp.csa.pairs import (
    REFUSALS,
    PairPolicy,
    Skip,
    pair_records,
    pair_stats,
    refusal,
    select_pairs,
    sft_rows,
)
from oyster_exp.csa.records import OptimizeRecord, PairRecord, TraceEntry
from oyster_exp.csa.replies import SafetyJudgement
from oyster_exp.pipeline.artifacts import CacheEntry, Journal, read_records
from oyster_exp.pipeline.runner import RunContext
from oyster_exp.stages.pairs import SFT_FILE, PairsStage


def _safety(verdict: str) -> SafetyJudgement:
    return SafetyJudgement(risk_intent="r", adapted_guideline="g", verdict=verdict, suggestion="s")  # type: ignore[arg-type]


def _e(i: int, reward: float | None, resp: str, verdict: str = "safe", failure: str | None = None) -> TraceEntry:
    return TraceEntry(iteration=i, mode="initial" if i == 0 else "both", think=f"plan {i}", response=resp,
                      reward=reward, safety=_safety(verdict) if reward is not None else None, failure=failure)


def _rec(*entries: TraceEntry, best: int | None = None, qid: str = "q1", lang: str = "en") -> OptimizeRecord:
    if best is None:
        scored = [(e.reward, i) for i, e in enumerate(entries) if e.reward is not None]
        best = max(scored)[1] if scored else None
    return OptimizeRecord(id=qid, query="how do I ...?", language=lang, trace=list(entries), best_index=best)


PROMPT = [{"role": "user", "content": "how do I ...?"}]
CLASSES: dict[str, type[PairPolicy]] = {"best_vs_initial": BestVsInitial, "best_vs_worst": BestVsWorst,
                                        "all_improving": AllImproving, "refusal_as_rejected": RefusalAsRejected}


def P(name: str, **knobs: object) -> PairPolicy:
    """The policy `pairs=<name>` builds, with knobs set as `pairs.<knob>=` would."""
    return CLASSES[name](**knobs)  # type: ignore[arg-type]


def test_best_vs_initial_and_best_vs_worst() -> None:
    rec = _rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"), _e(2, 0.2, "c"))
    (p,) = pair_records(rec, PROMPT, P("best_vs_initial", include_think=False))
    assert (p.id, p.chosen, p.rejected, p.margin) == ("q1", "b", "a", 1.0)
    (p,) = pair_records(rec, PROMPT, P("best_vs_worst", include_think=False))
    assert (p.chosen, p.rejected, p.rejected_reward) == ("b", "c", 0.2)
    assert p.policy == "best_vs_worst" and p.language == "en" and p.query_id == "q1"


def test_all_improving_gives_one_pair_per_improving_entry_with_suffixed_ids() -> None:
    rec = _rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"), _e(2, 0.2, "c"), _e(3, 0.9, "d"))
    pairs = pair_records(rec, PROMPT, P("all_improving", include_think=False))
    assert [(p.id, p.chosen, p.rejected) for p in pairs] == [("q1#1", "b", "a"), ("q1#3", "d", "a")]
    # a strict gain is needed: an entry tied with the initial one is no pair
    tied = _rec(_e(0, 0.5, "a"), _e(1, 0.5, "b"))
    out = select_pairs(tied, P("all_improving"))
    assert isinstance(out, Skip) and out.reason == "no_improvement"


def test_min_margin_and_the_no_improvement_case() -> None:
    rec = _rec(_e(0, 0.5, "a"), _e(1, 0.8, "b"))
    out = select_pairs(rec, P("best_vs_initial", min_margin=0.5))
    assert isinstance(out, Skip) and out.reason == "below_margin" and "0.300" in out.detail
    assert not isinstance(select_pairs(rec, P("best_vs_initial", min_margin=0.3)), Skip)
    no_gain = _rec(_e(0, 1.0, "a"), _e(1, 0.2, "b"))
    out = select_pairs(no_gain, P("best_vs_initial"))
    assert isinstance(out, Skip) and out.reason == "no_improvement"


def test_require_safe_chosen() -> None:
    rec = _rec(_e(0, 0.0, "a"), _e(1, 1.5, "b", verdict="partly_safe"))
    assert not isinstance(select_pairs(rec, P("best_vs_initial")), Skip)
    out = select_pairs(rec, P("best_vs_initial", require_safe_chosen=True))
    assert isinstance(out, Skip) and out.reason == "unsafe_chosen" and "partly_safe" in out.detail


def test_include_think_switch() -> None:
    rec = _rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"))
    (p,) = pair_records(rec, PROMPT, P("best_vs_initial", include_think=True))
    assert p.chosen == "<think>\nplan 1\n</think>\n\nb" and p.rejected.startswith("<think>\nplan 0\n</think>")
    (p,) = pair_records(rec, PROMPT, P("best_vs_initial", include_think=False))
    assert "<think>" not in p.chosen + p.rejected


def test_refusal_as_rejected_is_deterministic_per_seed_and_language() -> None:
    rec = _rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"))
    (p,) = pair_records(rec, PROMPT, P("refusal_as_rejected", include_think=False), seed=1)
    assert p.chosen == "b" and p.rejected in REFUSALS["en"] and p.rejected_reward is None and p.margin is None
    again = pair_records(rec, PROMPT, P("refusal_as_rejected", include_think=False), seed=1)[0]
    assert again.rejected == p.rejected
    by_seed = {refusal("q1", "en", seed, False) for seed in range(40)}
    assert len(by_seed) > 1, "the seed picks among the refusals"
    cn = _rec(_e(0, 0.5, "a"), _e(1, 1.5, "乙"), lang="cn")
    (p,) = pair_records(cn, PROMPT, P("refusal_as_rejected", include_think=True))
    assert p.rejected.split("</think>\n\n")[1] in REFUSALS["cn"] and p.rejected.startswith("<think>")
    # with an assumed refusal reward, min_margin applies
    out = select_pairs(rec, P("refusal_as_rejected", refusal_reward=1.2, min_margin=0.5))
    assert isinstance(out, Skip) and out.reason == "below_margin"
    (p,) = pair_records(rec, PROMPT, P("refusal_as_rejected", refusal_reward=0.0))
    assert p.margin == 1.5


def test_backend_errors_never_become_pair_text() -> None:
    """Regression (reference §10.3 #7): an API error must be a failure, never an empty response in a pair."""
    failed_best = _rec(_e(0, 0.5, "a"), _e(1, None, "", failure="recombine: backend error: HTTP 500"), best=1)
    for policy in ("best_vs_initial", "best_vs_worst", "all_improving", "refusal_as_rejected"):
        for p in pair_records(failed_best, PROMPT, P(policy)):
            assert p.failure or (p.chosen.strip() and p.rejected.strip()), (policy, p)
            assert p.failure is None or p.failure.split(":")[0] in {"too_few_judged", "no_improvement"}
    # a judged entry whose response came back empty is not usable either
    empty = _rec(_e(0, 0.5, ""), _e(1, 1.5, "b"))
    out = select_pairs(empty, P("best_vs_initial"))
    assert isinstance(out, Skip) and out.reason == "too_few_judged"
    up = OptimizeRecord(id="q9", query="x", failure="upstream: generate: backend error: HTTP 500")
    (p,) = pair_records(up, PROMPT, P("best_vs_initial"))
    assert p.failure and p.failure.startswith("upstream:") and "HTTP 500" in p.failure and p.chosen == ""


def test_unknown_policy_or_knob_is_a_composition_error(compose_cfg) -> None:
    with pytest.raises(Exception, match="pairs/nope"):
        compose_cfg("pairs=nope")
    with pytest.raises(Exception, match="refusal_reward"):   # a knob of refusal_as_rejected only
        compose_cfg("pairs=best_vs_initial", "pairs.refusal_reward=0.5")


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_option_composes_to_its_class_and_behaves_like_it(compose_cfg, name: str) -> None:
    """`pairs=<name>` builds that class with the YAML's knobs, and the built object cuts the same pairs."""
    policy = instantiate(compose_cfg(f"pairs={name}", "pairs.min_margin=0.25", "pairs.include_think=false").pairs)
    assert type(policy) is CLASSES[name] and policy.name == name
    assert (policy.min_margin, policy.include_think, policy.dedupe, policy.sft_export) == (0.25, False, True, True)
    rec = _rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"), _e(2, 0.6, "c"), _e(3, 0.2, "d"))
    got = [(p.id, p.chosen, p.rejected) for p in pair_records(rec, PROMPT, policy, seed=3)]
    want = {"best_vs_initial": [("q1", "b", "a")], "best_vs_worst": [("q1", "b", "d")],
            "all_improving": [("q1#1", "b", "a")],   # entry 2 gains 0.1 < min_margin, entry 3 loses
            "refusal_as_rejected": [("q1", "b", refusal("q1", "en", 3, False))]}[name]
    assert got == want


def _ctx(compose_cfg, tmp_path: Path, *overrides: str) -> RunContext:
    cfg = compose_cfg("model=tiny_random", *overrides)
    return RunContext(cfg=cfg, run_dir=tmp_path / "run", cache_root=tmp_path / "cache")


def _run_stage(ctx: RunContext, optimize: list[OptimizeRecord], tmp_path: Path) -> tuple[list[PairRecord], CacheEntry]:
    stage = PairsStage()
    entry = CacheEntry(tmp_path / "cache" / "stages", "pairs", "k" * 40)
    journal = Journal(entry.records_path, PairRecord)
    stage.run(ctx, {"queries": [], "optimize": optimize}, journal, entry)
    journal.close()
    return read_records(entry.records_path, PairRecord), entry


def test_stage_dedupes_exports_sft_and_summarises(compose_cfg, tmp_path: Path) -> None:
    same = [_rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"), qid=q) for q in ("q1", "q2")]   # same prompt and texts
    other = _rec(_e(0, 0.5, "x"), _e(1, 1.2, "y"), qid="q3", lang="cn")
    none = _rec(_e(0, 1.0, "m"), _e(1, 0.0, "n"), qid="q4")
    ctx = _ctx(compose_cfg, tmp_path, "pairs=best_vs_initial")
    pairs, entry = _run_stage(ctx, [*same, other, none], tmp_path)
    assert [p.id for p in pairs] == ["q1", "q2", "q3", "q4"]
    assert pairs[1].failure == "duplicate: same prompt, chosen and rejected as q1" and pairs[1].chosen == ""
    rows = [json.loads(x) for x in (entry.dir / "files" / SFT_FILE).read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q3"]
    assert rows[0]["prompt"][-1] == {"role": "user", "content": "how do I ...?"}
    assert rows[0]["completion"] == [{"role": "assistant", "content": pairs[0].chosen}]
    stats = PairsStage().summarize(ctx, pairs)
    assert stats == {"pairs": 2, "pairs_by_policy": {"best_vs_initial": 2}, "queries_with_pairs": 2,
                     "skipped_by_reason": {"duplicate": 1, "no_improvement": 1}, "duplicates": 1,
                     "mean_margin": pytest.approx(0.85), "languages": {"en": 1, "cn": 1}, "sft_rows": 2}


def test_dedupe_switch_and_sft_switch(compose_cfg, tmp_path: Path) -> None:
    same = [_rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"), qid=q) for q in ("q1", "q2")]
    ctx = _ctx(compose_cfg, tmp_path, "pairs.dedupe=false", "pairs.sft_export=false")
    pairs, entry = _run_stage(ctx, same, tmp_path)
    assert [p.failure for p in pairs] == [None, None]
    assert not (entry.dir / "files" / SFT_FILE).exists()
    assert len(sft_rows(pairs)) == 1   # the SFT view keeps each (prompt, chosen) once


def test_stage_resume_writes_nothing_twice_and_keeps_dedup(compose_cfg, tmp_path: Path) -> None:
    recs = [_rec(_e(0, 0.5, "a"), _e(1, 1.5, "b"), _e(2, 1.7, "c"), qid=q) for q in ("q1", "q2")]
    ctx = _ctx(compose_cfg, tmp_path, "pairs=all_improving")
    entry = CacheEntry(tmp_path / "cache" / "stages", "pairs", "k" * 40)
    j = Journal(entry.records_path, PairRecord)
    j.append(pair_records(recs[0], PROMPT, P("all_improving"), seed=42)[0])   # killed after q1#1
    j.close()
    pairs, _ = _run_stage(ctx, recs, tmp_path)
    assert [p.id for p in pairs] == ["q1#1", "q1#2", "q2#1", "q2#2"]
    assert [p.failure is None for p in pairs] == [True, True, False, False]   # q2 duplicates q1
    assert pair_stats(pairs)["pairs_by_policy"] == {"all_improving": 2}
