"""A Hydra sweeper over Optuna's ask-and-tell API (`hydra/sweeper=oyster_optuna`), for Optuna 4 and later.

Why our own: the released `hydra-optuna-sweeper` (1.3.0, the last on PyPI) pins `optuna<3`, which holds
SQLAlchemy below 2. Ask-and-tell needs nothing of a plugin: ask Optuna for a batch of trials, launch
them as Hydra jobs with the configured launcher (basic, joblib, Slurm), tell each its return value.

The search space uses Hydra's sweep grammar, as the old plugin did: `interval(a, b)` is a float range,
`tag(int, interval(a, b))` an int range, `tag(log, interval(a, b))` log-uniform, `choice(...)` and
`range(...)` categorical.
Sweep overrides on the command line join the space; plain ones are passed to every trial.

A study lives in `storage` (sqlite under the cache) under `study_name`: the same command again adds
`n_trials` more trials to it, the sampler seeing every earlier one. Trials a killed sweep left running are
marked failed first, so they do not hold the sampler's place forever. A study made by Optuna 2.10 is
upgraded in place to the running Optuna's schema. A job that fails or returns None or NaN is a failed
trial. `optimization_results.yaml` in the sweep directory names the best trial so far.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)
RESULTS_FILE = "optimization_results.yaml"


def distribution(override: Override) -> Any:
    """The Optuna distribution of one sweep override (`interval`, `tag(log|int, interval)`, `choice`, `range`)."""
    import optuna.distributions as D

    value = override.value()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:                       # Hydra reads interval bounds as floats
            return D.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return D.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return D.CategoricalDistribution(list(override.sweep_iterator(transformer=lambda x: x)))
    raise ValueError(f"hydra.sweeper.params.{override.get_key_element()}: not a sweep "
                     f"(use interval(a,b), tag(log, interval(a,b)), choice(...) or range(...)): {override.input_line}")


def search_space(params: dict[str, Any] | None, arguments: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(distributions by key, fixed overrides) from the sweeper's `params` and the command line."""
    parser = OverridesParser.create()
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}               # a plain value in `params` is passed to every trial
    for o in [*parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()]),
              *parser.parse_overrides(arguments)]:
        key = o.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if o.is_sweep_override():
            space[key] = distribution(o)
        else:
            fixed[key] = o.input_line
    return space, list(fixed.values())


def open_storage(url: str | None) -> Any:
    """Optuna storage at `url` (None: in memory), upgrading a schema an older Optuna wrote (2.10's sqlite)."""
    import optuna

    if url is None:
        return None
    try:
        return optuna.storages.RDBStorage(url)
    except RuntimeError as e:
        if "upgrade" not in str(e):
            raise
        log.warning("upgrading Optuna study storage %s to optuna %s (%s)", url, optuna.__version__,
                    str(e).splitlines()[0])
        storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
        storage.upgrade()
        return optuna.storages.RDBStorage(url)


def returned_value(ret: Any) -> float | None:
    """A job's objective, or None when the job failed or gave no finite number."""
    from hydra.core.utils import JobStatus

    if ret.status != JobStatus.COMPLETED:
        return None
    value = ret.return_value
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class OptunaSweeper(Sweeper):
    """Hydra sweeper: `n_trials` Optuna trials, `n_jobs` launched together, into a resumable study."""

    def __init__(self, *, direction: str = "maximize", study_name: str | None = None, storage: str | None = None,
                 n_trials: int = 20, n_jobs: int = 1, sampler: Any = None, params: Any = None) -> None:
        self.direction = str(direction)
        self.study_name = study_name
        self.storage = storage
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.sampler_node = sampler
        self.params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def _sampler(self, done: int = 0) -> Any:
        """The sampler, its seed moved on by the trials the study already has.

        A seeded sampler built afresh by each run of the same command would replay the same random
        start-up suggestions, so a resumed study would propose its first trials again (and the sweep
        would skip them as finished arms). Seed + number of earlier trials keeps it reproducible and new.
        """
        from hydra.utils import instantiate

        node = self.sampler_node
        if not (OmegaConf.is_config(node) or isinstance(node, dict)):
            return node                      # built by Hydra already (a config without `_recursive_: false`)
        node = OmegaConf.create(OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node)
        if done and node.get("seed") is not None:
            node.seed = int(node.seed) + done
        return instantiate(node)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None and self.launcher is not None
        space, fixed = search_space(self.params, arguments)
        if not space:
            raise ValueError("hydra.sweeper.params: no parameter to search")
        study = optuna.create_study(study_name=self.study_name, storage=open_storage(self.storage),
                                    sampler=self._sampler(), direction=self.direction, load_if_exists=True)
        if (done := len(study.get_trials(deepcopy=False))) > 0:
            study.sampler = self._sampler(done)
        stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
        for t in stale:      # left running by a killed sweep of this study
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        if stale:
            log.warning("study %s: %d trial(s) a stopped sweep left running marked failed", self.study_name,
                        len(stale))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_idx, left = 0, self.n_trials
        while left > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            batch = [tuple(fixed + [f"{k}={v}" for k, v in t.params.items()]) for t in trials]
            returns = self.launcher.launch(batch, initial_job_idx=job_idx)
            for trial, ret in zip(trials, returns):
                value = returned_value(ret)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
            job_idx += len(trials)
            left -= len(trials)
        self._write_results(study, sweep_dir)

    def _write_results(self, study: Any, sweep_dir: Path) -> None:
        done = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
        best = study.best_trial if done else None
        results = {"name": "optuna", "study_name": study.study_name, "direction": self.direction,
                   "trials": len(study.get_trials(deepcopy=False)),
                   "best_params": dict(best.params) if best else {},
                   "best_value": float(best.value) if best else None}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        log.info("study %s: best %s = %s", study.study_name, results["best_params"], results["best_value"])
