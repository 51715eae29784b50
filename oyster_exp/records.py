"""Typed records: one pydantic type per artifact (`artifacts/<stage>.jsonl`).

Every record has a unique `id` within its artifact: the journal uses it to resume a killed stage
without writing a record twice. A record that could not be produced is still written, with
`failure` set to the reason, so nothing is silently dropped and failures are counted per stage.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, computed_field

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.schemas import RiskAssessment, SafetyJudgement, UserJudgement


class Record(BaseModel):
    id: str
    failure: str | None = None


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


class TraceEntry(BaseModel):
    iteration: int
    mode: str                              # "initial" or a Lingo-BP mode
    chain: SafetyChain | None = None
    think: str = ""
    response: str
    user: UserJudgement | None = None
    safety: SafetyJudgement | None = None
    reward: float | None = None
    failure: str | None = None


class OptimizeRecord(Record):
    query: str
    language: str = "en"
    trace: list[TraceEntry] = Field(default_factory=list)
    best_index: int | None = None


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
