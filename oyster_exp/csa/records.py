"""Typed records: one pydantic type per artifact (`artifacts/<stage>.jsonl`).

Every record has a unique `id` within its artifact: the journal uses it to resume a killed stage
without writing a record twice. A record that could not be produced is still written, with
`failure` set to the reason, so nothing is silently dropped and failures are counted per stage.

A failure is one of two kinds. `transient=True`: an LLM call gave no usable answer (transport error,
timeout, 429/5xx, a refused request, a reply that stayed invalid after the retries); that record is not
finished work, and the stage runner redoes it on the next run of the same command. Otherwise the failure is
permanent: the data decided it (an upstream record failed, no pair passes the policy, nothing to train on),
and a rerun would decide the same.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, computed_field, model_serializer

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.replies import RiskAssessment, SafetyJudgement, UserJudgement


class _OmitUnset(BaseModel):
    """Optional fields added after a record type shipped are left out while unset (None), so a run
    that does not use them writes the same bytes as before."""

    _omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for key in self._omit_if_none:
            if isinstance(data, dict) and data.get(key) is None:
                data.pop(key, None)
        return data


class Record(_OmitUnset):
    _omit_if_none = ("transient",)

    id: str
    failure: str | None = None
    transient: bool | None = None          # True: the failure is worth retrying (see the module docstring);
                                           # left out of the JSON while unset, so other records keep their bytes


def transient_failure(reason: str) -> dict[str, Any]:
    """The fields of a record whose LLM call failed: `Record(id=..., **transient_failure(reason))`."""
    return {"failure": reason, "transient": True}


class QueryRecord(Record):
    query: str
    language: Literal["en", "cn"] = "en"
    risk_level: str | None = None         # declared label of the seed set (R0/R1/R2), if any
    category: str | None = None
    persona: str = ""
    task: str = ""
    split: Literal["train", "heldout"] = "train"


class GenerationRecord(Record):
    query: str
    language: str = "en"
    think: str = ""
    response: str = ""


class AssessmentRecord(Record):
    language: str = "en"
    assessment: RiskAssessment | None = None
    guideline: list[str] = Field(default_factory=list)   # rules of every assessed category, primary first
    guideline_by_category: dict[str, list[str]] = Field(default_factory=dict)   # EN name -> rules (query language)


class ChainRecord(Record):
    chain: SafetyChain | None = None



class TraceCandidate(BaseModel):
    """One Stackelberg candidate of a step: its response, predicted outcome and expected payoff."""

    response: str
    seed: int
    satisfaction: float | None = None      # user simulator score (Retention)
    risk: float | None = None              # 1 - safety score
    cost: float = 0.0                      # response tokens / actor max_tokens
    payoff: float | None = None            # sum_theta p(theta|x) [alpha Retention - beta Risk - gamma Cost]
    reactions: dict[str, str] | None = None   # the follower role's reaction per type (stackelberg.follower_model)
    failure: str | None = None


class TraceEntry(_OmitUnset):
    _omit_if_none = ("parent", "candidates", "chosen", "reactions", "payoff")

    iteration: int
    mode: str                              # "initial" or a Lingo-BP mode
    chain: SafetyChain | None = None
    think: str = ""
    response: str
    user: UserJudgement | None = None
    safety: SafetyJudgement | None = None
    reward: float | None = None
    failure: str | None = None
    parent: int | None = None              # the entry this step edited (differs from the previous one
                                           # when the regression guard went back to the best)
    candidates: list[TraceCandidate] | None = None   # stackelberg=on: every candidate of this step
    chosen: int | None = None              # index of the kept candidate
    reactions: dict[str, str] | None = None   # stackelberg=on with the follower model: reaction per follower type
    payoff: float | None = None            # stackelberg=on: the leader's expected payoff, which is the reward


class OptimizeRecord(Record):
    _omit_if_none = ("transient", "follower_posterior", "stop_reason")
    query: str
    language: str = "en"
    trace: list[TraceEntry] = Field(default_factory=list)
    best_index: int | None = None
    follower_posterior: dict[str, float] | None = None   # p(theta|x) the leader weighted by (stackelberg=on)
    stop_reason: str | None = None         # why the loop ended before the schedule did (pearl point, failure)


class PairRecord(Record):
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    chosen_reward: float | None = None
    rejected_reward: float | None = None
    query_id: str | None = None            # the query (ids of all_improving pairs are "<query_id>#<k>")
    policy: str | None = None
    language: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def margin(self) -> float | None:
        if self.chosen_reward is None or self.rejected_reward is None:
            return None
        return self.chosen_reward - self.rejected_reward


class TrainRecord(Record):
    objective: str
    steps: int
    model_dir: str                         # relative to the stage's cache entry
    metrics: dict[str, float] = Field(default_factory=dict)


class EvalRecord(Record):
    model: str                             # "base" | "trained"
    benchmark: str                         # "construction" | "strata_sword"
    item_id: str
    prompt: str
    response: str = ""
    satisfaction: float | None = None
    risk: float | None = None
    verdict: str | None = None             # strata_sword: "safe" | "unsafe"
    meta: dict[str, str | int | float] = Field(default_factory=dict)


class ReportRecord(Record):
    report: str
    plots: list[str] = Field(default_factory=list)
    headline: dict[str, float] = Field(default_factory=dict)
