"""When a run ends: the results of stages that declare `wandb_artifact` become W&B artifacts.

Done after the stage graph rather than inside a stage, for two reasons: a stage served from the cache
does not run but its result still belongs to this run's lineage, and the exported model's card only
gets its eval metrics in the report stage. Nothing here is part of a cache key: logging changes no
stage's output.

Lineage: a logged result that a later logged stage of this run consumed (the pairs the model was
trained on) is recorded as used by the run; the others (the model) as its outputs.
"""
from __future__ import annotations

import logging
from typing import Any

from oyster_exp.pipeline.runner import RunContext, Stage
from oyster_exp.tracking.wandb import artifact_name, log_stage_artifact, wandb_loggers

log = logging.getLogger(__name__)


def _upstream(stage: Stage, by_name: dict[str, Stage]) -> set[str]:
    seen: set[str] = set()
    todo = list(stage.inputs)
    while todo:
        name = todo.pop()
        if name not in seen and name in by_name:
            seen.add(name)
            todo.extend(by_name[name].inputs)
    return seen


def publish_artifacts(ctx: RunContext, stages: list[Stage]) -> dict[str, str]:
    """Log every finished stage with a `wandb_artifact` type into the run's W&B loggers; {stage: artifact name}."""
    if not wandb_loggers(ctx.loggers):
        return {}
    by_name = {s.name: s for s in stages}
    logged = [s for s in stages if s.wandb_artifact and s.name in ctx.outputs]
    consumed = set().union(*(_upstream(s, by_name) for s in logged))
    run_name = str(ctx.full_cfg.run_name)
    out: dict[str, str] = {}
    for stage in logged:
        records = ctx.outputs[stage.name]
        paths = [ctx.artifacts_dir / f"{stage.name}.jsonl"]
        if (ctx.run_dir / stage.name).is_dir():
            paths.append(ctx.run_dir / stage.name)
        entry = ctx.entries.get(stage.name)
        meta: dict[str, Any] = {"stage": stage.name, "stage_version": stage.version, "records": len(records),
                                "failures": sum(1 for r in records if getattr(r, "failure", None)),
                                "cache_key": entry.key[:20] if entry else None, "run_name": run_name}
        if stage.wandb_artifact == "model":
            meta["base_model"] = str(ctx.full_cfg.model.model_id)
        name = artifact_name(f"{run_name}-{stage.wandb_artifact_name or stage.name}")
        if log_stage_artifact(ctx.loggers, name=name, kind=str(stage.wandb_artifact), paths=paths, metadata=meta,
                              used=stage.name in consumed):
            out[stage.name] = name
            log.info("W&B %s artifact %s (%s)", stage.wandb_artifact, name,
                     "used by this run" if stage.name in consumed else "output of this run")
    return out
