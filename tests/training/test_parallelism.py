"""The distributed pieces in one process: the FSDP strategy built from `trainer=fsdp_cpu`, the checkpointing
guard of the shared-prefix path under FSDP's wrapper, the rebuild of an export from gathered weights.

The two-process runs are in test_fsdp_cpu.py (slow); these are the fast checks of the same code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from oyster_exp.config.structured import validate_config
from oyster_exp.training.data import collate
from oyster_exp.training.forward import checkpointed
from oyster_exp.training.model_setup import LoraSettings, load_causal_lm, rebuilt_from_state
from oyster_exp.training.module import PreferenceModule
from oyster_exp.training.parallelism import ClippingFSDPPrecision, JobLauncher, ShardedStrategy, launched_ranks
from oyster_exp.training.run import build_trainer
from oyster_exp.training.tokenize import PreferenceExample, tokenize_example


def _ex(i: int) -> PreferenceExample:
    return PreferenceExample(id=f"p{i}", prompt=[{"role": "user", "content": "question " * (1 + i % 3) + str(i)}],
                             chosen=f"safe helpful answer {i}", rejected="unsafe answer " * (1 + i % 2))


@pytest.mark.parametrize("option", ["fsdp_cpu", "ddp_cpu"])
def test_cpu_parallel_configs_build_the_gpu_launch_path(compose_cfg, option: str, tmp_path: Path) -> None:
    cfg = compose_cfg(f"trainer={option}")
    validate_config(cfg, resolve=False)
    trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    assert trainer.num_devices == 2 and trainer.strategy._get_process_group_backend() == "gloo"
    # ranks start by re-launching the command, as on GPUs, and then as the current job only
    assert type(trainer.strategy.launcher) is _SubprocessScriptLauncher
    with launched_ranks(trainer):
        assert type(trainer.strategy.launcher) is JobLauncher
    if option == "fsdp_cpu":
        assert isinstance(trainer.strategy, ShardedStrategy)
        assert isinstance(trainer.strategy.precision_plugin, ClippingFSDPPrecision)
        assert cfg.trainer.gradient_clip_val == 1.0          # inherited from cpu.yaml, and it must work
    from oyster_exp.training.callbacks import SampleGenerationTable

    # one rank alone cannot generate from a sharded model: the W&B sample table must skip, not hang
    assert SampleGenerationTable([], 1)._sharded(trainer) == (option == "fsdp_cpu")


def test_clipping_plugin_without_its_root_says_so() -> None:
    with pytest.raises(RuntimeError, match="root module"):
        ClippingFSDPPrecision("32-true").clip_grad_by_norm(None, 1.0)


def test_guard_sees_fsdp_checkpoint_wrappers_and_the_loss_is_unchanged(tiny_model_dir: Path) -> None:
    """FSDP's activation checkpointing wraps each layer and sets no `gradient_checkpointing` flag; the
    shared-prefix path must see it (a replayed layer would write its keys into the cache twice)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    plain = PreferenceModule(str(tiny_model_dir))
    wrapped = PreferenceModule(str(tiny_model_dir))
    layer = type(wrapped.model.get_decoder().layers[0])
    assert not checkpointed(wrapped.model.get_decoder())
    apply_activation_checkpointing(wrapped.model, check_fn=lambda m: isinstance(m, layer))
    assert checkpointed(wrapped.model.get_decoder())
    batch = collate([tokenize_example(_ex(i), plain.tokenizer, 128) for i in range(2)], plain.tokenizer.pad_token_id)
    assert plain.forward_layout == "auto" and plain.share_prompt_forward  # the unpadded, shared-prefix path
    a, b = plain.compute(batch)[0], wrapped.compute(batch)[0]
    b.backward()
    assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-5)


def _perturbed(model: Any, scale: float = 0.01) -> dict[str, torch.Tensor]:
    """The model's state dict after moving every parameter (in place, so tied weights stay tied)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_rebuilt_full_model_holds_the_gathered_weights_and_refuses_a_misfit(tiny_model_dir: Path) -> None:
    model, _ = load_causal_lm(tiny_model_dir)
    state = _perturbed(model)
    rebuilt = rebuilt_from_state(tiny_model_dir, state)
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, state[k]), k
    broken = {k: v for k, v in state.items() if "layers.0.mlp" not in k}
    with pytest.raises(RuntimeError, match="missing"):
        rebuilt_from_state(tiny_model_dir, broken)


def test_rebuilt_lora_model_is_the_merge_of_the_gathered_adapter(tiny_model_dir: Path) -> None:
    lora = LoraSettings(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"])
    model, _ = load_causal_lm(tiny_model_dir, lora=lora)
    state = {k: (v + 0.05 if "lora_" in k else v) for k, v in model.state_dict().items()}  # a trained adapter
    model.load_state_dict(state)
    expected = {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}
    rebuilt = rebuilt_from_state(tiny_model_dir, state, lora=lora).state_dict()
    assert sorted(rebuilt) == sorted(expected)
    assert max(float((rebuilt[k] - expected[k]).abs().max()) for k in expected) <= 1e-6
    with pytest.raises(RuntimeError, match="LoRA"):
        rebuilt_from_state(tiny_model_dir, {k: v for k, v in state.items() if "lora_" not in k}, lora=lora)


def test_a_sweep_arm_relaunches_its_ranks_as_that_arm_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning re-ran `sys.argv` (with `-m` and the sweep's value lists) in each child rank; the child must
    compose exactly this arm, in this arm's directory."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    import oyster_exp.run.cli  # noqa: F401 - registers the schema and resolvers
    from oyster_exp.training.parallelism import relaunch_command

    arm = ["trainer=ddp_cpu", "objective.beta=0.2"]
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=arm, return_hydra_config=True)
    arm_dir = tmp_path / "sweep" / "1"
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(arm_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
    monkeypatch.setattr("sys.argv", ["oyster-exp", "-m", "trainer=ddp_cpu", "objective.beta=0.1,0.2"])
    HydraConfig.instance().set_config(cfg)
    try:
        command, cwd = relaunch_command(1)
    finally:
        HydraConfig.instance().cfg = None
    tail = command[command.index("--config-name=config") + 1:]
    assert tail == [*arm, f'hydra.run.dir="{arm_dir}"', "hydra.job.name=train_ddp_process_1",
                    "hydra.output_subdir=null"]
    assert "-m" not in command[3:] and cwd == str(tmp_path)
