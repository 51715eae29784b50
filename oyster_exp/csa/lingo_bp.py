"""One Linguistic Backpropagation step: feedback -> editor -> updated chain (frozen nodes kept), and the
`lingo_bp` settings: the structured config of that group, defined and registered here.

Which nodes a mode may change comes from config (`lingo_bp.unfrozen.<mode>`), not from code, so
the paper figure's freezing, the public code's and any ablation are config choices. Two parts of a
step are components inside the group: the strategy similarity of the minimal update
(`lingo_bp/similarity=...`, csa/strategies.py) and the recombiner that turns an edited chain back into
the actor's reasoning and answer (`lingo_bp/recombiner=natural | plan_as_system`, here).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from oyster_exp.config.components import ge, register_component, rng
from oyster_exp.config.errors import ConfigError
from oyster_exp.csa.chain import NODE_LABELS, NODE_NAMES, SafetyChain
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
    """How a response and its reasoning are regenerated from an edited chain (`lingo_bp/recombiner=...`).

    The answer: the `recombine` template renders the chain as the plan in the actor's system turn, the
    query is the user turn (the paper's recombination). The reasoning (`think`) of this option is the
    chain's own rendering, `chain.render()`: a fixed template text. That is the `plan_as_system` option
    (`lingo_bp/recombiner=plan_as_system`, "template"). Its weakness for preference data: the chosen side
    then reasons in the template's format and the rejected (initial) side in the actor's own words, so
    ORPO can learn the format instead of the content; `NaturalRecombiner` is the default for that reason.
    """

    template: str = "recombine"    # a prompt template under csa/prompts/<lang>/; receives `plan`

    def answer_messages(self, chain: SafetyChain, query: str, lang: str) -> list[ChatMessage]:
        """The actor's conversation for the new answer (the collapsed no-risk chain for benign queries)."""
        return [ChatMessage(role="system", content=render(self.template, lang, plan=chain.render(lang))),
                ChatMessage(role="user", content=query)]

    def fixed_think(self, chain: SafetyChain, lang: str) -> str | None:
        """The reasoning text when it is not written by the actor; None: ask the actor (`think_messages`)."""
        return chain.render(lang)

    def think_messages(self, chain: SafetyChain, query: str, lang: str) -> list[ChatMessage]:
        """The actor's conversation for its reasoning, when `fixed_think` is None."""
        raise NotImplementedError(f"{type(self).__name__} renders its reasoning itself")

    def messages(self, chain: SafetyChain, query: str, lang: str) -> tuple[str | None, list[ChatMessage]]:
        """(fixed reasoning or None, answer conversation): both halves in one call."""
        return self.fixed_think(chain, lang), self.answer_messages(chain, query, lang)


register_component("lingo_bp/recombiner", "plan_as_system", Recombiner)


@dataclass(frozen=True)
class NaturalRecombiner(Recombiner):
    """The actor writes both its reasoning and its answer, with the edited chain only as guidance.

    As the authors' recombination prompt asks: reason naturally, as if unaware of any framework, never
    naming its nodes. The answer comes from the `recombine` conversation; the reasoning is the backend's own
    when it returns one with the answer (a thinking model), otherwise one more actor call with the
    `recombine_think` template, the same two-call pattern the generate stage uses for the initial `think`.
    So chosen and rejected sides of a pair both reason in the actor's words and differ only in content.
    """

    think_template: str = "recombine_think"   # prompt template of the reasoning call; receives `plan`

    def fixed_think(self, chain: SafetyChain, lang: str) -> str | None:
        return None

    def think_messages(self, chain: SafetyChain, query: str, lang: str) -> list[ChatMessage]:
        return [ChatMessage(role="system", content=render(self.think_template, lang, plan=chain.render(lang))),
                ChatMessage(role="user", content=query)]


register_component("lingo_bp/recombiner", "natural", NaturalRecombiner)


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


def assessment_view(judgement: UserJudgement | SafetyJudgement | None) -> list[tuple[str, object]]:
    """Every field of a judge's validated reply, in schema order, empty ones left out: the editor's "gradient".

    The whole structured assessment, not one sentence: the item scores say which part of the reply failed,
    the auditor's user type, intent and adapted guideline say why. Generic over the fields, so a field a
    reply schema gains reaches the editor without a template change.
    """
    if judgement is None:
        return []
    data = judgement.model_dump(exclude={"score"})
    return [(k, v) for k, v in data.items() if v not in (None, "", [], {})]


def guideline_update(mode: str, safety: SafetyJudgement | None, s: EditSettings) -> str:
    """The auditor's adapted guideline when z_G (safety_guidelines) is unfrozen for `mode` and the mode
    backpropagates the auditor's feedback, else "": with z_G frozen (the paper figure, the default) it
    never changes, unfrozen it follows the auditor's case-adapted rule instead of the editor's rewording."""
    if "safety_guidelines" not in s.unfrozen[mode] or safety is None:
        return ""
    return safety.adapted_guideline.strip()


def edit_prompt(query: str, response: str, chain: SafetyChain, user: UserJudgement | None,
                safety: SafetyJudgement | None, mode: str, lang: str, s: EditSettings,
                rejected: Rejected | None = None) -> list[ChatMessage]:
    fb_user, fb_safety = feedback_for(mode, user, safety)
    text = render("edit", lang, query=query, response=response, plan=chain.editor_view(), user=fb_user,
                  safety=fb_safety, user_view=assessment_view(fb_user), safety_view=assessment_view(fb_safety),
                  mode=mode, max_changes=s.max_changes, labels=NODE_LABELS["cn" if lang == "cn" else "en"],
                  unfrozen=[n for n in NODE_NAMES if n in s.unfrozen[mode]], rejected=rejected,
                  guideline_from_auditor=bool(guideline_update(mode, fb_safety, s)))
    return [ChatMessage(role="user", content=text)]


def apply_edit(chain: SafetyChain, edit: EditReply, mode: str, s: EditSettings,
               adapted_guideline: str = "") -> SafetyChain:
    """A new chain (the old one is never mutated): unfrozen nodes updated, strategies minimally; an unfrozen
    z_G takes `adapted_guideline` (the auditor's, see `guideline_update`) when one is given."""
    allowed = set(s.unfrozen[mode])
    data = chain.model_dump()
    for node in TEXT_NODES:
        if node in allowed and getattr(edit, node).strip():
            data[node] = getattr(edit, node).strip()
    if "safety_guidelines" in allowed and adapted_guideline.strip():
        data["safety_guidelines"] = adapted_guideline.strip()
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
    return [Outcome(value=apply_edit(it.chain, o.value, it.mode, s,
                                     guideline_update(it.mode, feedback_for(it.mode, it.user, it.safety)[1], s)),
                    text=o.text) if o.value is not None
            else Outcome(failure=o.failure, text=o.text) for it, o in zip(items, outs)]
