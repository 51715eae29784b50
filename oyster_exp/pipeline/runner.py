"""The stage graph and its runner: cache lookup, resume, artifacts, manifest.

queries -> generate -> assess -> extract -> optimize -> pairs -> train -> evaluate -> report

Each stage is a function of (its config slice, its input artifacts). Its cache key hashes the
stage name and version, the resolved config slice, the sha256 of every input artifact, and the
content of every prompt template and packaged asset the stage declares; a finished entry is reused as
is, an unfinished one (a killed run) is resumed record by record.

The stage contract holds while a stage runs: `ctx.cfg` is a read-only view of exactly the keys the
stage declares (`config_keys`, plus `unkeyed_keys`); reading any other key raises `ContractError`
naming the stage and the key, and so does rendering a template or opening a packaged asset it does
not declare (`oyster_exp.core.contract`). The full config stays in `ctx.full_cfg` for the runner.

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
import copy
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from pydantic import BaseModel

from oyster_exp.config.structured import FailurePolicyConfig
from oyster_exp.core.contract import ContractError, active_stage, asset_files, declared
from oyster_exp.core.errors import StageError
from oyster_exp.core.estimates import CallEstimate, Workload
from oyster_exp.core.hashing import file_hash, stable_hash
from oyster_exp.csa.prompts import template_files
from oyster_exp.llm.service import LLMService
from oyster_exp.pipeline.artifacts import CacheEntry, Journal, link_or_copy_tree, read_records, write_records

log = logging.getLogger(__name__)


def nonzero_rank() -> bool:
    """This process is rank > 0 of a multi-process launch (Lightning's ddp re-launch, torchrun, Slurm):
    it joins rank 0 inside a `joins_ranks` stage instead of waiting for the lock rank 0 holds."""
    return any(int(os.environ.get(k) or 0) > 0 for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


class UndeclaredConfigKey(ContractError, InterpolationResolutionError):
    """Raised by the placeholder of an undeclared key: an interpolation error type, so OmegaConf passes it
    through unchanged on every read path (attribute, item, `.get`, `to_container(resolve=True)`)."""


_UNDECLARED = "oyster_exp_undeclared"


def _undeclared(key: str) -> Any:
    d = declared()
    stage = d.stage if d is not None else "?"
    raise UndeclaredConfigKey(f"stage {stage!r} reads config key {key!r}, which it does not declare (add it to "
                              f"the stage's `config_keys`, or to `unkeyed_keys` if it cannot change the output)")


if not OmegaConf.has_resolver(_UNDECLARED):
    OmegaConf.register_new_resolver(_UNDECLARED, _undeclared)


def _covers(declared: set[str], key: str) -> str:
    """"all" when `key` is declared (or under a declared key), "part" when a declared key lies below it."""
    if any(key == d or key.startswith(d + ".") for d in declared):
        return "all"
    return "part" if any(d.startswith(key + ".") for d in declared) else "none"


def config_view(cfg: DictConfig, keys: tuple[str, ...] | list[str]) -> DictConfig:
    """A read-only config holding the resolved values of `keys` only.

    Every other key of `cfg` stays present as a placeholder whose read raises `UndeclaredConfigKey`, so
    `view.get("model")` fails as loudly as `view.model` instead of returning a default; keys absent from
    `cfg` behave as before (`.get` gives its default). Declared nodes keep their structured-config types.
    """
    full = copy.deepcopy(cfg)
    declared = set(keys)

    def build(node: DictConfig, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in node:
            key = f"{prefix}{k}"
            cover = _covers(declared, key)
            if cover == "all":
                value = OmegaConf.select(full, key)
                if isinstance(value, DictConfig) or OmegaConf.is_list(value):
                    OmegaConf.resolve(value)
                out[str(k)] = value
            elif cover == "part" and isinstance(node._get_node(k), DictConfig):
                out[str(k)] = build(node[k], key + ".")
            else:
                out[str(k)] = "${" + _UNDECLARED + ":'" + key + "'}"
        return out

    view = OmegaConf.create(build(full, ""), flags={"allow_objects": True})
    OmegaConf.set_struct(view, True)
    OmegaConf.set_readonly(view, True)
    return view


@dataclass
class RunContext:
    cfg: DictConfig                 # the full config; while a stage runs, that stage's view (`config_view`)
    run_dir: Path
    cache_root: Path
    loggers: list[Any] = field(default_factory=list)   # Lightning loggers (W&B, CSV)
    _service: LLMService | None = None
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    entries: dict[str, CacheEntry] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_hashes: dict[str, str] = field(default_factory=dict)
    current_stage: str = "-"
    full_cfg: DictConfig = field(init=False)
    _declared_roles: frozenset[str] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.full_cfg = self.cfg

    @contextlib.contextmanager
    def stage_scope(self, stage: Stage) -> Iterator[None]:
        """Within: `cfg` is the stage's view, and templates and assets are checked against its declarations."""
        keys = stage.visible_keys(self.full_cfg)
        view = config_view(self.full_cfg, keys)
        with active_stage(stage.name, stage.templates, stage.assets):
            self.cfg = view
            self._declared_roles = declared_roles(keys)
            try:
                yield
            except UndeclaredConfigKey as e:       # OmegaConf appends "full_key: ..." lines: keep the one line
                raise ContractError(str(e).splitlines()[0]) from None
            finally:
                self.cfg = self.full_cfg
                self._declared_roles = None

    @property
    def service(self) -> LLMService:
        """Built on first use, so a run served entirely from the cache loads no model."""
        if self._service is None:
            from oyster_exp.llm.build import build_service

            self._service = build_service(self.full_cfg, self.cache_root)
        self._service.stage = self.current_stage
        self._service.declared_roles = self._declared_roles
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
    config_keys: ClassVar[tuple[str, ...]] = ()     # what the stage reads and its cache key hashes
    # readable too, but outside the cache key because they cannot change the output (batching, caches)
    unkeyed_keys: ClassVar[tuple[str, ...]] = ()
    templates: ClassVar[tuple[str, ...]] = ()       # prompt templates rendered (csa/prompts/<lang>/<name>.j2)
    assets: ClassVar[tuple[str, ...]] = ()          # packaged files or folders read, relative to oyster_exp/
    cacheable: ClassVar[bool] = True
    joins_ranks: ClassVar[bool] = False  # every rank of a multi-process launch runs it together (train)
    # the W&B artifact type its result is logged as when the run ends ("dataset", "model"); None: not logged
    wandb_artifact: ClassVar[str | None] = None
    wandb_artifact_name: ClassVar[str | None] = None   # "<run_name>-<this>"; None: the stage name
    # no LLM call, no training: when a selected stage needs it and the cache has no result, it runs instead
    # of stopping the run (reading a file or re-deriving pairs costs less than asking the user to)
    runs_when_needed: ClassVar[bool] = False

    def upstream(self, cfg: DictConfig) -> tuple[str, ...]:
        """The stages whose artifacts this stage reads for `cfg` (`inputs`, unless a choice changes them)."""
        return self.inputs

    def declared_keys(self, cfg: DictConfig) -> tuple[str, ...]:
        """The keys this stage reads and hashes for `cfg`; a stage whose needs depend on a choice adds them here."""
        return self.config_keys

    def visible_keys(self, cfg: DictConfig) -> tuple[str, ...]:
        return (*self.config_slice(cfg).keys(), *self.unkeyed_keys)

    def asset_hashes(self) -> dict[str, str]:
        """sha256 of every declared template (each language) and packaged asset, for the cache key."""
        out = {f"prompts/{k}": file_hash(p) for name in self.templates for k, p in template_files(name).items()}
        out.update({k: file_hash(p) for a in self.assets for k, p in asset_files(a).items()})
        return out

    def estimate(self, cfg: DictConfig, work: Workload) -> list[CallEstimate]:
        """The LLM requests this stage makes for `work` (first attempts; no LLM: none)."""
        return []

    def config_slice(self, cfg: DictConfig) -> dict[str, Any]:
        out = {}
        for key in self.declared_keys(cfg):
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


def declared_roles(keys: tuple[str, ...]) -> frozenset[str] | None:
    """The LLM roles a stage may call, from its declared keys: `llm.roles.<role>` each, or None (any) when it
    declares all of `llm.roles` (or `llm`)."""
    if any(k in ("llm", "llm.roles") for k in keys):
        return None
    return frozenset(k.split(".")[2] for k in keys if k.startswith("llm.roles.") and len(k.split(".")) > 2)


def graph_stages(cfg: DictConfig, stages: list[Stage]) -> list[Stage]:
    """The stages of this config's graph: the last one and everything upstream of it, in order. With pairs
    from the `data` source the data-engine stages are upstream of nothing, so `stage=all` leaves them out."""
    keep = {stages[-1].name, *_upstream_closure(stages[-1], stages, cfg)} if stages else set()
    return [s for s in stages if s.name in keep]


def _selected(cfg: DictConfig, stages: list[Stage]) -> set[str]:
    stage = cfg.stage
    chosen = [stage] if isinstance(stage, str) else list(stage)
    return {s.name for s in graph_stages(cfg, stages)} if "all" in chosen else set(chosen)


def run_pipeline(ctx: RunContext, stages: list[Stage]) -> None:
    selected = _selected(ctx.cfg, stages)
    # a selected stage needs its upstream stages; they come from the cache or run too
    for stage in stages:
        ctx.stats.setdefault(stage.name, {})
    for stage in stages:
        needed = stage.name in selected or any(stage.name in _upstream_closure(s, stages, ctx.full_cfg)
                                              for s in stages if s.name in selected)
        if not needed:
            continue
        _run_stage(ctx, stage, run_it=stage.name in selected or stage.runs_when_needed)


def _upstream_closure(stage: Stage, stages: list[Stage], cfg: DictConfig) -> set[str]:
    by_name = {s.name: s for s in stages}
    seen: set[str] = set()
    todo = list(stage.upstream(cfg))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(by_name[n].upstream(cfg))
    return seen


def stage_key(ctx: RunContext, stage: Stage) -> str:
    """The content address of `stage` for this config and these upstream results (see the module docstring)."""
    input_hashes = {name: file_hash(ctx.entries[name].records_path) for name in stage.upstream(ctx.full_cfg)}
    with ctx.stage_scope(stage):
        extra = stage.extra_inputs(ctx)
    ctx.input_hashes.update({f"{stage.name}:{k}": v for k, v in extra.items()})
    return stable_hash({"stage": stage.name, "version": stage.version, "config": stage.config_slice(ctx.full_cfg),
                        "inputs": input_hashes, "extra": extra, "assets": stage.asset_hashes()})


def _run_stage(ctx: RunContext, stage: Stage, run_it: bool) -> None:
    inputs = {name: ctx.outputs[name] for name in stage.upstream(ctx.full_cfg)}
    key = stage_key(ctx, stage)
    entry = CacheEntry(ctx.cache_root / "stages", stage.name, key)
    ctx.entries[stage.name] = entry
    stats = ctx.stats[stage.name]
    stats["key"] = key[:20]
    t0 = time.time()
    if (not stage.cacheable or not ctx.full_cfg.stage_cache) and (entry.complete or entry.partial):
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
                with ctx.stage_scope(stage):
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
    with ctx.stage_scope(stage):
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
    limit = failure_share_limit(ctx.full_cfg)
    if n == total or n / total > limit:
        raise StageError(f"stage {name}: {n}/{total} records failed (first: {first}); over "
                         f"failure_policy.max_failed_share={limit:g}, the next run of the same command retries them")
    log.warning("stage %-8s %d/%d records failed (first: %s); the next run of the same command retries them",
                name, n, total, first)


def partial_stages(ctx: RunContext) -> list[str]:
    """One line per stage of this run that kept transiently failed records (the run's status is `partial`)."""
    return [f"stage {name}: {st['transient_failures']}/{st['records']} records failed (first: {st['first_failure']})"
            for name, st in ctx.stats.items() if st.get("transient_failures")]
