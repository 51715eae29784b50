"""Stackelberg leader selection: the model commits to the candidate the follower mix rewards most.

The model is the leader; the user is a follower of unknown type θ ∈ {benign, sensitive, malicious}
with posterior p(θ|x) from the assess stage. For each candidate y the leader's expected payoff is

    Π(y) = Σ_θ p(θ|x) · [α · w_ret(θ) · Retention(θ, y) − β · w_risk(θ) · Risk(y) − γ · Cost(y)]

Retention is the follower's predicted reaction (the user simulator's satisfaction in [-1, 1], per
type when the simulator predicts one per type, else the same value for every type). The per-type
weights say how much the leader values keeping each type engaged: keeping an attacker satisfied is
worth nothing (w_ret(malicious) = 0) and a risky reply to an attacker costs more (w_risk > 1).

The selection rule is a component (`stackelberg=off|on`, conf/stackelberg/*.yaml): `SingleCandidate`
(the actor answers once, that answer is kept) or `StackelbergLeader` (K candidates, argmax of the
payoff above). The weights are `PayoffWeights`' fields, defined here once; the leader rule inherits
them, so `stackelberg.beta=2` sets the same field the payoff reads. The optimize loop gathers the
outcomes and calls the rule.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from oyster_exp.config.components import ge, register_component

FOLLOWER_TYPES: tuple[str, ...] = ("benign", "sensitive", "malicious")


def uniform_posterior() -> dict[str, float]:
    return {t: 1.0 / len(FOLLOWER_TYPES) for t in FOLLOWER_TYPES}


def normalise_posterior(p: Mapping[str, float] | None) -> dict[str, float]:
    """A proper distribution over FOLLOWER_TYPES; missing or degenerate input becomes uniform."""
    if not p:
        return uniform_posterior()
    vals = {t: max(0.0, float(p.get(t, 0.0))) for t in FOLLOWER_TYPES}
    total = sum(vals.values())
    if total <= 0.0:
        return uniform_posterior()
    return {t: v / total for t, v in vals.items()}


@dataclass(frozen=True)
class PayoffWeights:
    """The leader's payoff weights (the formula in the module docstring); the only place they are defined."""

    alpha: float = field(default=1.0, metadata=ge(0.0))   # weight of follower retention (satisfaction)
    beta: float = field(default=1.0, metadata=ge(0.0))    # weight of risk
    gamma: float = field(default=0.0, metadata=ge(0.0))   # weight of cost (e.g. response length)
    retention_by_type: dict[str, float] = field(
        default_factory=lambda: {"benign": 1.0, "sensitive": 1.0, "malicious": 0.0})
    risk_by_type: dict[str, float] = field(
        default_factory=lambda: {"benign": 1.0, "sensitive": 1.0, "malicious": 2.0})


@dataclass(frozen=True)
class CandidateOutcome:
    """What the judges predict for one candidate response."""

    satisfaction: float                     # user simulator score in [-1, 1]
    risk: float                             # 1 - safety score, in [0, 1]
    cost: float = 0.0                       # e.g. response tokens / max_tokens, in [0, 1]
    reaction: Mapping[str, float] | None = None   # predicted retention per follower type, if the judge gave one


def expected_payoff(c: CandidateOutcome, posterior: Mapping[str, float] | None, w: PayoffWeights) -> float:
    p = normalise_posterior(posterior)
    total = 0.0
    for t in FOLLOWER_TYPES:
        retention = float(c.reaction[t]) if c.reaction and t in c.reaction else c.satisfaction
        total += p[t] * (w.alpha * float(w.retention_by_type.get(t, 1.0)) * retention
                         - w.beta * float(w.risk_by_type.get(t, 1.0)) * c.risk
                         - w.gamma * c.cost)
    return total


def choose(candidates: Sequence[CandidateOutcome], posterior: Mapping[str, float] | None,
           w: PayoffWeights) -> int:
    """Index of the payoff-maximising candidate (the first one on ties); needs at least one."""
    if not candidates:
        raise ValueError("stackelberg.choose needs at least one candidate")
    payoffs = [expected_payoff(c, posterior, w) for c in candidates]
    return max(range(len(payoffs)), key=lambda i: (payoffs[i], -i))


@dataclass(frozen=True)
class LeaderRule:
    """How a step's reply is picked from its candidates; the optimize loop asks the rule, never a flag."""

    weighs_followers: ClassVar[bool] = False   # True: the trace records p(theta|x) the rule weighed by
    candidates: ClassVar[int] = 1              # K: replies the actor samples per step (a knob where it varies)
    temperature: ClassVar[float] = 0.0         # sampling temperature of candidates 2..K (none here)

    def payoff(self, c: CandidateOutcome, posterior: Mapping[str, float] | None) -> float | None:
        """A candidate's payoff under this rule (None: the rule does not score candidates)."""
        return None

    def pick(self, candidates: Sequence[CandidateOutcome], posterior: Mapping[str, float] | None) -> int:
        """Index of the kept candidate; needs at least one."""
        if not candidates:
            raise ValueError("a leader rule needs at least one candidate")
        return 0


@dataclass(frozen=True)
class SingleCandidate(LeaderRule):
    """stackelberg=off: the actor answers once per step and that answer is kept (no follower model)."""


@dataclass(frozen=True)
class StackelbergLeader(PayoffWeights, LeaderRule):
    """stackelberg=on: K candidates per step, the leader keeps argmax_k of the expected payoff."""

    weighs_followers: ClassVar[bool] = True
    candidates: int = field(default=3, metadata=ge(1))     # type: ignore[misc]  # K; candidate 1 is what off produces
    temperature: float = field(default=0.7, metadata=ge(0.0))   # type: ignore[misc]  # of candidates 2..K

    def payoff(self, c: CandidateOutcome, posterior: Mapping[str, float] | None) -> float | None:
        return expected_payoff(c, posterior, self)

    def pick(self, candidates: Sequence[CandidateOutcome], posterior: Mapping[str, float] | None) -> int:
        return choose(candidates, posterior, self)


register_component("stackelberg", "off", SingleCandidate)
register_component("stackelberg", "on", StackelbergLeader)
