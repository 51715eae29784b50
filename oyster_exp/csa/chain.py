"""The structured safety chain z_u -> z_I -> z_G -> z_S, and its rendering as reasoning text.

The chain is a typed object (not a dict passed around and mutated), so every trace entry owns
its own copy: the aliasing bug of the reference code, where history entries showed later chains,
cannot happen.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Lang = Literal["en", "cn"]

# The chain's nodes by name (z_u, z_I, z_G, then the two strategy lists): what `lingo_bp.unfrozen.<mode>`
# may list; `SafetyChain` has one field per name.
NODE_NAMES: tuple[str, ...] = ("user_needs", "risk_intent", "safety_guidelines", "usefulness_strategies",
                               "safety_strategies")

_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "user_needs": "User needs",
        "risk_intent": "Risk intent",
        "safety_guidelines": "Safety guidelines",
        "strategies": "Response strategies",
        "usefulness": "Usefulness strategies",
        "safety": "Safety strategies",
    },
    "cn": {
        "user_needs": "用户需求分析",
        "risk_intent": "风险意图分析",
        "safety_guidelines": "安全准则响应",
        "strategies": "回复策略制定",
        "usefulness": "有用性策略",
        "safety": "安全策略",
    },
}

# Each node's name as prose, per language (the reference's node keys, oyster_reference §5); prompts show these,
# the JSON field names (NODE_NAMES) only where a reply must use them.
NODE_LABELS: dict[str, dict[str, str]] = {
    "en": {"user_needs": "User Needs Analysis", "risk_intent": "Risk Intent Analysis",
           "safety_guidelines": "Safety Guidelines", "usefulness_strategies": "Usefulness Strategies",
           "safety_strategies": "Safety Strategies"},
    "cn": {"user_needs": "用户需求分析", "risk_intent": "风险意图分析", "safety_guidelines": "安全准则响应",
           "usefulness_strategies": "有用性策略", "safety_strategies": "安全策略"},
}

NO_RISK_MARKERS = ("no risk", "none", "benign", "无风险", "无")


class SafetyChain(BaseModel):
    user_needs: str = ""                               # z_u
    risk_intent: str = ""                              # z_I
    safety_guidelines: str = ""                        # z_G
    usefulness_strategies: list[str] = Field(default_factory=list)   # z_S, satisfaction side
    safety_strategies: list[str] = Field(default_factory=list)       # z_S, safety side

    def is_no_risk(self) -> bool:
        """A benign query's chain: no stated risk intent or no guideline to follow."""
        intent = self.risk_intent.strip().lower()
        return not intent or intent in NO_RISK_MARKERS or intent.startswith("no risk") \
            or not self.safety_guidelines.strip()

    def collapsed(self) -> SafetyChain:
        """The no-risk chain: needs and strategies only; risk nodes are dropped, strategies merged."""
        return SafetyChain(
            user_needs=self.user_needs,
            usefulness_strategies=[*self.usefulness_strategies, *self.safety_strategies],
        )

    def render(self, lang: Lang = "en") -> str:
        """Reasoning text for <think>: the collapsed chain for benign queries, all nodes otherwise."""
        chain = self.collapsed() if self.is_no_risk() else self
        lab = _LABELS[lang]
        sep = "；" if lang == "cn" else "; "
        lines = [f"{lab['user_needs']}: {chain.user_needs}"]
        if not self.is_no_risk():
            lines += [f"{lab['risk_intent']}: {chain.risk_intent}",
                      f"{lab['safety_guidelines']}: {chain.safety_guidelines}"]
        lines.append(f"{lab['strategies']}:")
        lines.append(f"- {lab['usefulness']}: {sep.join(chain.usefulness_strategies)}")
        if chain.safety_strategies:
            lines.append(f"- {lab['safety']}: {sep.join(chain.safety_strategies)}")
        return "\n".join(lines)

    def editor_view(self) -> str:
        """Every node under its field name (the editor's reply uses the same names), strategies one per line.

        The editor sees all nodes, also of a no-risk chain, because it must copy the frozen ones.
        """
        lines = [f"user_needs: {self.user_needs}", f"risk_intent: {self.risk_intent}",
                 f"safety_guidelines: {self.safety_guidelines}", "usefulness_strategies:"]
        lines += [f"  - {s}" for s in self.usefulness_strategies]
        lines.append("safety_strategies:")
        lines += [f"  - {s}" for s in self.safety_strategies]
        return "\n".join(lines)
