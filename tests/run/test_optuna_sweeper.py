"""The ask-and-tell Optuna sweeper (`hydra/sweeper=oyster_optuna`) in a real Hydra multirun: the search space
from the sweep grammar, failed jobs as failed trials, and a second run of the same command adding to the study."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

optuna = pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[2]

# a task whose best x is 0.3; y=bad fails the job, z=none returns no value (both: failed trials)
APP = '''
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="cfg")
def task(cfg):
    if cfg.y == "bad":
        raise RuntimeError("bad arm")
    return None if cfg.z == "none" else -(cfg.x - 0.3) ** 2 + cfg.n

if __name__ == "__main__":
    task()
'''
CFG = '''
defaults:
  - override hydra/sweeper: oyster_optuna
  - _self_
x: 0.0
y: good
z: value
n: 0
hydra:
  searchpath: [file://{conf}]
  mode: MULTIRUN
  sweep:
    dir: {out}/sweep_${{now:%H-%M-%S-%f}}
    subdir: ${{hydra.job.num}}
  sweeper:
    study_name: toy
    storage: sqlite:///{out}/study.sqlite
    n_trials: 4
    n_jobs: 2
    sampler: {{seed: 3}}
    params:
      x: interval(0.0, 1.0)
      n: range(0, 3)
'''


def _sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(tmp_path / "app.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


def test_study_runs_fails_bad_trials_and_a_rerun_adds_to_it(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "cfg.yaml").write_text(CFG.format(conf=ROOT / "conf", out=tmp_path))
    p = _sweep(tmp_path, "y=choice(good,bad)")
    assert p.returncode == 0, p.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/study.sqlite"
    study = optuna.load_study(study_name="toy", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.number for t in trials} == {0, 1, 2, 3}
    states = {t.params["y"]: set() for t in trials}
    for t in trials:
        states[t.params["y"]].add(t.state)
        assert 0.0 <= t.params["x"] <= 1.0 and t.params["n"] in (0, 1, 2)
    assert states == {"bad": {optuna.trial.TrialState.FAIL}, "good": {optuna.trial.TrialState.COMPLETE}}
    (first,) = tmp_path.glob("sweep_*")
    res = OmegaConf.load(first / "optimization_results.yaml")
    good = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert res.best_value == max(t.value for t in good) and set(res.best_params) == {"x", "n", "y"}

    study.ask()                  # a trial a killed sweep would leave running
    p = _sweep(tmp_path, "z=none")
    assert p.returncode == 0, p.stderr[-3000:]
    trials = optuna.load_study(study_name="toy", storage=storage).get_trials()
    assert len(trials) == 4 + 1 + 4 and not any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    assert trials[4].state == optuna.trial.TrialState.FAIL               # the stale one
    assert all(t.state == optuna.trial.TrialState.FAIL and "y" not in t.params for t in trials[5:])
    # the seeded sampler moved on: the resumed study does not replay the first run's suggestions
    assert {t.params["x"] for t in trials[5:]}.isdisjoint({t.params["x"] for t in trials[:4]})


def test_the_search_space_comes_from_hydra_sweep_grammar() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from oyster_exp.run.optuna_sweeper import search_space

    params = {"lr": "tag(log, interval(1e-6, 1e-4))", "beta": "interval(0.01, 0.5)", "k": "tag(int, interval(1, 8))",
              "seed": "1"}
    space, fixed = search_space(params, ["obj=choice(orpo,sft)", "seed=7", "a=b"])
    assert space["lr"] == FloatDistribution(1e-6, 1e-4, log=True)
    assert space["beta"] == FloatDistribution(0.01, 0.5)
    assert space["k"] == IntDistribution(1, 8)
    assert space["obj"] == CategoricalDistribution(["orpo", "sft"])
    assert "seed" not in space and fixed == ["seed=7", "a=b"]


def test_optuna_orpo_selects_this_sweeper() -> None:
    from hydra import compose, initialize_config_dir

    import oyster_exp.run.cli  # noqa: F401 - the structured configs and resolvers

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweep=optuna_orpo"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("oyster_optuna_sweeper.OysterOptunaSweeper")
    assert cfg.hydra.sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert set(cfg.hydra.sweeper.params) == {"objective.beta", "training.optimizer.lr"}
