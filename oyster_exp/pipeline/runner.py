"""The stage graph and its runner: cache lookup, resume, artifacts, manifest.

queries -> generate -> assess -> extract -> optimize -> pairs -> train -> evaluate -> report

Each stage is a function of (its config slice, its input artifacts). Its cache key hashes the
stage name and version, the resolved config slice, and the sha256 of every input artifact; a
finished entry is reused as is, an unfinished one (a killed run) is resumed record by record.

Failure policy. A record that failed transiently (`csa.records`: an LLM call gave no usable answer) is
not finished work: its stage's entry is sealed `PARTIAL`, not `COMPLETE`, and the run ends with status
`partial`. The stages after a partial one still run on what it produced (for its failed records they write
permanent "upstream" failures); once the failed records are redone, their input hash changes, so the next
run recomputes them too, the unchanged requests coming from the call cache. That next run of the same
command drops exactly the transiently failed records from the journal and redoes them, keeping every
success, and restores the first run's record order. A stage whose transiently failed share is over
`failure_policy.max_failed_share`, or all of whose records failed, stops the run with a `StageError` naming
the stage, the count and the first reason (exit 1).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel

from oyster_exp.config.structured import FailurePolicyConfig
from oyster_exp.core.errors import StageError
from oyster_exp.core.hashing import file_hash, stable_hash
from oyster_exp.llm.service import LLMService
from oyster_exp.pipeline.artifacts import CacheEntry, Journal, link_or_copy_tree, read_records, write_records

log = logging.getLogger(__name__)


def nonzero_rank() -> bool:
    """This process is rank > 0 of a multi-process launch (Lightning's ddp re-launch, torchrun, Slurm):
    it joins rank 0 inside a `joins_ranks` stage instead of waiting for the lock rank 0 holds."""
    return any(int(os.environ.get(k) or 0) > 0 for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


@dataclass
class RunContext:
    cfg: DictConfig
    run_dir: Path
    cache_root: Path
    loggers: list[Any] = field(default_factory=list)   # Lightning loggers (W&B, CSV)
    _service: LLMService | None = None
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    entries: dict[str, CacheEntry] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_hashes: dict[str, str] = field(default_factory=dict)
    current_stage: str = "-"

    @property
    def service(self) -> LLMService:
        """Built on first use, so a run served entirely from the cache loads no model."""
        if self._service is None:
            from oyster_exp.llm.build import build_service

            self._service = build_service(self.cfg, self.cache_root)
        self._service.stage = self.current_stage
        return self._service

    @service.setter
    def service(self, service: LLMService) -> None:
        """Serve the LLM roles from `service` instead of building one from `cfg.llm` (scripted clients in tests)."""
        self._service = service

    @property
    def service_started(self) -> bool:
        return self._service is not None

    @property
    def artifacts_dir(self) -> Path:
        return self.run_dir / "artifacts"


class Stage:
    name: ClassVar[str]
    version: ClassVar[int] = 1
    record_type: ClassVar[type[BaseModel]]
    inputs: ClassVar[tuple[str, ...]] = ()
    config_keys: ClassVar[tuple[str, ...]] = ()
    cacheable: ClassVar[bool] = True
    joins_ranks: ClassVar[bool] = False  # every rank of a multi-process launch runs it together (train)

    def config_slice(self, cfg: DictConfig) -> dict[str, Any]:
        out = {}
        for key in self.config_keys:
            node = OmegaConf.select(cfg, key, default=None)
            out[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig,)) or \
                OmegaConf.is_list(node) else node
        return out

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        """Hashes of inputs that are files rather than upstream artifacts (data files, models)."""
        return {}

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        raise NotImplementedError

    def summarize(self, ctx: RunContext, records: list[Any]) -> dict[str, Any] | None:
        """Statistics of the stage's records for `manifest.json` (computed on cache hits too)."""
        return None


def _selected(cfg: DictConfig, names: list[str]) -> set[str]:
    stage = cfg.stage
    chosen = [stage] if isinstance(stage, str) else list(stage)
    return set(names) if "all" in chosen else set(chosen)


def run_pipeline(ctx: RunContext, stages: list[Stage]) -> None:
    names = [s.name for s in stages]
    selected = _selected(ctx.cfg, names)
    # a selected stage needs its upstream stages; they come from the cache or run too
    for stage in stages:
        ctx.stats.setdefault(stage.name, {})
    for stage in stages:
        needed = stage.name in selected or any(stage.name in _upstream_closure(s, stages) for s in stages
                                              if s.name in selected)
        if not needed:
            continue
        _run_stage(ctx, stage, run_it=stage.name in selected)


def _upstream_closure(stage: Stage, stages: list[Stage]) -> set[str]:
    by_name = {s.name: s for s in stages}
    seen: set[str] = set()
    todo = list(stage.inputs)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(by_name[n].inputs)
    return seen


def _run_stage(ctx: RunContext, stage: Stage, run_it: bool) -> None:
    inputs = {name: ctx.outputs[name] for name in stage.inputs}
    input_hashes = {name: file_hash(ctx.entries[name].records_path) for name in stage.inputs}
    extra = stage.extra_inputs(ctx)
    ctx.input_hashes.update({f"{stage.name}:{k}": v for k, v in extra.items()})
    key = stable_hash({"stage": stage.name, "version": stage.version, "config": stage.config_slice(ctx.cfg),
                       "inputs": input_hashes, "extra": extra})
    entry = CacheEntry(ctx.cache_root / "stages", stage.name, key)
    ctx.entries[stage.name] = entry
    stats = ctx.stats[stage.name]
    stats["key"] = key[:20]
    t0 = time.time()
    if (not stage.cacheable or not ctx.cfg.stage_cache) and (entry.complete or entry.partial):
        entry.reset()
    with (contextlib.nullcontext() if stage.joins_ranks and nonzero_rank() else entry.lock()):
        if entry.complete or (entry.partial and not run_it):
            stats["cache"] = "hit" if entry.complete else "partial"
            log.info("stage %-8s cache %s (%s)", stage.name, stats["cache"], entry.dir)
            records = read_records(entry.records_path, stage.record_type)
        else:
            if not run_it:
                raise StageError(f"stage {stage.name!r} is needed as input but has no finished result for this "
                                 f"config; run it first (stage=[{stage.name},...]) or with stage=all")
            retried = drop_transient_failures(entry, stage.record_type)
            journal = Journal(entry.records_path, stage.record_type)
            resumed = len(journal)
            stats["cache"] = "retried" if retried else "resumed" if resumed else "miss"
            stats["resumed_records"] = resumed
            if retried:
                stats["retried_records"] = retried
            log.info("stage %-8s running%s", stage.name,
                     f" (redoing {retried} failed records, keeping {resumed})" if retried else
                     f" (resuming after {resumed} records)" if resumed else "")
            ctx.current_stage = stage.name
            try:
                stage.run(ctx, inputs, journal, entry)
            finally:
                journal.close()
                ctx.current_stage = "-"
            records = seal(entry, stage.name, stage.record_type)
    ctx.outputs[stage.name] = records
    write_records(ctx.artifacts_dir / f"{stage.name}.jsonl", records)
    files = entry.dir / "files"
    if files.exists():
        link_or_copy_tree(files, ctx.run_dir / stage.name)
    summary = stage.summarize(ctx, records)
    if summary:
        stats["summary"] = summary
    stats["records"] = len(records)
    stats["failures"] = sum(1 for r in records if getattr(r, "failure", None))
    stats["seconds"] = round(time.time() - t0, 2)
    check_failures(ctx, stage.name, records)


# -- failure policy (see the module docstring) -------------------------------------------------------------

def is_transient(record: BaseModel) -> bool:
    """A failed record worth redoing (`transient=True`); record types without the field never are."""
    return bool(getattr(record, "failure", None)) and bool(getattr(record, "transient", None))


def _failure_counts(records: list[Any]) -> dict[str, Any]:
    failed = [r for r in records if is_transient(r)]
    return {"records": len(records), "failures": sum(1 for r in records if getattr(r, "failure", None)),
            "transient_failures": len(failed), "first_failure": failed[0].failure if failed else None}


def drop_transient_failures(entry: CacheEntry, record_type: type[BaseModel]) -> int:
    """Before a stage runs on an existing journal: remove its transiently failed records (the stage then
    redoes them like never-started ones) and remember the journal's order for `seal`; returns how many."""
    if not entry.records_path.exists():
        return 0
    journal = Journal(entry.records_path, record_type)   # opening it repairs a torn tail (a killed run)
    records = journal.records()
    journal.close()
    failed = [r for r in records if is_transient(r)]
    if not failed:
        return 0
    if not entry.order_path.exists():   # a retry killed before sealing keeps the first run's order
        entry.order_path.write_text(json.dumps([r.id for r in records]))  # type: ignore[attr-defined]
    entry.unmark_partial()
    write_records(entry.records_path, [r for r in records if not is_transient(r)], durable=True)
    return len(failed)


def seal(entry: CacheEntry, name: str, record_type: type[BaseModel]) -> list[Any]:
    """The stage's records, in the first run's order if some were redone; marks the entry COMPLETE, or
    PARTIAL while transiently failed records remain."""
    records = read_records(entry.records_path, record_type)
    if entry.order_path.exists():
        rank = {rid: i for i, rid in enumerate(json.loads(entry.order_path.read_text()))}
        ordered = sorted(records, key=lambda r: rank.get(r.id, len(rank)))  # type: ignore[attr-defined]
        if ordered != records:
            write_records(entry.records_path, ordered, durable=True)
            records = ordered
    counts = {"stage": name, **_failure_counts(records)}
    if counts["transient_failures"]:
        entry.mark_partial(counts)
    else:
        entry.mark_complete(counts)
    return records


def failure_share_limit(cfg: DictConfig) -> float:
    value = OmegaConf.select(cfg, "failure_policy.max_failed_share", default=None)
    return float(value if value is not None else FailurePolicyConfig.max_failed_share)


def check_failures(ctx: RunContext, name: str, records: list[Any]) -> None:
    """Note a stage's transient failures in its stats; stop the run when they are over the threshold."""
    counts = _failure_counts(records)
    n, total = counts["transient_failures"], counts["records"]
    ctx.stats[name]["transient_failures"] = n
    if not n:
        return
    first = " ".join(str(counts["first_failure"]).split())[:200]
    ctx.stats[name]["first_failure"] = first
    limit = failure_share_limit(ctx.cfg)
    if n == total or n / total > limit:
        raise StageError(f"stage {name}: {n}/{total} records failed (first: {first}); over "
                         f"failure_policy.max_failed_share={limit:g}, the next run of the same command retries them")
    log.warning("stage %-8s %d/%d records failed (first: %s); the next run of the same command retries them",
                name, n, total, first)


def partial_stages(ctx: RunContext) -> list[str]:
    """One line per stage of this run that kept transiently failed records (the run's status is `partial`)."""
    return [f"stage {name}: {st['transient_failures']}/{st['records']} records failed (first: {st['first_failure']})"
            for name, st in ctx.stats.items() if st.get("transient_failures")]
