"""Sweeps through the real CLI on the tiny model: cache reuse across arms, every study file, failures and
reruns, launcher and W&B config.

All runs share one outputs directory (module scope), so the stage cache and the LLM call cache built by the
orpo_beta sweep serve the other files' data-engine stages, as they would for a user running them in turn.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
# the benchmark data beside the checkout (main) or beside the worktree folder (/work/wt/NAME)
SHARED_DATA = Path(os.environ.get("OYSTER_EXP_DATA") or next(
    (p / "shared" / "data" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared" / "data").exists()),
    ROOT.parent / "shared" / "data"))
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
TINY = ["debug=fast", "model=tiny_random", "print_config=false",
        *(f"llm.roles.{r}.temperature=1.0" for r in ("actor", "user_judge", "safety_judge", "editor"))]
# per study: command-line values that replace the file's arm list (one cheap arm each), and what that arm
# must have in its resolved config to show the study's own knob reached the job
CAPS: dict[str, tuple[list[str], dict[str, object]]] = {
    "ablation_lingo_bp": (["lingo_bp=off"], {"lingo_bp.name": "off"}),
    "ablation_iterations": (["lingo_bp.iterations=[]"], {"lingo_bp.iterations": [], "lingo_bp.name": "paper"}),
    "ablation_risk_dims": (["risk=category_only"], {"risk.name": "category_only"}),
    "ablation_stackelberg": (["+sweep/arms/stackelberg=k2"], {
        "stackelberg._target_": "oyster_exp.csa.stackelberg.StackelbergLeader", "stackelberg.candidates": 2}),
    "ablation_pairs": (["pairs=best_vs_worst"], {
        "pairs._target_": "oyster_exp.csa.pair_policies.best_vs_worst.BestVsWorst"}),
    "sft_vs_orpo": (["objective=sft"], {"objective.name": "sft"}),
    "base_models": (["model=tiny_random"], {"model.name": "tiny_random"}),
    "optuna_orpo": (["hydra.sweeper.n_trials=1"], {"sweep.name": "optuna_orpo"}),
}


# Every sweep below goes through the real `oyster-exp` entry point (oyster_exp.run.cli.main, argv as on a shell),
# one after the other in ONE interpreter: torch/lightning imports (20 s+ on a loaded 2-core box) are paid once
# instead of once per sweep. The failure/rerun pair sets and clears the fault variable between two calls.
DRIVER = r"""
import json, os, sys, time
from pathlib import Path
runs, out, result_file = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
from oyster_exp.run.cli import main
results = {}
for run in runs:
    os.environ.pop("OYSTER_EXP_TEST_FAIL", None)
    os.environ.update(run.get("env", {}))
    before = set((out / "multirun").glob("*/*"))
    time.sleep(max(0.0, 1.05 - (time.time() % 1)))          # a new second: sweep dirs are named by time
    sys.argv = ["oyster-exp", "-m", *run["argv"]]
    t0 = time.time()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    new = sorted(set((out / "multirun").glob("*/*")) - before)
    results[run["id"]] = {"rc": code, "dirs": [str(d) for d in new], "seconds": round(time.time() - t0, 1)}
    Path(result_file).write_text(json.dumps(results))
