"""Distributed training pieces the `trainer` configs name: the FSDP strategy, its gradient clipping, the
collective export gather, and a re-launch of ranks that runs exactly the current job (also inside a sweep).

Why here: Lightning gets each of these almost right. Its FSDP precision plugin refuses norm clipping; its
strategy refuses a CPU accelerator, so FSDP could never run in CI; `save_pretrained` on a sharded model
needs every rank; and its script launcher re-executes `sys.argv`, so a `-m` sweep restarted the whole sweep
in every child rank. Each fix sits in one place, and the train stage never asks which strategy it holds.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

log = logging.getLogger(__name__)
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
"""What Lightning's launcher writes into the launching process's environment (and leaves there)."""
CHILD_EXIT_TIMEOUT_S = 600
"""How long rank 0 waits, after its own fit and export, for a child rank to finish its share and exit."""


def _classes(paths: list[str]) -> set[type]:
    """Import `module.Class` paths; the ones this transformers version lacks are skipped."""
    out: set[type] = set()
    for path in paths:
        module, _, name = str(path).rpartition(".")
        try:
            out.add(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    if not out:
        raise ValueError(f"trainer.strategy.layers: none of {list(paths)} can be imported")
    return out


class ClippingFSDPPrecision(FSDPPrecision):
    """Lightning's FSDP precision plugin, but `gradient_clip_algorithm="norm"` works.

    Lightning raises there because a sharded gradient's norm is not the local norm: each rank holds a
    slice. FSDP's own `clip_grad_norm_` on the root wrapper all-reduces the squared slice norms, so the
    clip is the global one, the same value one process would compute. The strategy hands over the root.
    """

    root: torch.nn.Module | None = None

    def clip_grad_by_norm(self, optimizer: Any, clip_val: int | float) -> None:
        if self.root is None:
            raise RuntimeError("ClippingFSDPPrecision: the FSDP root module was not set up")
        self.root.clip_grad_norm_(float(clip_val))


class ShardedStrategy(FSDPStrategy):
    """Lightning's `FSDPStrategy` with two changes, for `trainer=fsdp` on GPUs and `trainer=fsdp_cpu` in CI.

    * Norm gradient clipping (`trainer.gradient_clip_val`) through `ClippingFSDPPrecision`.
    * It is a subclass, and Lightning's "FSDP needs a GPU" check is an exact type test, so this strategy
      also runs on the CPU accelerator with gloo. That path exists so CI exercises sharding, the sharded
      checkpoints, clipping and the export gather with 2 processes; it is not meant to be fast.
    """

    @property
    def precision_plugin(self) -> FSDPPrecision:
        return FSDPStrategy.precision_plugin.fget(self)

    @precision_plugin.setter
    def precision_plugin(self, plugin: Any) -> None:
        if isinstance(plugin, FSDPPrecision) and not isinstance(plugin, ClippingFSDPPrecision):
            scaler, plugin = plugin.scaler, ClippingFSDPPrecision(plugin.precision)
            plugin.scaler = scaler  # the same scaler object (16-mixed), not a second one
        FSDPStrategy.precision_plugin.fset(self, plugin)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        wrapped = self._wrap_on_cpu(model) if self.root_device.type == "cpu" else super()._setup_model(model)
        if self._precision_plugin is None:  # the default plugin is built on each read: keep one
            self.precision_plugin = FSDPPrecision("32-true")
        self.precision_plugin.root = wrapped
        return wrapped


    @contextlib.contextmanager
    def _host_gathers(self) -> Iterator[None]:
        """On the CPU, Lightning's full-state-dict context without `offload_to_cpu` (see `gathered_state_dict`).

        Lightning builds that context in one module-level helper that its checkpoint save and load call by
        name; it is swapped for the duration of the call, on the CPU only, and restored after.
        """
        import lightning.pytorch.strategies.fsdp as pl_fsdp

        if self.root_device.type != "cpu":
            yield
            return
        original = pl_fsdp._get_full_state_dict_context

        def on_host(module: torch.nn.Module, world_size: int, rank0_only: bool = True) -> Any:
            return _full_state_dict_context(module, offload_to_cpu=False, rank0_only=rank0_only)

        pl_fsdp._get_full_state_dict_context = on_host
        try:
            yield
        finally:
            pl_fsdp._get_full_state_dict_context = original

    def lightning_module_state_dict(self) -> dict[str, Any]:
        with self._host_gathers():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        with self._host_gathers():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        with self._host_gathers():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

    def _wrap_on_cpu(self, model: torch.nn.Module) -> torch.nn.Module:
        """Lightning's wrapping step with `device_id=cpu`: it passes the device's index, which is None on
        the CPU, and torch's FSDP then looks for an accelerator and refuses to start."""
        from lightning.pytorch.strategies.fsdp import _move_torchmetrics_to_device, _setup_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel

        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                                             **self.kwargs)
        _move_torchmetrics_to_device(model, self.root_device)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def _full_state_dict_context(module: torch.nn.Module, offload_to_cpu: bool, rank0_only: bool) -> Any:
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        FullyShardedDataParallel,
        StateDictType,
    )

    return FullyShardedDataParallel.state_dict_type(
        module, StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=offload_to_cpu, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=offload_to_cpu, rank0_only=rank0_only))


def fsdp(layers: list[str], **kwargs: Any) -> ShardedStrategy:
    """`ShardedStrategy` wrapping each decoder layer class in `layers` as one FSDP unit (and checkpointing it
    when `activation_checkpointing` is true); the other keyword arguments go to the strategy as they are."""
    wrap = _classes(layers)
    if kwargs.pop("activation_checkpointing", False):
        kwargs["activation_checkpointing_policy"] = wrap
    return ShardedStrategy(auto_wrap_policy=wrap, **kwargs)


