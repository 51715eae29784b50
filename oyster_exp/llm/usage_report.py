"""LLM usage (calls, cache hits, tokens, failures, retries per stage and role) into the active W&B run.

The manifest already records the same numbers; logging them to W&B puts the cost of a run next to
its metrics, comparable across a sweep. Summary keys are `llm/total/<counter>` and
`llm/<stage>/<role>/<counter>`; the table `llm/usage` has one row per stage and role.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def usage_rows(usage: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the per-stage/role table, from `Usage.as_dict()`."""
    counters = list(usage.get("total", {}))
    rows = []
    for stage_role, counts in usage.get("by_stage_role", {}).items():
        stage, _, role = stage_role.partition("/")
        rows.append([stage, role, *(int(counts.get(k, 0)) for k in counters)])
    return ["stage", "role", *counters], rows


def log_usage(usage: dict[str, Any], run: Any = None) -> bool:
    """Write `usage` into `run` (default: the active W&B run); False when there is no run to write to."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a hard dependency, but logging must never break a run
        return False
    run = run if run is not None else wandb.run
    if run is None or getattr(run, "disabled", False):
        return False
    summary = {f"llm/total/{k}": int(v) for k, v in usage.get("total", {}).items()}
    for stage_role, counts in usage.get("by_stage_role", {}).items():
        summary.update({f"llm/{stage_role}/{k}": int(v) for k, v in counts.items()})
    run.summary.update(summary)
    columns, rows = usage_rows(usage)
    run.log({"llm/usage": wandb.Table(columns=columns, data=rows)}, commit=True)
    return True


def log_run_usage(ctx: Any) -> None:
    """The CLI's end-of-run hook: the run's LLM usage into the active W&B run (if there is one)."""
    from oyster_exp.llm.service import COUNTER_KEYS

    # a run served from the stage cache made no call: its zeros are worth seeing beside the others
    usage = (ctx.service.usage.as_dict() if getattr(ctx, "service_started", False)
             else {"total": dict.fromkeys(COUNTER_KEYS, 0), "by_stage_role": {}})
    try:
        log_usage(usage)
    except Exception as e:
        log.warning("could not log LLM usage to W&B: %s", e)