"""
FAIL_CMD = ["+sweep=orpo_beta", *TINY, "objective.beta=0.3,0.4,0.5"]
RUNS = [{"id": "orpo_beta", "argv": ["+sweep=orpo_beta", *TINY]},
        *({"id": name, "argv": [f"+sweep={name}", *TINY, *cap]} for name, (cap, _) in CAPS.items()),
        {"id": "fail", "argv": FAIL_CMD, "env": {"OYSTER_EXP_TEST_FAIL": "train:objective.beta=0.4"}},
        {"id": "rerun", "argv": FAIL_CMD}]


def _env(out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OYSTER_EXP_TEST_FAIL"}
    return {**env, "OYSTER_EXP_OUTPUTS": str(out), "OYSTER_EXP_DATA": str(SHARED_DATA), "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1"}


def _manifests(sweep: Path) -> list[dict]:
    arms = sorted((d for d in sweep.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    return [json.loads((d / "manifest.json").read_text()) for d in arms]


def _ledger(sweep: Path) -> list[dict]:
    return sorted((json.loads(x) for x in (sweep / "ledger.jsonl").read_text().splitlines()), key=lambda e: e["job"])


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, Path]]:
    """All sweeps of this module, in order, sharing one outputs dir (the stage cache carries across)."""
    out = tmp_path_factory.mktemp("sweeps") / "outputs"
    (out / "multirun").mkdir(parents=True)
    result_file = out.parent / "results.json"
    p = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(RUNS), str(out), str(result_file)],
                       capture_output=True, text=True, env=_env(out), cwd=out.parent, timeout=1500)
    assert result_file.exists(), p.stderr[-4000:]
    results = json.loads(result_file.read_text())
    assert set(results) == {r["id"] for r in RUNS}, p.stderr[-4000:]
    for rid, r in results.items():
        assert len(r["dirs"]) == 1, (rid, r)
    return {rid: (r["rc"], Path(r["dirs"][0])) for rid, r in results.items()}


@pytest.fixture(scope="module")
def orpo_beta(sweeps: dict[str, tuple[int, Path]]) -> Path:
    rc, sweep = sweeps["orpo_beta"]
    assert rc == 0, [e.get("reason") for e in _ledger(sweep)]
    return sweep


def test_orpo_beta_runs_the_data_engine_once(orpo_beta: Path) -> None:
    manifests = _manifests(orpo_beta)
    assert len(manifests) == 3 and all(m["status"] == "completed" for m in manifests)
    calls = [m["counters"]["llm_calls"] for m in manifests]
    assert calls[0] > 0 and calls[1:] == [0, 0], calls
    for m in manifests[1:]:
        cache = m["counters"]["stage_cache"]
        assert all(cache[s] == "hit" for s in ("queries", "generate", "assess", "extract", "optimize", "pairs"))
        assert cache["train"] == "miss"                       # each arm trains its own model ...
        assert m["counters"]["eval_llm_calls"] > 0            # ... and evaluating it is new (judge) work
    betas = [json.loads((orpo_beta / str(i) / "artifacts" / "train.jsonl").read_text().splitlines()[0])
             for i in range(3)]
    assert len({b["metrics"].get("train/loss") for b in betas}) == 3   # three different trainings


def test_orpo_beta_leaves_summary_and_plots(orpo_beta: Path) -> None:
    md = (orpo_beta / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 3 and all("completed" in r for r in rows)
    assert "`objective.beta=0.05`" in rows[0] and "`objective.beta=0.2`" in rows[2]   # labels: what the arm changed
    import csv

    tidy = list(csv.DictReader((orpo_beta / "summary.csv").open()))
    assert {r["objective.beta"] for r in tidy} == {"0.05", "0.1", "0.2"}
    llm = {r["arm"]: float(r["value"]) for r in tidy if r["metric"] == "llm_calls"}
    assert llm["0"] > 0 and llm["1"] == llm["2"] == 0
    for png in ("construction_curves.png", "ablation_constructive.png", "training_curves.png",
                "constructive_vs_objective.beta.png"):
        assert (orpo_beta / "plots" / png).stat().st_size > 2000, png
    ledger = _ledger(orpo_beta)
    assert [e["status"] for e in ledger] == ["completed"] * 3
    assert all(isinstance(e["objective"], float) for e in ledger)


def test_every_sweep_file_has_a_cap_and_its_command() -> None:
    assert set(SWEEPS) - {"orpo_beta"} == set(CAPS), "add a one-arm cap for each new sweep file"
    for name in SWEEPS:
        text = (ROOT / "sweeps" / f"{name}.yaml").read_text()
        assert f"# oyster-exp -m +sweep={name}" in text.splitlines()[1], name
        assert "sweeper:" in text and "params:" in text, name


def _arm_overrides(params: dict[str, str]) -> list[list[str]]:
    """The cartesian product of a sweep file's params, parsed by Hydra's own override grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    lists = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return [list(combo) for combo in itertools.product(*lists)]


@pytest.mark.parametrize("name", [s for s in SWEEPS if s != "optuna_orpo"])
def test_every_arm_of_every_sweep_composes_and_validates(name: str, compose_cfg) -> None:
    """All arms with the file's full lists (the 14B models and Stackelberg presets included), no job run."""
    from oyster_exp.config.structured import validate_config

    cfg = compose_cfg(f"+sweep={name}")
    assert cfg.sweep.name == name
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        hcfg = compose(config_name="config", overrides=[f"+sweep={name}"], return_hydra_config=True)
        params = OmegaConf.to_container(hcfg.hydra.sweeper.params)
        arms = _arm_overrides(params)
        assert len(arms) >= 2, (name, arms)
        for arm in arms:
            validate_config(compose(config_name="config", overrides=[f"+sweep={name}", *arm]), resolve=False)


