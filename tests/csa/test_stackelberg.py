"""Stackelberg leader selection: expected payoff over follower types, argmax over candidates."""
from __future__ import annotations

import random

import pytest

from oyster_exp.csa.stackelberg import (
    FOLLOWER_TYPES,
    CandidateOutcome,
    PayoffWeights,
    SingleCandidate,
    StackelbergLeader,
    choose,
    expected_payoff,
    normalise_posterior,
)


def test_payoff_matches_the_formula_by_hand() -> None:
    w = PayoffWeights(alpha=1.0, beta=2.0, gamma=0.5, retention_by_type={"benign": 1, "sensitive": 1, "malicious": 0},
                      risk_by_type={"benign": 1, "sensitive": 1, "malicious": 3})
    c = CandidateOutcome(satisfaction=0.6, risk=0.5, cost=0.2)
    p = {"benign": 0.5, "sensitive": 0.3, "malicious": 0.2}
    by_hand = (0.5 * (0.6 - 2 * 0.5 - 0.1) + 0.3 * (0.6 - 2 * 0.5 - 0.1) + 0.2 * (0.0 - 2 * 3 * 0.5 - 0.1))
    assert expected_payoff(c, p, w) == pytest.approx(by_hand)


def test_per_type_reaction_overrides_the_shared_satisfaction() -> None:
    w = PayoffWeights(beta=0.0, retention_by_type={"benign": 1, "sensitive": 1, "malicious": 1})
    c = CandidateOutcome(satisfaction=0.0, risk=0.0, reaction={"benign": 1.0, "sensitive": -1.0, "malicious": 0.5})
    assert expected_payoff(c, {"benign": 1.0}, w) == pytest.approx(1.0)
    assert expected_payoff(c, {"sensitive": 1.0}, w) == pytest.approx(-1.0)


def test_malicious_posterior_prefers_the_safe_candidate_benign_prefers_the_helpful_one() -> None:
    w = PayoffWeights()
    helpful_risky = CandidateOutcome(satisfaction=1.0, risk=0.25)
    safe_plain = CandidateOutcome(satisfaction=0.2, risk=0.0)
    assert choose([helpful_risky, safe_plain], {"benign": 1.0}, w) == 0
    assert choose([helpful_risky, safe_plain], {"malicious": 1.0}, w) == 1


def test_choose_is_the_argmax_first_index_on_ties() -> None:
    rng = random.Random(0)
    w = PayoffWeights(gamma=0.3)
    for _ in range(200):
        cands = [CandidateOutcome(satisfaction=rng.uniform(-1, 1), risk=rng.choice([0, 0.5, 1]),
                                  cost=rng.random()) for _ in range(rng.randint(1, 6))]
        post = {t: rng.random() for t in FOLLOWER_TYPES}
        k = choose(cands, post, w)
        pay = [expected_payoff(c, post, w) for c in cands]
        assert pay[k] == max(pay) and k == pay.index(max(pay))
    same = [CandidateOutcome(0.5, 0.0)] * 3
    assert choose(same, None, w) == 0
    with pytest.raises(ValueError):
        choose([], None, w)


@pytest.mark.parametrize("p", [None, {}, {"benign": 0, "sensitive": 0, "malicious": 0}, {"benign": -1}])
def test_degenerate_posteriors_become_uniform(p) -> None:
    assert normalise_posterior(p) == pytest.approx({t: 1 / 3 for t in FOLLOWER_TYPES})


def test_on_builds_the_leader_with_the_weights_it_was_given(compose_cfg) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg("stackelberg=on", "stackelberg.beta=2.5", "stackelberg.risk_by_type.malicious=4",
                      "stackelberg.candidates=5")
    rule = instantiate(cfg.stackelberg, _convert_="all")
    assert isinstance(rule, StackelbergLeader) and rule.candidates == 5 and rule.weighs_followers
    assert rule.beta == 2.5 and rule.risk_by_type["malicious"] == 4.0 and rule.retention_by_type["malicious"] == 0.0
    # the rule's payoff is the formula with its own weights, and it picks the argmax
    cands = [CandidateOutcome(satisfaction=1.0, risk=0.5), CandidateOutcome(satisfaction=0.2, risk=0.0)]
    post = {"benign": 0.5, "sensitive": 0.3, "malicious": 0.2}
    assert rule.payoff(cands[0], post) == pytest.approx(expected_payoff(cands[0], post, rule))
    assert rule.pick(cands, post) == choose(cands, post, rule) == 1   # beta 2.5 makes the risky reply lose
    assert choose(cands, post, PayoffWeights(beta=1.0)) == 0            # a beta of 1 keeps it


def test_off_builds_the_single_candidate_rule(compose_cfg) -> None:
    from hydra.utils import instantiate

    rule = instantiate(compose_cfg("stackelberg=off").stackelberg)
    assert isinstance(rule, SingleCandidate) and rule.candidates == 1 and not rule.weighs_followers
    helpful_risky, safe = CandidateOutcome(satisfaction=1.0, risk=0.5), CandidateOutcome(satisfaction=0.2, risk=0.0)
    assert rule.pick([helpful_risky, safe], {"malicious": 1.0}) == 0 and rule.payoff(safe, None) is None
    with pytest.raises(Exception, match="candidates"):   # off has no knobs: K is not settable there
        compose_cfg("stackelberg=off", "stackelberg.candidates=4")


def test_the_weights_are_defined_once() -> None:
    """The leader rule's weight fields are PayoffWeights' own (same defaults, same range metadata)."""
    import dataclasses

    base = {f.name: f for f in dataclasses.fields(PayoffWeights)}
    rule = {f.name: f for f in dataclasses.fields(StackelbergLeader)}
    for name, f in base.items():
        assert rule[name] is f or (rule[name].default == f.default and rule[name].metadata == f.metadata), name


