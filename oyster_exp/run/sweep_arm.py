"""One arm of a multirun: its identity, its ledger entries, and the rules that keep a sweep going.

Hydra's launchers stop a whole sweep at the first job that raises, and a sweep started again redoes
every job. Here each arm runs inside `run_arm`, which records the outcome instead of raising:

* `<sweep dir>/ledger.jsonl`: one line per arm of this sweep (status completed | failed | skipped,
  the reason of a failure, seconds, the objective value), appended by the job itself so it works the
  same under the basic, joblib and Slurm launchers; an arm whose run ended `partial` (records whose LLM
  calls failed remain, see `pipeline.runner`) counts as failed, so the rerun of the sweep retries it;
* `<cache dir>/arms/<key>.json`: the last outcome of an arm config across sweeps, keyed by the hash of
  its resolved config (paths, display switches, loggers and the sweep's own switches left out). A rerun
  of the same sweep command skips an arm whose key finished before: it copies that arm's results into
  the new arm directory and records `skipped` (0 LLM calls, no training), so only unfinished arms run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from oyster_exp.core.hashing import stable_hash
from oyster_exp.reporting.sweep_ledger import append_ledger, arm_label

log = logging.getLogger(__name__)

# what a skipped arm copies from the run that finished it (the trained model stays where it is)
COPIED = ("results.json", "report.md", "plots", "artifacts", "csv", "config_tree.txt")
# test-only fault injection (documented in README "Run a sweep"): "STAGE:OVERRIDE", e.g. "train:objective.beta=0.1"
# makes that stage raise in every arm whose overrides contain OVERRIDE. An environment variable, not a config
# key, so that the rerun is the very same command: the failure stands in for a crash (OOM, node loss).
FAULT_ENV = "OYSTER_EXP_TEST_FAIL"


def _hydra() -> Any | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    from hydra.types import RunMode

    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def sweep_dir() -> Path | None:
    hc = _hydra()
    return Path(str(hc.sweep.dir)) if hc is not None and is_multirun() else None


def arm_overrides() -> list[str]:
    hc = _hydra()
    return list(hc.overrides.task) if hc is not None else []


def wandb_group() -> str | None:
    """A W&B group per sweep: the sweep directory's name (date-time and run name); None for a single run."""
    sd = sweep_dir()
    return f"{sd.parent.name}_{sd.name}" if sd is not None else None


def current_arm_label() -> str:
    """This job's label inside the running multirun (see `reporting.sweep_ledger.arm_label`)."""
    return arm_label(arm_overrides(), sweep_dir())


def wandb_job_type(study: str | None = None, run_name: str | None = None) -> str:
    """The W&B job type: the study (`sweep.name`, else the run name) for every arm of a sweep, so the W&B
    UI can filter one study's runs; "pipeline" outside sweeps. W&B caps job types at 64 characters."""
    if not is_multirun():
        return "pipeline"
    return str(study or run_name or "sweep")[:64]


def wandb_run_name(run_name: str) -> str:
    """The W&B run name: the run name, and in a sweep the arm's own overrides after it, so that arms differ
    ("orpo_beta: objective.beta=0.1") where they would all read "orpo_beta"."""
    return f"{run_name}: {current_arm_label()}" if is_multirun() else str(run_name)


def gpus_per_node(devices: Any) -> int:
    """`hydra/launcher=slurm` asks Slurm for the trainer's devices per node; "auto" cannot be scheduled."""
    if isinstance(devices, bool) or not isinstance(devices, (int, str)) or not str(devices).isdigit():
        raise ValueError(f"trainer.devices={devices!r}: hydra/launcher=slurm needs a number of GPUs per node "
                         f"(e.g. trainer.devices=8)")
    return int(devices)


def sqlite_url(path: str) -> str:
    """`sqlite:///PATH` with PATH's directory created: sqlite does not create it, and Optuna opens the study
    before any job has made the output tree."""
    p = Path(path).expanduser().resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p}"


def arm_key(cfg: DictConfig) -> str:
    data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict)
    for k in ("paths", "print_config", "logger"):
        data.pop(k, None)
    sweep = dict(data.get("sweep") or {})
    for k in ("skip_finished", "fail_fast"):
        sweep.pop(k, None)
    data["sweep"] = sweep
    return stable_hash(data)


def _arm_state_path(cfg: DictConfig, key: str) -> Path:
    return Path(str(cfg.paths.cache_dir)) / "arms" / f"{key}.json"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def objective_value(run_dir: Path, key: str) -> float:
    """The report headline `key` (e.g. "trained/construction/constructive@beta=2") of a finished run, NaN if absent."""
    path = run_dir / "artifacts" / "report.jsonl"
    if not path.exists():
        return math.nan
    for line in path.read_text().splitlines():
        if line.strip():
            value = json.loads(line).get("headline", {}).get(key)
            if value is not None:
                return float(value)
    return math.nan


def _copy_finished(src: Path, dst: Path) -> None:
    for name in COPIED:
        s = src / name
        if s.is_dir():
            shutil.copytree(s, dst / name, dirs_exist_ok=True)
        elif s.exists():
            shutil.copy2(s, dst / name)


def _skip(cfg: DictConfig, prior: dict[str, Any], arm_dir: Path) -> dict[str, Any]:
    src = Path(prior["run_dir"])
    _copy_finished(src, arm_dir)
    old = json.loads((src / "manifest.json").read_text()) if (src / "manifest.json").exists() else {}
    manifest = {
        "status": "skipped",
        "reason": f"finished before in {src} (same arm config); delete {prior['state_file']} to run it again",
        "skipped_from": str(src),
        "seconds": 0.0,
        "config_hash": old.get("config_hash"),
        "model_id": old.get("model_id"),
        "counters": {"llm_calls": 0, "eval_llm_calls": 0, "llm_cache_hits": 0},
        "finished_counters": old.get("counters", {}),
    }
    _write_json_atomic(arm_dir / "manifest.json", manifest)
    return manifest


