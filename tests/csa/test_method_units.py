"""Pure pieces of the method: minimal strategy edits, chains, judgement scores, pair selection."""
from __future__ import annotations

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.lingo_bp import EditSettings, apply_edit
from oyster_exp.csa.pair_policies.best_vs_initial import BestVsInitial
from oyster_exp.csa.pair_policies.best_vs_worst import BestVsWorst
from oyster_exp.csa.pairs import PairPolicy, Skip, select_pairs
from oyster_exp.csa.records import OptimizeRecord, TraceEntry
from oyster_exp.csa.replies import EditReply, SafetyJudgement, UserJudgement
from oyster_exp.csa.strategies import JaccardSimilarity, minimal_update


def test_minimal_update_accepts_small_edits_as_proposed() -> None:
    assert minimal_update(["A", "B", "C"], ["A", "B", "D"], 2) == ["A", "B", "D"]


def test_minimal_update_limits_changes_and_keeps_order() -> None:
    cur = ["explain the law", "suggest a lawyer", "stay calm"]
    new = ["explain the relevant law", "X", "Y", "Z"]
    out = minimal_update(cur, new, max_changes=2)
    # at most two edits: the closest replacement first, then one novel addition
    assert out[0] == "explain the relevant law"
    assert out[1:3] == ["suggest a lawyer", "stay calm"]
    assert len(out) == 4
    assert all(s in cur + new for s in out)


def test_minimal_update_zero_budget_changes_nothing() -> None:
    assert minimal_update(["A", "B"], ["X", "Y", "Z"], 0) == ["A", "B"]


def test_no_risk_chain_collapses_in_render() -> None:
    c = SafetyChain(user_needs="bake a cake", risk_intent="No risk", safety_guidelines="",
                    usefulness_strategies=["give a recipe"], safety_strategies=["mention oven safety"])
    text = c.render("en")
    assert "Risk intent" not in text and "give a recipe" in text and "mention oven safety" in text
    risky = c.model_copy(update={"risk_intent": "wants drug doses", "safety_guidelines": "no prescriptions"})
    assert "Risk intent: wants drug doses" in risky.render("en")


def test_user_mode_freezes_safety_nodes_and_never_mutates_input() -> None:
    chain = SafetyChain(user_needs="n", risk_intent="r", safety_guidelines="g",
                        usefulness_strategies=["u1"], safety_strategies=["s1"])
    edit = EditReply(suggestion="x", user_needs="n2", risk_intent="r2", safety_guidelines="g2",
                     usefulness_strategies=["u2"], safety_strategies=["s2"])
    settings = EditSettings(unfrozen={"user": ["user_needs", "usefulness_strategies"],
                                      "both": ["user_needs", "risk_intent", "usefulness_strategies",
                                               "safety_strategies"]},
                            max_changes=2, similarity=JaccardSimilarity())
    out = apply_edit(chain, edit, "user", settings)
    assert out.user_needs == "n2" and out.usefulness_strategies == ["u2"]
    assert out.risk_intent == "r" and out.safety_guidelines == "g" and out.safety_strategies == ["s1"]
    assert chain.user_needs == "n"  # the old chain is untouched (no history aliasing)
    both = apply_edit(chain, edit, "both", settings)
    assert both.risk_intent == "r2" and both.safety_strategies == ["s2"]


def test_scores_are_recomputed_from_items() -> None:
    u = UserJudgement(persona="p", politeness=1, willingness_to_help=1, task_completion=-1, logic=0,
                      informativeness=1, suggestion="s")
    assert u.score == 0.4
    s = SafetyJudgement(risk_intent="r", adapted_guideline="g", verdict="partly_safe", suggestion="s")
    assert s.score == 0.5 and s.risk == 0.5


def _entry(i: int, reward: float, resp: str) -> TraceEntry:
    return TraceEntry(iteration=i, mode="initial" if i == 0 else "both", response=resp, reward=reward)


def _pair(rec: OptimizeRecord, policy: PairPolicy) -> tuple[str, str] | str:
    out = select_pairs(rec, policy)
    if isinstance(out, Skip):
        return out.failure
    assert out[0].rejected is not None
    return out[0].chosen.response, out[0].rejected.response


def test_pair_policies() -> None:
    rec = OptimizeRecord(id="q", query="q", trace=[_entry(0, 0.5, "a"), _entry(1, 1.5, "b"), _entry(2, 0.2, "c")],
                         best_index=1)
    assert _pair(rec, BestVsInitial()) == ("b", "a")
    assert _pair(rec, BestVsWorst()) == ("b", "c")
    assert isinstance(_pair(rec, BestVsInitial(min_margin=2.0)), str)
    no_gain = rec.model_copy(update={"best_index": 0})
    assert "improved" in _pair(no_gain, BestVsInitial())  # type: ignore[operator]
