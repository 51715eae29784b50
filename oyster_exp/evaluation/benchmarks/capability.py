"""General capability through lm-evaluation-harness, when it is installed (extra `lm_eval`).

The paper reports General rows (Knowledge, Understanding, Math&Code) without naming their benchmarks, so
the task list is configuration. lm-eval is a large optional dependency: without it the suite records a
clean skip (with the install command), never an import error in the middle of a run.

Runs are offline, so lm-eval's own tasks work only when their datasets are already in the local HF
datasets cache. Local tasks need no hub: `eval.capability.include_path` names a folder of task YAMLs
(for example `dataset_path: json` with absolute `dataset_kwargs.data_files`), and the project's own
tasks (`lm_eval_tasks/`, e.g. `oyster_household_mcq`) are always on the task path.

Subjects (`eval.subject`, evaluation/subjects.py): `hf` loads the model in-process (`LocalSubject`); a
server (`ServerSubject`) maps to lm-eval's `local-completions`, which scores multiple-choice tasks by
log-likelihood: it needs a server with `/v1/completions` returning prompt logprobs (`echo` + `logprobs`,
as vLLM does) and a tokenizer (the server's `/tokenize` or an HF tokenizer it can load offline). The
project's loopback test server speaks only `/v1/chat/completions` without logprobs, so that path is not
exercised by the tests (a known limitation); against it every task fails with lm-eval's reason, recorded
per task.
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from oyster_exp.config.components import ge, register_component
from oyster_exp.csa.records import EvalRecord
from oyster_exp.evaluation.benchmarks.base import Absent, Benchmark, EvalEnv, ModelRun, Row, limit_of
from oyster_exp.evaluation.rows import NAN, judged, row
from oyster_exp.evaluation.suite import Task, record_id, run_task

INSTALL_HINT = "lm-evaluation-harness is not installed (pip install 'oyster-exp[lm_eval]')"
PACKAGED_TASKS = Path(__file__).resolve().parent.parent / "lm_eval_tasks"
TASK_FILE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".py")   # what a local task folder's cache key covers


@dataclass
class TaskScore:
    task: str
    metrics: dict[str, float] = field(default_factory=dict)   # e.g. {"acc,none": 0.61, "acc_stderr,none": 0.02}
    n: int = 0
    failure: str | None = None


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def task_paths(include_path: str | Path | None) -> list[Path]:
    """Folders of task YAMLs besides lm-eval's own: the packaged ones, then the user's (which win on a clash)."""
    paths = [PACKAGED_TASKS]
    if include_path:
        p = Path(str(include_path)).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"eval.capability.include_path: {p} is not a directory")
        paths.append(p)
    return paths


def task_files(include_path: str | Path | None) -> dict[str, Path]:
    """The files of the local task folders (YAMLs, their data and loaders) by a location-free name, for the
    stage's cache key: an edited item re-scores, a moved checkout does not."""
    roots = {"packaged": PACKAGED_TASKS}
    if include_path:
        roots["include_path"] = Path(str(include_path)).expanduser()
    return {f"{k}/{f.relative_to(r).as_posix()}": f for k, r in roots.items() if r.is_dir()
            for f in sorted(r.rglob("*")) if f.is_file() and f.suffix in TASK_FILE_SUFFIXES}


def task_manager(tasks: list[str], include_path: str | Path | None, metadata: dict[str, Any] | None = None) -> Any:
    """An lm-eval TaskManager that knows `tasks`.

    Indexing lm-eval's ~15k built-in task YAMLs takes seconds, so the local folders are tried alone
    first and the built-ins are indexed only when a requested task is not local.
    """
    from lm_eval.tasks import TaskManager  # type: ignore[import-not-found]

    paths = [str(p) for p in task_paths(include_path)]
    tm = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if all(t in tm.all_tasks for t in tasks):
        return tm
    return TaskManager(include_path=paths, include_defaults=True, metadata=metadata)


