"""How p(θ|x) acts without Stackelberg: it sets the strength of the guideline the auditor applies.

Why this rule: the paper's auditor applies a "dynamically triggered" guideline g (Risk(x, y, g)), and its
alignment figure adapts the guideline when the user is likely an attacker. Before this, p(θ|x) from the
assess stage was read only by the Stackelberg leader, so with `stackelberg=off` (the default and every
paper experiment) the `risk` ablation's `full` and `no_follower_types` arms differed only in the assessor's
prompt. Now the optimize stage appends a strictness note (prompt template `guideline_strength`, EN and CN)
to the category rules the auditor receives: `strict` when p(malicious|x) >= `strict_at`, `lenient` when
p(benign|x) >= `lenient_at`, nothing otherwise. A stricter auditor scores detailed risky replies lower, so
a different entry wins and the pairs change. The objective itself stays alpha*S - beta*R (core/objective.py).
With `risk=no_follower_types` the posterior is uniform, so no query reaches a threshold above 1/3.
It applies with `stackelberg=on` too: the auditor's risk is part of the payoff.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from oyster_exp.config.components import rng
from oyster_exp.csa.prompts import render
from oyster_exp.csa.stackelberg import normalise_posterior

STRICT, LENIENT, STANDARD = "strict", "lenient", "standard"
TEMPLATE = "guideline_strength"


@dataclass(frozen=True)
class GuidelineStrength:
    """`risk.guideline_strength` (conf/risk/full.yaml documents it)."""

    strict_at: float | None = field(default=0.5, metadata=rng(ge=0.0, le=1.0))   # p(malicious) -> strict; null: never
    lenient_at: float | None = field(default=None, metadata=rng(ge=0.0, le=1.0))  # p(benign) -> lenient; null: never

    def level(self, posterior: Mapping[str, float] | None) -> str:
        """strict, lenient or standard for one query's p(θ|x) (strict wins when both thresholds are met)."""
        p = normalise_posterior(posterior)
        if self.strict_at is not None and p["malicious"] >= self.strict_at:
            return STRICT
        if self.lenient_at is not None and p["benign"] >= self.lenient_at:
            return LENIENT
        return STANDARD

    def apply(self, guideline: str, posterior: Mapping[str, float] | None, lang: str) -> str:
        """The auditor's guideline text with the strictness note of this query's level (unchanged: standard).
        Renders a prompt template, so the calling stage declares `guideline_strength` in its templates."""
        level = self.level(posterior)
        if level == STANDARD:
            return guideline
        note = render(TEMPLATE, lang, level=level)
        return f"{guideline}\n{note}" if guideline else note
