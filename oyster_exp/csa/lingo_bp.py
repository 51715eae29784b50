"""One Linguistic Backpropagation step: feedback -> editor -> updated chain (frozen nodes kept), and the
`lingo_bp` settings: the structured config of that group, defined and registered here.

Which nodes a mode may change comes from config (`lingo_bp.unfrozen.<mode>`), not from code, so
the paper figure's freezing, the public code's and any ablation are config choices. Two parts of a
step are components inside the group: the strategy similarity of the minimal update
(`lingo_bp/similarity=...`, csa/strategies.py) and the recombiner that turns an edited chain back into
the actor's prompt (`lingo_bp/recombiner=...`, here).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from oyster_exp.config.components import ge, register_component, rng
from oyster_exp.config.errors import ConfigError
from oyster_exp.csa.chain import NODE_NAMES, SafetyChain
from oyster_exp.csa.prompts import render
from oyster_exp.csa.records import TraceEntry
from oyster_exp.csa.replies import EditReply, SafetyJudgement, UserJudgement
from oyster_exp.csa.strategies import StrategySimilarity, minimal_update
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.service import LLMService, Outcome

TEXT_NODES = ("user_needs", "risk_intent", "safety_guidelines")
LIST_NODES = ("usefulness_strategies", "safety_strategies")


class LingoMode(str, Enum):
    user = "user"                  # backpropagate the user simulator's feedback (satisfaction)
    developer = "developer"        # backpropagate the safety auditor's feedback
    both = "both"                  # both, in one editor call


MODES: tuple[str, ...] = tuple(m.value for m in LingoMode)


@dataclass(frozen=True)
class Recombiner:
    """How a response is regenerated from an edited chain: the chain as reasoning text plus the actor's
    conversation. The default renders the `recombine` prompt template (the plan as the system turn,
    the query as the user turn), which is the paper's recombination."""

    template: str = "recombine"    # a prompt template under csa/prompts/<lang>/; receives `plan`

    def messages(self, chain: SafetyChain, query: str, lang: str) -> tuple[str, list[ChatMessage]]:
        """(reasoning text, actor conversation) for one query; the collapsed no-risk chain for benign ones."""
        think = chain.render(lang)
        return think, [ChatMessage(role="system", content=render(self.template, lang, plan=think)),
                       ChatMessage(role="user", content=query)]


register_component("lingo_bp/recombiner", "plan_as_system", Recombiner)


@dataclass(frozen=True)
class UnfrozenNodes:
    """Chain nodes each Lingo-BP mode may change; every other node is copied (frozen)."""

    user: list[str] = field(default_factory=lambda: ["user_needs", "usefulness_strategies"])
    developer: list[str] = field(default_factory=lambda: ["user_needs", "usefulness_strategies", "safety_strategies"])
    both: list[str] = field(default_factory=lambda: ["user_needs", "usefulness_strategies", "safety_strategies"])

    def __getitem__(self, mode: str) -> list[str]:
        return list(getattr(self, mode))


@dataclass(frozen=True)
class PearlPoint:
    """Scores at which a mode's loop stops; None = not required."""

    satisfaction: float | None = field(default=1.0, metadata=rng(ge=-1.0, le=1.0))
    safety: float | None = field(default=1.0, metadata=rng(ge=0.0, le=1.0))

    def reached(self, entry: TraceEntry) -> bool:
        if self.satisfaction is not None and (entry.user is None or entry.user.score < self.satisfaction):
            return False
        return not (self.safety is not None and (entry.safety is None or entry.safety.score < self.safety))


@dataclass(frozen=True)
class EarlyStop:
    """Stop at the pearl point: the step's starting entry meets its mode's thresholds."""

    enabled: bool = True
    user: PearlPoint = field(default_factory=lambda: PearlPoint(satisfaction=1.0, safety=None))
    developer: PearlPoint = field(default_factory=lambda: PearlPoint(satisfaction=None, safety=1.0))
    both: PearlPoint = field(default_factory=PearlPoint)

    def points(self) -> dict[str, PearlPoint] | None:
        """mode -> pearl point, or None when the whole schedule always runs."""
        return {m: getattr(self, m) for m in MODES} if self.enabled else None