def strategy_label(strategy: Any) -> str:
    """A `trainer.strategy` value as a name: `fsdp` for a `_target_` node such as
    `oyster_exp.training.parallelism.fsdp`, the Lightning registry name (`deepspeed_stage_2`) as it is."""
    if hasattr(strategy, "get") and not isinstance(strategy, str):
        return str(strategy.get("_target_", "auto")).rsplit(".", 1)[-1]
    return str(strategy if strategy is not None else "auto")


def sharded_state(strategy: Any) -> tuple[bool, bool, bool]:
    """Which of (weights, gradients, optimizer states) a strategy shards over the processes.

    One table for the dry run's memory model and for the model loader (QLoRA under sharding needs a
    different storage dtype): FSDP and ZeRO-3 shard all three, ZeRO-2 gradients and optimizer state,
    ZeRO-1 the optimizer state, DDP and single-device runs nothing.
    """
    s = strategy_label(strategy).lower()
    if "fsdp" in s or "stage_3" in s:
        return True, True, True
    if "stage_2" in s:
        return False, True, True
    if "stage_1" in s:
        return False, False, True
    return False, False, False


def sharded_root(trainer: Any) -> torch.nn.Module | None:
    """The FSDP root wrapper of a fitted Trainer's model, or None when the strategy does not shard it."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = getattr(trainer.strategy, "model", None)
    return model if isinstance(model, FullyShardedDataParallel) else None


def gathered_state_dict(trainer: Any) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict of the LightningModule, gathered collectively: every rank must call
    this together; rank 0 gets the tensors (on the CPU), the other ranks an empty dict. None when the model
    is not sharded, so each rank already holds every weight (single process, DDP)."""
    root = sharded_root(trainer)
    if root is None:
        return None
    # offloading copies an accelerator's gathered tensors to the host; on the CPU the "offloaded" copy is
    # the gathered buffer itself, which FSDP frees on exit: the clone it then takes segfaults (torch 2.13)
    on_cpu = trainer.strategy.root_device.type == "cpu"
    with _full_state_dict_context(root, offload_to_cpu=not on_cpu, rank0_only=True):
        return root.state_dict()


def relaunch_command(local_rank: int) -> tuple[list[str], str | None]:
    """The command line of child rank `local_rank`: this very job, never the sweep it belongs to.

    Under Hydra that is the program with the job's own overrides (for a multirun arm: its resolved
    choices, without `-m`) and `hydra.run.dir` set to the job's output directory, so the child composes
    the same config and finds the same stage cache entries. Without Hydra it is `sys.argv` as it was.
    """
    import __main__

    program = ([sys.executable, "-m", __main__.__spec__.name] if getattr(__main__, "__spec__", None) is not None
               else [sys.executable, os.path.abspath(sys.argv[0])])
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return program + sys.argv[1:], None
    if not HydraConfig.initialized():
        return program + sys.argv[1:], None
    from hydra.utils import get_original_cwd

    hc = HydraConfig.get()
    flags: list[str] = []
    if hc.job.config_name:
        flags.append(f"--config-name={hc.job.config_name}")
    for source in hc.runtime.config_sources:
        if source.provider == "command-line":  # --config-dir (the main config path is the program's own)
            flags.append(f"--config-dir={source.path}")
    out_dir = str(hc.runtime.output_dir).replace("\\", "\\\\").replace('"', '\\"')
    return (program + flags + list(hc.overrides.task)
            + [f'hydra.run.dir="{out_dir}"', f"hydra.job.name=train_ddp_process_{local_rank}",
               "hydra.output_subdir=null"], get_original_cwd())


class JobLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, starting each child rank with `relaunch_command` (the current job only)."""

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        self.procs = []
        os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
        os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
        os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
        os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        for local_rank in range(1, self.num_processes):
            env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            if os.environ.get("PL_GLOBAL_SEED") is None:
                env.pop("PL_GLOBAL_SEED", None)
            command, cwd = relaunch_command(local_rank)
            self.procs.append(subprocess.Popen(command, env=env, cwd=cwd))


@contextlib.contextmanager
def launched_ranks(trainer: Any) -> Iterator[None]:
    """Around a fit: child ranks start as `JobLauncher` children, and when this process launched them, the
    process group, the children and the launch environment are cleaned up afterwards, so the next job of
    the same process (the next arm of a sweep) launches its own ranks instead of joining dead ones."""
    strategy = trainer.strategy
    launcher = getattr(strategy, "_launcher", None)
    if type(launcher) is _SubprocessScriptLauncher:
        strategy._launcher = launcher = JobLauncher(launcher.cluster_environment, launcher.num_processes,
                                                    launcher.num_nodes)
    before = {k: os.environ.get(k) for k in _LAUNCH_ENV}
    failed = True
    try:
        yield
        failed = False
    finally:
        if isinstance(launcher, JobLauncher) and launcher.procs:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for proc in launcher.procs:
                if failed:  # a child would wait in a collective this rank never joins (until gloo's timeout)
                    proc.kill()
                try:
                    proc.wait(timeout=CHILD_EXIT_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.warning("rank process %d still running %d s after the fit; killing it", proc.pid,
                                CHILD_EXIT_TIMEOUT_S)
                    proc.kill()
                    proc.wait()
            for key, value in before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
