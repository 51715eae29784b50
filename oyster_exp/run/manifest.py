"""`manifest.json`: what a run was (commit, versions, config and input hashes, seed) and what it
cost (LLM calls and cache hits, records and failures per stage).

LLM cost is split in two because the two parts behave differently across the arms of a sweep:
`llm_calls` counts the data-engine stages (generate, assess, extract, optimize), which a sweep over a
training-only knob serves from the stage cache after the first arm (0 calls); `eval_llm_calls` counts the
evaluate stage (the model under test answering, and the judges scoring it), which is new work for every
arm that trains a different model. `tokens_in`/`tokens_out` are the data-engine tokens, `eval_tokens_*`
the evaluation's.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from oyster_exp.core.hashing import stable_hash
from oyster_exp.core.redaction import strip_secrets
from oyster_exp.pipeline.runner import RunContext

PACKAGES = ("oyster-exp", "torch", "transformers", "trl", "lightning", "hydra-core", "omegaconf", "wandb",
            "dashscope", "peft", "pydantic")


def git_state(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or None
        # outside a repository (an installed wheel run from any directory) `git status` fails too: unknown, not clean
        return {"commit": commit, "dirty": bool(git("status", "--porcelain")) if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def config_hash(cfg: DictConfig) -> str:
    """Hash of what determines results: machine paths and display switches are left out."""
    data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict)
    for k in ("paths", "print_config", "logger"):
        data.pop(k, None)
    return stable_hash(data)


EVAL_STAGES = ("evaluate",)   # stages whose LLM calls are counted as evaluation, not data engine


def split_usage(by_stage_role: dict[str, dict[str, int]]) -> tuple[dict[str, int], dict[str, int]]:
    """(data-engine totals, evaluation totals) from the service's "stage/role" counters."""
    engine: dict[str, int] = {}
    evaluation: dict[str, int] = {}
    for key, counts in by_stage_role.items():
        target = evaluation if key.split("/", 1)[0] in EVAL_STAGES else engine
        for k, v in counts.items():
            target[k] = target.get(k, 0) + int(v)
    return engine, evaluation


def build_manifest(ctx: RunContext, status: str, started: float, reason: str | None = None) -> dict[str, Any]:
    """`status` is completed, partial (transiently failed records remain, see `pipeline.runner`) or failed;
    `reason` says why for the last two."""
    usage = ctx.service.usage.as_dict() if ctx.service_started else {"total": {}, "by_stage_role": {}}
    total, ev = split_usage(usage["by_stage_role"])
    requests = usage["total"].get("structured_requests", 0)
    return {
        "status": status,
        **({"reason": reason} if reason else {}),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
        "git": git_state(Path(str(ctx.cfg.paths.root_dir))),
        "versions": versions(),
        "config_hash": config_hash(ctx.cfg),
        "seed": int(ctx.cfg.seed),
        "model_id": str(ctx.cfg.model.model_id),
        "input_hashes": dict(sorted(ctx.input_hashes.items())),
        "stage_keys": {k: v.get("key") for k, v in ctx.stats.items() if v.get("key")},
        "counters": {
            "llm_calls": total.get("calls", 0),
            "llm_cache_hits": total.get("cache_hits", 0),
            "llm_failures": total.get("failures", 0),
            "llm_retries": total.get("retries", 0),
            "tokens_in": total.get("prompt_tokens", 0),
            "tokens_out": total.get("completion_tokens", 0),
            "eval_llm_calls": ev.get("calls", 0),
            "eval_llm_cache_hits": ev.get("cache_hits", 0),
            "eval_llm_failures": ev.get("failures", 0),
            "eval_tokens_in": ev.get("prompt_tokens", 0),
            "eval_tokens_out": ev.get("completion_tokens", 0),
            "structured_requests": requests,
            "structured_valid_first_try": usage["total"].get("structured_valid", 0),
            "structured_valid_rate": round(usage["total"].get("structured_valid", 0) / requests, 4) if requests
            else None,
            "records": {k: v["records"] for k, v in ctx.stats.items() if "records" in v},
            "failures": {k: v["failures"] for k, v in ctx.stats.items() if "failures" in v},
            "transient_failures": {k: v["transient_failures"] for k, v in ctx.stats.items()
                                   if v.get("transient_failures")},
            "stage_cache": {k: v["cache"] for k, v in ctx.stats.items() if "cache" in v},
            "stage_seconds": {k: v["seconds"] for k, v in ctx.stats.items() if "seconds" in v},
        },
        "llm_usage": usage["by_stage_role"],
        "stage_summaries": {k: v["summary"] for k, v in ctx.stats.items() if v.get("summary")},
    }


def write_manifest(ctx: RunContext, status: str, started: float, reason: str | None = None) -> Path:
    path = ctx.run_dir / "manifest.json"
    path.write_text(json.dumps(strip_secrets(build_manifest(ctx, status, started, reason)), indent=2))
    return path
