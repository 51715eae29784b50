"""Config validation: bad overrides fail fast with one line and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oyster_exp.config.errors import ConfigError
from oyster_exp.config.structured import validate_config

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "oyster_exp.run.cli"]


@pytest.mark.parametrize("override, key", [
    ("objective.beta=-1", "objective.beta"),
    ("lingo_bp.iterations=[sideways]", "lingo_bp.iterations"),
    ("model=nonexistent", "model"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
])
def test_bad_override_fails_in_one_line_with_exit_2(override: str, key: str, tmp_path: Path) -> None:
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(tmp_path / "out")}
    t0 = time.time()
    p = subprocess.run([*CLI, override], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert key in lines[0]
    assert "Traceback" not in p.stderr + p.stdout
    assert time.time() - t0 < 60
    assert not (tmp_path / "out").exists(), "nothing may be written for a rejected config"


def test_sweep_values_are_validated_too(tmp_path: Path) -> None:
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(tmp_path / "out")}
    p = subprocess.run([*CLI, "-m", "objective.beta=0.1,-3"], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert p.returncode == 2
    assert "objective.beta" in p.stderr and "-3" in p.stderr


def test_defaults_compose_and_validate(compose_cfg) -> None:
    cfg = compose_cfg()
    validate_config(cfg, resolve=False)
    assert cfg.model.name == "smollm2_135m"
    assert [m.value for m in cfg.lingo_bp.iterations] == ["both"]
    assert cfg.stage == "all"


def test_paper_schedule_is_both_three_times(compose_cfg) -> None:
    cfg = compose_cfg("lingo_bp=paper")
    assert [m.value for m in cfg.lingo_bp.iterations] == ["both", "both", "both"]


@pytest.mark.parametrize("override, key", [
    ("stage=nonsense", "stage"),
    ("llm.roles.actor.temperature=-0.5", "llm.roles.actor.temperature"),
    ("data.heldout_fraction=0.95", "data.heldout_fraction"),
    ("eval.strata_sword.levels=[4]", "eval.strata_sword.levels"),
    # component groups: the ranges come from the component's own dataclass (found from the node's type)
    ("pairs.min_margin=-0.1", "pairs.min_margin"),
    ("lingo_bp.similarity.replace_threshold=1.5", "lingo_bp.similarity.replace_threshold"),
    ("lingo_bp.early_stop.user.satisfaction=-2", "lingo_bp.early_stop.user.satisfaction"),
    ("risk.follower.likelihood_weight=-1", "risk.follower.likelihood_weight"),
    ("risk.score_scale.high=1.5", "risk.score_scale.high"),
])
def test_range_and_cross_field_checks_name_the_key(compose_cfg, override: str, key: str) -> None:
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, resolve=False)
    assert e.value.key == key


@pytest.mark.parametrize("overrides, key", [
    (["model=tiny_random", "model.tiny_hidden=4"], "model.tiny_hidden"),   # a component's own range
    (["data=file", "data.path=/q.jsonl", "data.limit=0"], "data.limit"),
    (["objective=orpo", "objective.beta=-0.5"], "objective.beta"),
    (["model=local_path"], "model.path"),                                   # a required knob left unset
    (["data=file"], "data.path"),
])
def test_component_ranges_come_from_the_chosen_options_schema(compose_cfg, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg(*overrides), resolve=False)
    assert e.value.key == key


def test_unknown_key_is_rejected_by_the_schema(compose_cfg) -> None:
    with pytest.raises(Exception, match="itrations"):
        compose_cfg("lingo_bp.itrations=3")


def test_every_group_option_composes(compose_cfg) -> None:
    conf = ROOT / "conf"
    for group in ("model", "llm", "data", "risk", "stackelberg", "lingo_bp", "pairs", "objective", "trainer",
                  "logger", "eval", "experiment", "debug"):
        for f in sorted((conf / group).glob("*.yaml")):
            extra = ["data.path=/tmp/q.jsonl"] if group == "data" and f.stem in ("file", "dataset", "pairs") else []
            extra += ["model.path=/tmp/m"] if (group, f.stem) == ("model", "local_path") else []
            cfg = compose_cfg(f"{group}={f.stem}", *extra)
            validate_config(cfg, resolve=False)


GROUP_OPTIONS = {
    "stackelberg": ["off", "on"], "risk": ["full", "category_only", "no_follower_types"],
    "lingo_bp": ["off", "one_step", "paper", "user_only", "developer_only", "safety_then_satisfaction"],
    "pairs": ["best_vs_initial", "best_vs_worst", "all_improving", "refusal_as_rejected"],
    "trainer": ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "fsdp_cpu", "deepspeed"],
    "eval": ["quick", "full", "paper"], "llm": ["local", "openai", "dashscope_qwq"],
}


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes_and_validates(compose_cfg, group: str, option: str) -> None:
    from oyster_exp.config.structured import validate_config

    cfg = compose_cfg(f"{group}={option}")
    validate_config(cfg, resolve=False)
    if group == "pairs":   # a component: the policy class says its display name
        from hydra.utils import instantiate

        assert instantiate(cfg.pairs).name == option
    elif group == "stackelberg":
        rule = {"off": "SingleCandidate", "on": "StackelbergLeader"}[option]
        assert cfg.stackelberg._target_ == f"oyster_exp.csa.stackelberg.{rule}"
    elif group != "trainer":
        assert cfg[group].name == option
