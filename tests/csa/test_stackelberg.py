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
