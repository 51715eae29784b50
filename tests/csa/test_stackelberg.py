"""Stackelberg leader selection: expected payoff over follower types, argmax over candidates."""
from __future__ import annotations

import random

import pytest

from oyster_exp.csa.stackelberg import (
    FOLLOWER_TYPES,
    CandidateOutcome,
    PayoffWeights,
    choose,
    expected_payoff,
    normalise_posterior,
    weights_from,
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
    helpful_risky = CandidateOutcome(satisfaction=1.0, risk=0.5)
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


def test_weights_from_config(compose_cfg) -> None:
    w = weights_from(compose_cfg("stackelberg=on", "stackelberg.beta=2.5", "stackelberg.risk_by_type.malicious=4").stackelberg)
    assert w.beta == 2.5 and w.risk_by_type["malicious"] == 4.0 and w.retention_by_type["malicious"] == 0.0
