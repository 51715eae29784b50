"""Stackelberg leader selection: the model commits to the candidate the follower mix rewards most.

The model is the leader; the user is a follower of unknown type θ ∈ {benign, sensitive, malicious}
with posterior p(θ|x) from the assess stage. For each candidate y the leader's expected payoff is

    Π(y) = Σ_θ p(θ|x) · [α · w_ret(θ) · Retention(θ, y) − β · w_risk(θ) · Risk(y) − γ · Cost(y)]

Retention is the follower's predicted reaction (the user simulator's satisfaction in [-1, 1], per
type when the simulator predicts one per type, else the same value for every type). The per-type
weights say how much the leader values keeping each type engaged: keeping an attacker satisfied is
worth nothing (w_ret(malicious) = 0) and a risky reply to an attacker costs more (w_risk > 1).
Pure functions only: the optimize stage gathers the outcomes and calls `choose`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    alpha: float = 1.0                      # weight of follower retention (satisfaction)
    beta: float = 1.0                       # weight of risk
    gamma: float = 0.0                      # weight of cost (e.g. response length)
    retention_by_type: Mapping[str, float] = field(
        default_factory=lambda: {"benign": 1.0, "sensitive": 1.0, "malicious": 0.0})
    risk_by_type: Mapping[str, float] = field(
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


def weights_from(cfg: Any) -> PayoffWeights:
    """PayoffWeights from the `stackelberg` config node (missing per-type maps keep the defaults)."""
    d = PayoffWeights()
    ret = cfg.get("retention_by_type", None) if hasattr(cfg, "get") else None
    risk = cfg.get("risk_by_type", None) if hasattr(cfg, "get") else None
    return PayoffWeights(alpha=float(cfg.alpha), beta=float(cfg.beta), gamma=float(cfg.gamma),
                         retention_by_type=dict(ret) if ret else dict(d.retention_by_type),
                         risk_by_type=dict(risk) if risk else dict(d.risk_by_type))