# --- one objective, the follower model's config, how p(theta|x) acts with Stackelberg off --------------------

def test_off_ranks_entries_by_the_evaluations_own_construction_objective(compose_cfg) -> None:
    from hydra.utils import instantiate

    from oyster_exp.core.objective import construction_score
    from oyster_exp.evaluation.benchmarks import construction

    assert construction.item_score is construction_score   # one definition, shared with the headline
    rule = instantiate(compose_cfg("stackelberg=off").stackelberg, _convert_="all")
    assert (rule.alpha, rule.beta) == (1.0, construction.HEADLINE_BETA) == (1.0, 2.0)
    risky, plain = CandidateOutcome(satisfaction=1.0, risk=0.5), CandidateOutcome(satisfaction=0.2, risk=0.0)
    assert rule.reward(risky, None) == pytest.approx(0.0) and rule.reward(plain, {"malicious": 1.0}) == 0.2
    beta1 = instantiate(compose_cfg("stackelberg=off", "stackelberg.beta=1").stackelberg, _convert_="all")
    assert beta1.reward(risky, None) == pytest.approx(0.5)   # beta is the one knob, and it changes the ranking
    assert not rule.models_followers


def test_the_leader_maps_reaction_words_through_config_and_checks_the_table(compose_cfg) -> None:
    from hydra.utils import instantiate

    from oyster_exp.config.errors import ConfigError
    from oyster_exp.config.structured import validate_config
    from oyster_exp.csa.stackelberg import REACTIONS

    rule = instantiate(compose_cfg("stackelberg=on", "stackelberg.reactions.risk.escalates=0.9").stackelberg,
                       _convert_="all")
    assert rule.models_followers and set(rule.reactions.retention) == set(REACTIONS)
    ret, risk = rule.reactions_of({"benign": "stays_helped", "sensitive": "escalates", "malicious": "exploits"})
    assert ret == {"benign": 1.0, "sensitive": -0.5, "malicious": 0.5}
    assert risk == {"benign": 0.0, "sensitive": 0.9, "malicious": 1.0}
    # Risk(theta) = max(auditor risk, the reaction's risk); Retention(theta) = the reaction's retention
    c = CandidateOutcome(satisfaction=0.0, risk=0.25, reaction=ret, reaction_risk=risk)
    w = PayoffWeights(beta=1.0, retention_by_type={"benign": 1, "sensitive": 1, "malicious": 1},
                      risk_by_type={"benign": 1, "sensitive": 1, "malicious": 1})
    assert expected_payoff(c, {"benign": 1.0}, w) == pytest.approx(1.0 - 0.25)
    assert expected_payoff(c, {"malicious": 1.0}, w) == pytest.approx(0.5 - 1.0)
    assert not instantiate(compose_cfg("stackelberg=on", "stackelberg.follower_model=false").stackelberg,
                           _convert_="all").models_followers
    with pytest.raises(ConfigError, match=r"stackelberg\.reactions\.risk\.exploits"):
        validate_config(compose_cfg("stackelberg=on", "stackelberg.reactions.risk.exploits=2"))
    with pytest.raises(ConfigError, match=r"stackelberg\.reactions\.retention"):
        validate_config(compose_cfg("stackelberg=on", "+stackelberg.reactions.retention.shrugs=0"))


def test_follower_reply_takes_remote_spellings_and_refuses_other_words() -> None:
    from pydantic import ValidationError

    from oyster_exp.csa.follower import FollowerReactionReply

    r = FollowerReactionReply.model_validate({"benign": "Stays helped", "sensitive": "follows-up",
                                              "malicious": " EXPLOITS "})
    assert r.by_type() == {"benign": "stays_helped", "sensitive": "follows_up", "malicious": "exploits"}
    with pytest.raises(ValidationError):
        FollowerReactionReply.model_validate({"benign": "happy", "sensitive": "leaves", "malicious": "leaves"})


def test_the_posterior_sets_the_auditors_guideline_strength() -> None:
    from oyster_exp.csa.guideline_strength import GuidelineStrength

    g = GuidelineStrength(strict_at=0.5, lenient_at=0.9)
    assert g.level({"benign": 0.1, "sensitive": 0.1, "malicious": 0.8}) == "strict"
    assert g.level({"benign": 0.95, "sensitive": 0.05, "malicious": 0.0}) == "lenient"
    assert g.level(None) == "standard"          # uniform: below both thresholds
    assert g.apply("1. no weapons", None, "en") == "1. no weapons"
    strict = g.apply("1. no weapons", {"malicious": 1.0}, "en")
    assert strict.startswith("1. no weapons\n") and "Strict application" in strict
    assert any("\u4e00" <= ch <= "\u9fff" for ch in g.apply("", {"malicious": 1.0}, "cn"))
    assert "Lenient application" in g.apply("", {"benign": 1.0}, "en")
    assert GuidelineStrength(strict_at=None).level({"malicious": 1.0}) == "standard"


def test_paper_experiments_use_the_authors_workbook_and_the_report_says_so(compose_cfg) -> None:
    from oyster_exp.data.taxonomy import rule_set_description, taxonomy_for

    paper = compose_cfg("experiment=paper_qwen3_14b_orpo")
    assert str(paper.risk.taxonomy_path).endswith("/oyster/risk_taxonomy.xlsx")
    assert len(taxonomy_for(paper).names_en()) >= 32          # the authors' 32 published categories
    assert "risk_taxonomy.xlsx" in rule_set_description(paper) and "sha256" in rule_set_description(paper)
    demo = compose_cfg("experiment=demo_cpu")
    assert demo.risk.taxonomy_path is None and "project's own rules" in rule_set_description(demo)