@pytest.mark.parametrize("name", sorted(CAPS))
def test_every_sweep_file_runs_on_the_tiny_model(name: str, sweeps: dict[str, tuple[int, Path]]) -> None:
    rc, sweep = sweeps[name]
    _, expect = CAPS[name]
    ledger = _ledger(sweep)
    assert rc == 0, [e.get("reason") for e in ledger]
    assert len(ledger) == 1 and ledger[0]["status"] == "completed", ledger
    cfg = OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml")
    for key, value in expect.items():
        got = OmegaConf.select(cfg, key)
        assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value, (key, got)
    assert (sweep / "summary.md").exists() and (sweep / "summary.csv").exists()
    if name == "optuna_orpo":
        res = OmegaConf.load(sweep / "optimization_results.yaml")
        assert set(res.best_params) == {"objective.beta", "training.optimizer.lr"}
        assert res.best_value == ledger[0]["objective"]
        assert (sweep.parent.parent.parent / "cache" / "optuna.sqlite").exists()


def test_failed_arm_does_not_stop_the_sweep_and_the_rerun_redoes_only_it(sweeps: dict[str, tuple[int, Path]]) -> None:
    rc, first = sweeps["fail"]
    assert rc == 1
    ledger = _ledger(first)
    assert [e["status"] for e in ledger] == ["completed", "failed", "completed"]
    assert "InjectedFault" in ledger[1]["reason"]
    failed = _manifests(first)[1]
    assert failed["status"].startswith("failed") and "InjectedFault" in failed["reason"]
    assert "## Failed arms" in (first / "summary.md").read_text()

    rc, second = sweeps["rerun"]                         # the same command, the fault gone
    ledger = _ledger(second)
    assert rc == 0, ledger
    assert [e["status"] for e in ledger] == ["skipped", "completed", "skipped"]
    manifests = _manifests(second)
    assert manifests[0]["skipped_from"] == str(first / "0") and manifests[2]["skipped_from"] == str(first / "2")
    assert manifests[1]["counters"]["llm_calls"] == 0          # the data engine still comes from the cache
    assert manifests[1]["counters"]["stage_cache"]["train"] == "miss"
    # the skipped arms' results are in the new sweep's report too
    rows = [x for x in (second / "summary.md").read_text().splitlines() if x.startswith("| ") and x[2].isdigit()]
    assert len(rows) == 3 and "skipped" in rows[0] and "completed" in rows[1]
    assert (second / "0" / "results.json").read_text() == (first / "0" / "results.json").read_text()


def test_slurm_launcher_takes_gpus_from_the_trainer(compose_cfg) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "trainer=fsdp", "trainer.devices=8",
                                                       "trainer.num_nodes=2"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
        assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (8, 8, 2)
        cpu = compose(config_name="config", overrides=["hydra/launcher=slurm", "trainer=cpu"],
                      return_hydra_config=True)
        assert cpu.hydra.launcher.gpus_per_node == 1
        auto = compose(config_name="config", overrides=["hydra/launcher=slurm", "trainer=fsdp"],
                       return_hydra_config=True)
        with pytest.raises(Exception, match="needs a number of GPUs per node"):
            _ = auto.hydra.launcher.gpus_per_node
    try:   # with the `slurm` extra installed, the file must also match the plugin's own schema
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        return
    data = OmegaConf.to_container(launcher, resolve=False)
    data.update(gpus_per_node=8, tasks_per_node=8, nodes=2)
    OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), data)


def test_joblib_launcher_and_wandb_group_and_job_type_per_sweep_and_name_per_arm(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    import oyster_exp.run.cli  # noqa: F401 - resolvers
    from oyster_exp.reporting.sweep_ledger import COMMAND_OVERRIDES
    from oyster_exp.run.sweep_arm import parallel_launcher

    sweep_dir = tmp_path / "multirun" / "2026-01-01" / "10-00-00_orpo_beta"
    sweep_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["+sweep=orpo_beta", "debug=fast"]), sweep_dir / COMMAND_OVERRIDES)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+sweep=orpo_beta", "debug=fast", "objective.beta=0.1",
                                                       "hydra/launcher=joblib"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.mode = RunMode.MULTIRUN
    cfg.hydra.sweep.dir = str(sweep_dir)
    cfg.hydra.runtime.output_dir = str(sweep_dir / "1")
    cfg.hydra.job.num = 1
    try:
        HydraConfig.instance().set_config(cfg)
        assert cfg.logger.wandb.group == "2026-01-01_10-00-00_orpo_beta"
        assert cfg.logger.wandb.job_type == "orpo_beta"                 # the study
        assert cfg.logger.wandb.name == "orpo_beta: objective.beta=0.1"  # the arm, readable
        assert parallel_launcher()
    finally:
        HydraConfig.instance().cfg = None
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        single = compose(config_name="config", return_hydra_config=True)
    HydraConfig.instance().set_config(single)
    try:
        assert single.logger.wandb.group is None and single.logger.wandb.job_type == "pipeline"
        assert single.logger.wandb.name == "csa"
    finally:
        HydraConfig.instance().cfg = None