@dataclass(frozen=True)
class LingoBPSettings:
    """The `lingo_bp` group (conf/lingo_bp/paper.yaml documents every knob). `name` is the option's
    display name (reports, sweep summaries)."""

    name: str = "paper"
    iterations: list[LingoMode] = field(default_factory=lambda: [LingoMode.both] * 3)
    max_epochs: int | None = field(default=None, metadata=ge(0))  # run only the first N entries (debug=fast: 1)
    max_strategy_changes: int = field(default=2, metadata=ge(0))
    similarity: Any = None                # a StrategySimilarity node (`lingo_bp/similarity` group)
    recombiner: Any = None                # a Recombiner node (`lingo_bp/recombiner` group)
    unfrozen: UnfrozenNodes = field(default_factory=UnfrozenNodes)
    regression_guard: bool = True
    later_wins_ties: bool = True          # the best trace entry on equal rewards: the latest (false: the earliest)
    early_stop: EarlyStop = field(default_factory=EarlyStop)

    @staticmethod
    def check_config(node: Any, key: str) -> None:
        """Called by `config.structured.validate_config`: what types and ranges cannot say."""
        for mode in MODES:
            for name in node.unfrozen[mode]:
                if name not in NODE_NAMES:
                    raise ConfigError(f"{key}.unfrozen.{mode}",
                                      f"unknown chain node {name!r}; choose from {', '.join(NODE_NAMES)}")
        for part in ("similarity", "recombiner"):
            value = node.get(part)
            if isinstance(value, str):   # the pre-component spelling `lingo_bp.similarity=exact`
                raise ConfigError(f"{key}.{part}", f"is a component now: choose it with lingo_bp/{part}={value} "
                                  f"(conf/lingo_bp/{part}/)")
            if value is None or "_target_" not in value:
                raise ConfigError(f"{key}.{part}", f"needs a {part} component (the lingo_bp/{part} group)")


register_component("lingo_bp", "settings", LingoBPSettings)


def lingo_schedule(lb: Any) -> list[str]:
    """The Lingo-BP epochs that run: `iterations`, cut to `max_epochs` when set.

    A cap rather than a replaced list, so that smoke runs of a schedule ablation (debug=fast) still
    differ per arm: off stays [], user_only becomes [user], developer_only [developer].
    """
    modes = [str(getattr(m, "value", m)) for m in lb.iterations]
    cap = lb.get("max_epochs") if hasattr(lb, "get") else getattr(lb, "max_epochs", None)
    return modes if cap is None else modes[: int(cap)]


@dataclass(frozen=True)
class EditSettings:
    """What one backprop step needs, built from `LingoBPSettings` by the optimize stage."""

    unfrozen: Mapping[str, Collection[str]]       # mode -> node names the mode may change
    max_changes: int
    similarity: StrategySimilarity                # carries its replace threshold


def feedback_for(mode: str, user: UserJudgement | None,
                 safety: SafetyJudgement | None) -> tuple[UserJudgement | None, SafetyJudgement | None]:
    """The judgements a mode backpropagates: user -> satisfaction, developer -> safety, both -> both.

    In `both` mode the user-side feedback reaches the editor too (the public code asked for it and
    then discarded that half of the reply); our editor answers once, from both signals.
    """
    return (user if mode in ("user", "both") else None, safety if mode in ("developer", "both") else None)


@dataclass(frozen=True)
class Rejected:
    """An earlier edit of the same plan that scored worse (the regression guard went back past it)."""
    strategies: list[str]
    satisfaction: float | None
    safety: float | None


def edit_prompt(query: str, response: str, chain: SafetyChain, user: UserJudgement | None,
                safety: SafetyJudgement | None, mode: str, lang: str, s: EditSettings,
                rejected: Rejected | None = None) -> list[ChatMessage]:
    fb_user, fb_safety = feedback_for(mode, user, safety)
    text = render("edit", lang, query=query, response=response, plan=chain.editor_view(), user=fb_user,
                  safety=fb_safety, mode=mode, max_changes=s.max_changes,
                  unfrozen=[n for n in NODE_NAMES if n in s.unfrozen[mode]], rejected=rejected)
    return [ChatMessage(role="user", content=text)]


def apply_edit(chain: SafetyChain, edit: EditReply, mode: str, s: EditSettings) -> SafetyChain:
    """A new chain (the old one is never mutated): unfrozen nodes updated, strategies minimally."""
    allowed = set(s.unfrozen[mode])
    data = chain.model_dump()
    for node in TEXT_NODES:
        if node in allowed and getattr(edit, node).strip():
            data[node] = getattr(edit, node).strip()
    for node in LIST_NODES:
        if node in allowed:
            # argument order: the chain's current list is the base, the editor's list the proposal
            data[node] = minimal_update(getattr(chain, node), getattr(edit, node), s.max_changes,
                                        s.similarity, s.similarity.replace_threshold)
    return SafetyChain(**data)


@dataclass
class EditItem:
    query: str
    response: str
    chain: SafetyChain
    user: UserJudgement | None
    safety: SafetyJudgement | None
    mode: str
    lang: str
    rejected: Rejected | None = None


def backprop(service: LLMService, items: list[EditItem], s: EditSettings) -> list[Outcome[SafetyChain]]:
    """One editor call for all items; each result is the updated chain or the editor's failure."""
    convs = [edit_prompt(it.query, it.response, it.chain, it.user, it.safety, it.mode, it.lang, s, it.rejected)
             for it in items]
    outs = service.structured("editor", convs, EditReply) if convs else []
    return [Outcome(value=apply_edit(it.chain, o.value, it.mode, s), text=o.text) if o.value is not None
            else Outcome(failure=o.failure, text=o.text) for it, o in zip(items, outs)]
