"""The benchmark interface: what the evaluate stage and the summary ask of every benchmark.

A benchmark is a component (a dataclass whose fields are its `eval.<key>` knobs, registered as
`eval/benchmark/<option>_schema`) with four duties, so the stage and the summary never name one:

- `data_files()`: the files it reads; their content hashes go into the stage's cache key, and an absent
  one is a counted skip or an error (`eval.on_missing_data`). `cache_files()` adds other content that
  decides its output (capability: the local lm-eval task folders).
- `prepare(env, missing)`: load and check its items before any model loads (a bad file is one error
  naming file, line and field) and return its `Task`s.
- `evaluate(tasks, run)`: answer and judge them for one model; the default is the suite's shared loop
  (`suite.run_task`), a benchmark with its own runner (capability: lm-eval) overrides it.
- `rows(split, model, records, resamples, seed)` and `curve(records)`: its summary rows.

`name` (a class attribute) is the `benchmark` field of its records and rows, so the record format and
the headline keys (`trained/construction/constructive@beta=2`) do not depend on where it is configured.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from oyster_exp.core.estimates import CallEstimate, Workload

if TYPE_CHECKING:
    from oyster_exp.evaluation.generation import GenerationSettings
    from oyster_exp.evaluation.judges import EvalJudge
    from oyster_exp.evaluation.subjects import Subject
    from oyster_exp.evaluation.suite import Task
    from oyster_exp.llm.service import LLMService

Row = dict[str, Any]
CLASSES: dict[str, type[Benchmark]] = {}
"""Record name -> benchmark class, filled as modules define them: the summary of records from a run whose
config is not at hand (sweep aggregation) uses the class defaults."""


@dataclass
class Absent:
    """Why a benchmark's data is not there: the knob to fix and the message (`eval.<key>.<knob>: <message>`)."""
    knob: str
    message: str


@dataclass
class EvalEnv:
    """What a benchmark's tasks are built from: the run's services, judges and held-out queries."""
    service: LLMService
    taxonomy: Any
    judge: EvalJudge
    system_prompt: str
    queries: list[Any] = field(default_factory=list)


@dataclass
class ModelRun:
    """One model under test while its benchmarks run (the subject is bound as LLM role "subject")."""
    name: str                                        # base | trained
    service: LLMService
    journal: Any
    settings: GenerationSettings
    chunk_size: int
    subject: Subject
    weights: Callable[[], tuple[Path, str] | None]   # (checkpoint dir, model id) of an in-process model, lazily
    dtype: str = "float32"


@dataclass
class Benchmark:
    """Base of every benchmark; the subclass's dataclass fields are its knobs (written once, there)."""
    name: ClassVar[str] = ""
    enabled: bool = True                             # false: configured but not run

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            CLASSES.setdefault(cls.name, cls)

    def config_problems(self) -> list[tuple[str, str]]:
        """(knob, message) for each cross-field rule the config breaks; `validate_config` reports the first."""
        return []

    def data_files(self) -> list[Path]:
        """The data files read (hashed into the cache key); a knob error is a `ValueError` naming the knob."""
        return []

    def cache_files(self) -> dict[str, Path]:
        """Other files (by a location-free name) whose content decides the output."""
        return {}

    def absent(self) -> Absent | None:
        """Why the data is not there (the first missing data file), or None."""
        for f in self.data_files():
            if not f.exists():
                return Absent("path", f"{f} not found")
        return None

    def prepare(self, env: EvalEnv, missing: str | None) -> list[Task]:
        """Load and check the items and build the tasks; `missing` is the skip reason when data is absent."""
        raise NotImplementedError

    def evaluate(self, tasks: list[Task], run: ModelRun) -> None:
        """Answer, judge and journal every pending item for one model (the shared loop by default)."""
        from oyster_exp.evaluation.suite import run_task

        for task in tasks:
            run_task(task, run.name, run.service, run.journal, run.settings, run.chunk_size)

    def rows(self, split: str, model: str, records: list[Any], resamples: int, seed: int) -> list[Row]:
        """Summary rows beyond the shared counts (n_judged / n_failed / n_skipped)."""
        return []

    def curve(self, records: list[Any]) -> dict[float, float] | None:
        """A curve to plot for one (split, model), or None."""
        return None

    def paired(self, records: list[Any]) -> dict[str, tuple[dict[str, list[float]], Callable[[Any], float]]]:
        """metric -> (item id -> the item's values, statistic of an items × values array) for one (split,
        model): what a paired Δ between two models on their shared items resamples (`summary.paired_deltas`).
        A metric left out gets no paired CI (the report then marks its Δ as unpaired)."""
        return {}

    # -- the dry run's estimate (`EvaluateStage.estimate` sums these per evaluated model) ----------------

    def items(self, work: Workload, skip_missing: bool) -> tuple[int, float]:
        """(items each evaluated model answers, mean prompt characters) as `prepare` would load them: files
        that exist are counted (they are small), absent ones count 0 when they would be skipped."""
        return 0, 0.0

    def judge_calls(self, n: int, prompt_chars: float, answer_chars: float, judge_role: str) -> list[CallEstimate]:
        """The judges' first-attempt requests for `n` answered items."""
        return []

    def estimate(self, work: Workload, judge_role: str, answer_chars: float, skip_missing: bool) -> list[CallEstimate]:
        """One answer from the subject per item, then the judges' calls: exact when every answer succeeds."""
        from oyster_exp.evaluation.generation import SUBJECT_ROLE

        n, chars = self.items(work, skip_missing)
        if not n:
            return []
        return [CallEstimate(SUBJECT_ROLE, n, chars), *self.judge_calls(n, chars, answer_chars, judge_role)]


def limit_of(value: int | None) -> int | None:
    """A `limit` knob: None or 0 means all items."""
    return int(value) if value else None


def limited(n: int, limit: int | None) -> int:
    return min(n, int(limit)) if limit else n
