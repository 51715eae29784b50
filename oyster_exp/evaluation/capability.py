"""General capability through lm-evaluation-harness, when it is installed (extra `lm_eval`).

The paper reports General rows (Knowledge, Understanding, Math&Code) without naming their benchmarks, so
the task list is configuration. lm-eval is a large optional dependency: without it the suite records a
clean skip (with the install command), never an import error in the middle of a run. Task data must
already be in the local HF datasets cache (runs are offline).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

INSTALL_HINT = "lm-evaluation-harness is not installed (pip install 'oyster-exp[lm_eval]')"


@dataclass
class TaskScore:
    task: str
    metrics: dict[str, float] = field(default_factory=dict)   # e.g. {"acc,none": 0.61, "acc_stderr,none": 0.02}
    n: int = 0
    failure: str | None = None


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def model_args(backend: str, path: str | None, served_model: str | None, base_url: str | None,
               dtype: str = "float32") -> tuple[str, str]:
    """(lm-eval model type, model_args string) for the in-process or the server subject."""
    if backend == "openai":
        return "local-completions", f"model={served_model},base_url={str(base_url).rstrip('/')}/completions"
    return "hf", f"pretrained={path},dtype={dtype}"


def run_lm_eval(model: str, args: str, tasks: list[str], limit: int | None, num_fewshot: int | None,
                batch_size: int) -> list[TaskScore]:
    """One score per task; a task that fails (e.g. its data is not cached) is a failure with the reason."""
    import lm_eval  # type: ignore[import-not-found]

    out: list[TaskScore] = []
    for task in tasks:
        try:
            res: Any = lm_eval.simple_evaluate(model=model, model_args=args, tasks=[task], limit=limit,
                                               num_fewshot=num_fewshot, batch_size=batch_size)
        except Exception as e:  # noqa: BLE001 - a task failure is recorded, the rest of the suite goes on
            out.append(TaskScore(task=task, failure=f"lm_eval: {type(e).__name__}: {e}"[:500]))
            continue
        for name, metrics in (res.get("results") or {}).items():
            nums = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            n = int((res.get("n-samples") or {}).get(name, {}).get("effective", 0))
            out.append(TaskScore(task=name, metrics=nums, n=n))
    return out
