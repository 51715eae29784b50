"""Stackelberg leader selection, and the rule that ranks trace entries (hence the chosen side of pairs).

The model is the leader; the user is a follower of unknown type θ ∈ {benign, sensitive, malicious}
with posterior p(θ|x) from the assess stage. For each candidate y the leader's expected payoff is

    Π(y) = Σ_θ p(θ|x) · [α · w_ret(θ) · Retention(θ, y) − β · w_risk(θ) · Risk(θ, y) − γ · Cost(y)]

With the follower model on (`stackelberg.follower_model`, the default) the `follower` role predicts one
reaction word per type (csa/follower.py) and `stackelberg.reactions` maps it to numbers: Retention(θ, y) is
the word's retention, Risk(θ, y) = max(auditor risk, the word's risk): a reply is at least as risky as the
auditor judges it, and riskier for a type predicted to exploit it. Without it, Retention is the user
simulator's satisfaction for every type and Risk the auditor's (the per-type weights still differ): keeping
an attacker satisfied is worth nothing (w_ret(malicious) = 0), a risky reply to an attacker costs more.

The rule is a component (`stackelberg=off|on`, conf/stackelberg/*.yaml) and it also ranks the trace:
`LeaderRule.reward` is each entry's reward, which picks the best entry, drives the regression guard and
orders pairs. `SingleCandidate` (off: one reply per step) ranks by the construction objective
α·S − β·R (`core/objective.py`, the function the evaluation's headline uses, β = 2 by default);
`StackelbergLeader` (on: K candidates, argmax of Π) ranks by Π. α and β are `ConstructionObjective`'s
fields, defined once here and inherited by both rules, so `stackelberg.beta` is the one risk-penalty key.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from oyster_exp.config.components import ge, register_component
from oyster_exp.config.errors import ConfigError
from oyster_exp.core.objective import HEADLINE_BETA, construction_score

FOLLOWER_TYPES: tuple[str, ...] = ("benign", "sensitive", "malicious")
REACTIONS: tuple[str, ...] = ("stays_helped", "follows_up", "rephrases", "escalates", "leaves", "exploits")
"""What a follower does after a reply (the follower role's closed set): served and stays; asks a safe
follow-up; rewords the question; pushes for the harmful details; leaves for a less careful service;
takes content from the reply and misuses it."""


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
class ConstructionObjective:
    """α and β of the construction objective α·S − β·R (and of the payoff's two main terms); defined once."""

    alpha: float = field(default=1.0, metadata=ge(0.0))   # weight of satisfaction / follower retention
    beta: float = field(default=HEADLINE_BETA, metadata=ge(0.0))   # risk penalty; 2 = the headline's beta


@dataclass(frozen=True)
class PayoffWeights(ConstructionObjective):
    """The leader's payoff weights (the formula in the module docstring); the only place they are defined."""

    gamma: float = field(default=0.0, metadata=ge(0.0))   # weight of cost (e.g. response length)
    retention_by_type: dict[str, float] = field(
        default_factory=lambda: {"benign": 1.0, "sensitive": 1.0, "malicious": 0.0})
    risk_by_type: dict[str, float] = field(
        default_factory=lambda: {"benign": 1.0, "sensitive": 1.0, "malicious": 2.0})


@dataclass(frozen=True)
class ReactionValues:
    """Reaction word -> Retention(θ, x, y) in [-1, 1] and Risk(θ, x, y) in [0, 1] (conf/stackelberg/on.yaml)."""

    retention: dict[str, float] = field(default_factory=lambda: {
        "stays_helped": 1.0, "follows_up": 0.5, "rephrases": 0.0, "escalates": -0.5, "leaves": -1.0,
        "exploits": 0.5})
    risk: dict[str, float] = field(default_factory=lambda: {
        "stays_helped": 0.0, "follows_up": 0.0, "rephrases": 0.0, "escalates": 0.5, "leaves": 0.0,
        "exploits": 1.0})

    def of(self, words: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
        """(retention by type, risk by type) of one candidate's predicted reactions."""
        return ({t: float(self.retention[words[t]]) for t in FOLLOWER_TYPES if t in words},
                {t: float(self.risk[words[t]]) for t in FOLLOWER_TYPES if t in words})


@dataclass(frozen=True)
class CandidateOutcome:
    """What the judges (and the follower model, when on) predict for one candidate response."""

    satisfaction: float                     # user simulator score in [-1, 1]
    risk: float                             # 1 - safety score, in [0, 1]
    cost: float = 0.0                       # e.g. response tokens / max_tokens, in [0, 1]
    reaction: Mapping[str, float] | None = None        # Retention per follower type (from the follower model)
    reaction_risk: Mapping[str, float] | None = None   # Risk per follower type from its reaction, in [0, 1]


def expected_payoff(c: CandidateOutcome, posterior: Mapping[str, float] | None, w: PayoffWeights) -> float:
    p = normalise_posterior(posterior)
    total = 0.0
    for t in FOLLOWER_TYPES:
        retention = float(c.reaction[t]) if c.reaction and t in c.reaction else c.satisfaction
        risk = max(c.risk, float(c.reaction_risk[t])) if c.reaction_risk and t in c.reaction_risk else c.risk
        total += p[t] * (w.alpha * float(w.retention_by_type.get(t, 1.0)) * retention
                         - w.beta * float(w.risk_by_type.get(t, 1.0)) * risk
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
    """How a step's reply is picked from its candidates and how an entry is ranked; the optimize loop asks
    the rule, never a flag."""

    weighs_followers: ClassVar[bool] = False   # True: the trace records p(theta|x) the rule weighed by
    candidates: ClassVar[int] = 1              # K: replies the actor samples per step (a knob where it varies)
    temperature: ClassVar[float] = 0.0         # sampling temperature of candidates 2..K (none here)

    @property
    def models_followers(self) -> bool:
        """True: every candidate also goes to the follower role (per-type reactions, `reactions_of`)."""
        return False

    def reactions_of(self, words: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
        """(Retention, Risk) per follower type from the follower role's reaction words."""
        raise NotImplementedError(f"{type(self).__qualname__} does not model followers")

    def reward(self, c: CandidateOutcome, posterior: Mapping[str, float] | None) -> float:
        """A trace entry's reward: it picks the best entry and orders the sides of a pair."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement reward()")

    def payoff(self, c: CandidateOutcome, posterior: Mapping[str, float] | None) -> float | None:
        """A candidate's payoff under this rule (None: the rule does not score candidates)."""
        return None

    def pick(self, candidates: Sequence[CandidateOutcome], posterior: Mapping[str, float] | None) -> int:
        """Index of the kept candidate; needs at least one."""
        if not candidates:
            raise ValueError("a leader rule needs at least one candidate")
        return 0


@dataclass(frozen=True)
class SingleCandidate(ConstructionObjective, LeaderRule):
    """stackelberg=off: the actor answers once per step and that answer is kept (no follower model); entries
    are ranked by the construction objective α·S − β·R, the evaluation's own function."""

    def reward(self, c: CandidateOutcome, posterior: Mapping[str, float] | None) -> float:
        return construction_score(c.satisfaction, c.risk, self.alpha, self.beta)


@dataclass(frozen=True)
class StackelbergLeader(PayoffWeights, LeaderRule):
    """stackelberg=on: K candidates per step, the leader keeps argmax_k of the expected payoff."""

    weighs_followers: ClassVar[bool] = True
    candidates: int = field(default=3, metadata=ge(1))     # type: ignore[misc]  # K; candidate 1 is what off produces
    temperature: float = field(default=0.7, metadata=ge(0.0))   # type: ignore[misc]  # of candidates 2..K
    follower_model: bool = True            # ask the follower role for per-type reactions (false: Retention = S)
    reactions: ReactionValues = field(default_factory=ReactionValues)   # reaction word -> Retention, Risk

    @property
    def models_followers(self) -> bool:
        return bool(self.follower_model)

    def reactions_of(self, words: Mapping[str, str]) -> tuple[dict[str, float], dict[str, float]]:
        return self.reactions.of(words)

    def payoff(self, c: CandidateOutcome, posterior: Mapping[str, float] | None) -> float | None:
        return expected_payoff(c, posterior, self)

    def reward(self, c: CandidateOutcome, posterior: Mapping[str, float] | None) -> float:
        return expected_payoff(c, posterior, self)

    @staticmethod
    def check_config(node: Any, key: str) -> None:
        """Called by `config.structured.validate_config`: every reaction word has a value, in range."""
        for part, lo in (("retention", -1.0), ("risk", 0.0)):
            table = node.reactions[part]
            if set(table) != set(REACTIONS):
                raise ConfigError(f"{key}.reactions.{part}", f"needs exactly the reactions {list(REACTIONS)}, "
                                                             f"got {sorted(table)}")
            for word, v in table.items():
                if not lo <= float(v) <= 1.0:
                    raise ConfigError(f"{key}.reactions.{part}.{word}", f"must be in [{lo:g}, 1], got {v}")

    def pick(self, candidates: Sequence[CandidateOutcome], posterior: Mapping[str, float] | None) -> int:
        return choose(candidates, posterior, self)


register_component("stackelberg", "off", SingleCandidate)
register_component("stackelberg", "on", StackelbergLeader)