def _scores(res: dict[str, Any]) -> list[TaskScore]:
    """One TaskScore per result entry (a task, or a group with its aggregate).

    Only lm-eval's `metric,filter` keys are kept (`alias` and `sample_len` are not metrics).
    """
    n_samples = res.get("n-samples") or {}
    subtasks = res.get("group_subtasks") or {}

    def n_of(name: str) -> int:
        if name in n_samples:
            return int(n_samples[name].get("effective", 0))
        return sum(n_of(s) for s in subtasks.get(name, []))

    out = []
    for name, metrics in (res.get("results") or {}).items():
        nums = {k: float(v) for k, v in metrics.items()
                if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
        out.append(TaskScore(task=name, metrics=nums, n=n_of(name)))
    return out


def _device(model: str) -> str | None:
    """lm-eval's `hf` model defaults to "cuda" and fails without it; server models take no device."""
    if model != "hf":
        return None
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def _global_rng_kept() -> Iterator[None]:
    """simple_evaluate reseeds Python's, NumPy's and torch's global RNGs; put them back, so what runs after
    the capability rows does not depend on whether they ran (or were already journaled on a resume)."""
    import random

    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def _reason(e: BaseException) -> str:
    return f"lm_eval: {type(e).__name__}: {e}"[:500]


def run_lm_eval(model: str, args: str, tasks: list[str], limit: int | None, num_fewshot: int | None,
                batch_size: int, include_path: str | Path | None = None) -> list[TaskScore]:
    """One score per task; a task that fails (unknown name, data not cached) is a failure with the reason.

    The model loads once for all tasks; a model that cannot load fails every task with that reason.
    """
    import lm_eval  # type: ignore[import-not-found]
    from lm_eval.api.registry import get_model  # type: ignore[import-not-found]
    from lm_eval.utils import simple_parse_args_string  # type: ignore[import-not-found]

    try:
        tm = task_manager(tasks, include_path, metadata=simple_parse_args_string(args))
        lm = get_model(model).create_from_arg_string(args, {"batch_size": batch_size, "device": _device(model)})
    except Exception as e:
        return [TaskScore(task=t, failure=_reason(e)) for t in tasks]
    out: list[TaskScore] = []
    where = ", ".join(str(p) for p in task_paths(include_path))
    for task in tasks:
        if task not in tm.all_tasks:
            out.append(TaskScore(task=task, failure=f"lm_eval: task not found: {task} (lm-eval's tasks and {where}; "
                                                    "a task YAML that does not parse is left out by lm-eval)"))
            continue
        try:
            with _global_rng_kept():
                res: Any = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, num_fewshot=num_fewshot,
                                                   task_manager=tm, log_samples=False)
        except Exception as e:
            out.append(TaskScore(task=task, failure=_reason(e)))
            continue
        scores = _scores(res or {})
        out += scores or [TaskScore(task=task, failure="lm_eval: no results")]
    return out


# --- the benchmark ---------------------------------------------------------------------------------

@dataclass
class CapabilityBenchmark(Benchmark):
    """General capability through lm-evaluation-harness (the paper's General rows; the task list is ours)."""
    name: ClassVar[str] = "capability"
    enabled: bool = False
    tasks: list[str] = field(default_factory=list)            # lm-eval task names
    include_path: str | None = None                           # a folder of your own lm-eval task YAMLs
    limit: int | None = field(default=None, metadata=ge(1))   # examples per task (None: all)
    num_fewshot: int | None = field(default=None, metadata=ge(0))   # None: the task's default
    batch_size: int = field(default=8, metadata=ge(1))        # lm-eval batch size (local HF model)

    def cache_files(self) -> dict[str, Path]:
        return task_files(self.include_path)                   # an edited local task item re-scores

    def absent(self) -> Absent | None:
        inc = self.include_path
        if inc and not Path(str(inc)).expanduser().is_dir():   # a folder of task YAMLs, not a data file
            return Absent("include_path", f"{inc} is not a directory")
        return None

    def prepare(self, env: EvalEnv, missing: str | None) -> list[Task]:
        skip = INSTALL_HINT if not lm_eval_available() else missing
        return [Task(self.name, "lm_eval", skipped=skip)]

    def evaluate(self, tasks: list[Task], run: ModelRun) -> None:
        """lm-eval scores each task once per model (one record per task, resumable by task)."""
        for t in tasks:
            if t.skipped is not None:
                run_task(t, run.name, run.service, run.journal, run.settings, 1)
                continue
            pending = [str(x) for x in self.tasks if record_id(run.name, self.name, str(x)) not in run.journal]
            if not pending:
                continue
            spec = run.subject.lm_eval_model(run.name, run.weights, run.dtype)
            if spec is None:
                continue
            for score in run_lm_eval(spec[0], spec[1], pending, limit_of(self.limit), self.num_fewshot,
                                     int(self.batch_size), self.include_path):
                rid = record_id(run.name, self.name, score.task)
                if rid not in run.journal:
                    run.journal.append(EvalRecord(id=rid, model=run.name, benchmark=self.name, item_id=score.task,
                                                  prompt="", failure=score.failure,
                                                  meta={"split": t.split, "n": score.n, **score.metrics}))

    def rows(self, split: str, model: str, records: list[Any], resamples: int, seed: int) -> list[Row]:
        """One row per lm-eval task and metric, on lm-eval's scale (acc is a fraction, not a percentage).

        lm-eval keys are `metric,filter`: the row's metric is `task:metric`, with `[filter]` appended unless
        the filter is lm-eval's default `none`. The CI is the normal interval from lm-eval's stderr (NaN where
        lm-eval gives none).
        """
        out = []
        for r in judged(records):
            n = int(r.meta.get("n", 0))
            for k, v in sorted(r.meta.items()):
                metric_name, _, filt = k.partition(",")
                if not filt or metric_name.endswith("_stderr") or not isinstance(v, (int, float)) \
                        or isinstance(v, bool):
                    continue
                se = r.meta.get(f"{metric_name}_stderr,{filt}")
                ci = (v - 1.96 * se, v + 1.96 * se) if isinstance(se, (int, float)) and math.isfinite(se) else NAN
                metric = f"{r.item_id}:{metric_name}" + ("" if filt == "none" else f"[{filt}]")
                out.append(row(self.name, split, model, metric, float(v), n, ci))
        return out


register_component("eval/benchmark", "capability", CapabilityBenchmark)