def _annotate_manifest(arm_dir: Path, arm: dict[str, Any]) -> None:
    path = arm_dir / "manifest.json"
    data = json.loads(path.read_text()) if path.exists() else {"status": arm["status"]}
    data["arm"] = arm
    if arm.get("reason"):
        data["reason"] = arm["reason"]
    _write_json_atomic(path, data)


def parallel_launcher() -> bool:
    """True under hydra/launcher=joblib: several arms share this machine's cores at once."""
    hc = _hydra()
    return hc is not None and "joblib" in str(OmegaConf.select(hc, "launcher._target_", default="")).lower()


def _limit_threads() -> None:
    """One OpenMP/MKL thread per arm under the joblib launcher (unless OMP_NUM_THREADS says otherwise).

    Several torch processes with the default thread count oversubscribe the cores (measured 5-100x
    slower). The plugin's own `hydra/launcher=joblib` config is used as is; setting the variables here
    also covers a reused worker process where torch was already imported by an earlier arm.
    """
    if not parallel_launcher():
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    n = os.environ["OMP_NUM_THREADS"]
    if n.isdigit():
        import torch

        torch.set_num_threads(int(n))


def _returned(value: float) -> float | None:
    """None for a failed arm or a missing objective: the Optuna sweeper then marks the trial failed (it reads
    NaN the same way; None also keeps other sweepers that would choke on NaN going)."""
    return value if math.isfinite(value) else None


def run_arm(cfg: DictConfig, runner: Callable[[DictConfig], float | None]) -> float | None:
    """Run one arm, record it, and return its objective value (None when it failed), never raising.

    With `sweep.fail_fast=true` a failed arm raises again after it was recorded (Hydra's own behaviour).
    """
    hc = _hydra()
    assert hc is not None
    arm_dir = Path(str(hc.runtime.output_dir))
    sweep = Path(str(hc.sweep.dir))
    overrides = arm_overrides()
    key = arm_key(cfg)
    state_file = _arm_state_path(cfg, key)
    base = {"job": int(hc.job.num), "label": arm_label(overrides, sweep), "overrides": overrides, "key": key[:20],
            "run_dir": str(arm_dir)}
    prior = json.loads(state_file.read_text()) if state_file.exists() else None
    if (cfg.sweep.skip_finished and prior and prior.get("status") == "completed"
            and (Path(prior["run_dir"]) / "manifest.json").exists()):
        prior["state_file"] = str(state_file)
        manifest = _skip(cfg, prior, arm_dir)
        value = objective_value(arm_dir, str(cfg.sweep.objective))
        entry = {**base, "status": "skipped", "reason": manifest["reason"], "seconds": 0.0, "objective": value,
                 "llm_calls": 0, "eval_llm_calls": 0}
        append_ledger(sweep, entry)
        _annotate_manifest(arm_dir, entry)
        log.info("arm %s skipped: %s", base["label"], manifest["reason"])
        return _returned(value)
    _limit_threads()
    t0 = time.time()
    status, reason, error = "completed", None, None
    try:
        runner(cfg)
        if _manifest_status(arm_dir).startswith("partial"):   # not finished work: the sweep's rerun redoes it
            status, reason = "failed", _manifest_status(arm_dir)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        error = e
        status = "failed"
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, SystemExit) else _manifest_status(arm_dir)
        log.error("arm %s failed: %s\n%s", base["label"], reason, traceback.format_exc(limit=-3))
    value = objective_value(arm_dir, str(cfg.sweep.objective)) if status == "completed" else math.nan
    counters = _counters(arm_dir)
    entry = {**base, "status": status, "reason": reason, "seconds": round(time.time() - t0, 2), "objective": value,
             "llm_calls": counters.get("llm_calls"), "eval_llm_calls": counters.get("eval_llm_calls")}
    append_ledger(sweep, entry)
    _annotate_manifest(arm_dir, entry)
    _write_json_atomic(state_file, {"status": status, "run_dir": str(arm_dir), "reason": reason,
                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if error is not None and cfg.sweep.fail_fast:
        raise error
    return _returned(value)


def _manifest_status(arm_dir: Path) -> str:
    """The run's status with its reason ("partial: stage generate: 2/6 records failed (...)")."""
    path = arm_dir / "manifest.json"
    if path.exists():
        data = json.loads(path.read_text())
        status = str(data.get("status", "failed"))
        return f"{status}: {data['reason']}" if data.get("reason") else status
    return "failed (no manifest)"


def _counters(arm_dir: Path) -> dict[str, Any]:
    path = arm_dir / "manifest.json"
    return json.loads(path.read_text()).get("counters", {}) if path.exists() else {}


class InjectedFault(RuntimeError):
    """Raised by a stage that `OYSTER_EXP_TEST_FAIL` made fail (tests of sweep failure handling)."""


def inject_test_fault(stages: list[Any], overrides: list[str]) -> list[Any]:
    """Make one stage raise when `OYSTER_EXP_TEST_FAIL="STAGE:OVERRIDE"` matches this arm (tests only)."""
    spec = os.environ.get(FAULT_ENV, "")
    if ":" not in spec:
        return stages
    stage_name, override = spec.split(":", 1)
    if override not in overrides:
        return stages
    for stage in stages:
        if stage.name == stage_name:
            def fail(*_: Any, _name: str = stage_name, **__: Any) -> None:
                raise InjectedFault(f"{FAULT_ENV}: stage {_name} made to fail for {override}")

            stage.run = fail
    return stages
