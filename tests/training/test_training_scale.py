"""Scale knobs from config on a real Trainer and the tiny model: schedule, accumulation, clipping, precision,
tokenisation cache, LoRA / QLoRA, gradient checkpointing, merged export, trainer configs."""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from oyster_exp.config.errors import ConfigError
from oyster_exp.config.structured import validate_config
from oyster_exp.training.data import PreferenceDataModule, collate
from oyster_exp.training.model_setup import LoraSettings, QLoRAUnavailableError, load_causal_lm
from oyster_exp.training.module import PreferenceModule
from oyster_exp.training.run import TrainerConfigError, build_trainer, fit_preference_model
from oyster_exp.training.schedules import lr_multiplier
from oyster_exp.training.tokenize import PreferenceExample, tokenize_example

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ex(i: int) -> PreferenceExample:
    return PreferenceExample(id=f"p{i}", prompt=[{"role": "user", "content": "question " * (1 + i % 3) + str(i)}],
                             chosen=f"safe helpful answer {i}", rejected="unsafe answer " * (1 + i % 2))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


# ---------------------------------------------------------------- schedule, accumulation, clipping, precision

def test_lr_multiplier_warms_up_then_decays() -> None:
    lin = [lr_multiplier(s, total_steps=10, warmup_steps=2) for s in range(10)]
    assert lin[:2] == [0.5, 1.0] and lin[2] == 1.0 and lin[-1] == pytest.approx(1 / 8)
    assert all(a > b for a, b in zip(lin[2:], lin[3:]))
    cos = [lr_multiplier(s, total_steps=10, warmup_steps=0, decay="cosine", min_lr_ratio=0.1) for s in range(11)]
    assert cos[0] == 1.0 and cos[10] == pytest.approx(0.1) and cos[5] == pytest.approx(0.55)
    assert lr_multiplier(7, total_steps=10, decay="constant") == 1.0


class _OptimizerSteps(L.Callback):
    """Learning rate and post-clipping gradient norm at every optimizer step, batches seen per step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.norms: list[float] = []
        self.batches = 0
        self.lm_head_dtypes: set[torch.dtype] = set()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.batches += 1


class _RecordingAdamW(torch.optim.AdamW):
    trace: _OptimizerSteps

    def step(self, closure: Any = None) -> Any:
        """Lightning passes forward + backward + clipping as the closure: run it, then read the gradients."""
        with torch.enable_grad():
            loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.trace.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.trace.lrs.append(self.param_groups[0]["lr"])
        super().step()
        return loss


def _data(tokenizer: Any, n: int = 8, **kw: Any) -> PreferenceDataModule:
    return PreferenceDataModule([_ex(i) for i in range(n)], [], tokenizer, max_length=96, batch_size=2, **kw)


def test_scheduler_accumulation_and_clipping_come_from_config(compose_cfg, tiny_model_dir: Path, tokenizer: Any,
                                                              tmp_path: Path) -> None:
    cfg = compose_cfg("trainer.max_steps=5", "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.01",
                      "training.scheduler.warmup_steps=2", "training.optimizer.lr=0.01")
    validate_config(cfg, resolve=False)
    trace = _OptimizerSteps()
    _RecordingAdamW.trace = trace
    opt = instantiate(cfg.training.optimizer, _target_=f"{__name__}._RecordingAdamW")
    module = PreferenceModule(str(tiny_model_dir), optimizer=opt, scheduler=instantiate(cfg.training.scheduler))
    trainer = build_trainer(cfg.trainer, logger=False, callbacks=[trace], enable_checkpointing=False,
                            default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=_data(tokenizer))
    assert trainer.global_step == 5 and len(trace.lrs) == 5
    assert trace.batches == 10                                      # 2 micro-batches per optimisation step
    expected = [0.01 * lr_multiplier(s, total_steps=5, warmup_steps=2) for s in range(5)]
    assert trace.lrs == pytest.approx(expected, rel=1e-6)            # stepped per optimisation step, not per batch
    assert max(trace.norms) <= 0.01 * (1 + 1e-4)                     # clipped to gradient_clip_val


def test_precision_comes_from_the_trainer_config(compose_cfg, tiny_model_dir: Path, tokenizer: Any,
                                                 tmp_path: Path) -> None:
    cfg = compose_cfg("trainer.max_steps=1", "trainer.precision=bf16-mixed")
    module = PreferenceModule(str(tiny_model_dir))
    dtypes: set[torch.dtype] = set()
    module.model.lm_head.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=_data(tokenizer, n=2))
    assert dtypes == {torch.bfloat16}                                  # autocast matmuls
    assert next(module.model.parameters()).dtype == torch.float32     # fp32 master weights


# ---------------------------------------------------------------- tokenisation cache

def test_tokenisation_is_cached_and_reused(tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import oyster_exp.training.tokenize as data

    calls = {"n": 0}
    real = data.tokenize_example

    def counting(*a: Any, **k: Any) -> dict[str, Any]:
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(data, "tokenize_example", counting)
    first = _data(tokenizer, n=6, cache_dir=tmp_path)
    first.setup("fit")
    files = sorted(tmp_path.glob("pairs-*.arrow"))
    assert calls["n"] == 6 and len(files) == 1
    second = _data(tokenizer, n=6, cache_dir=tmp_path)
    second.setup("fit")
    assert calls["n"] == 6, "the second run must read the Arrow cache, not tokenise again"
    assert second.train_features == first.train_features
    assert first.train_features == [real(_ex(i), tokenizer, 96) for i in range(6)]
    longer = PreferenceDataModule([_ex(i) for i in range(6)], [], tokenizer, max_length=64, cache_dir=tmp_path)
    longer.setup("fit")                                               # another max_length: another file
    assert calls["n"] == 12 and len(list(tmp_path.glob("pairs-*.arrow"))) == 2


# ---------------------------------------------------------------- LoRA, QLoRA, checkpointing, export

LORA = LoraSettings(r=4, alpha=8.0, dropout=0.0)


def test_lora_trains_only_adapters_and_export_merges_them(tiny_model_dir: Path, tokenizer: Any,
                                                          tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    module = PreferenceModule(str(tiny_model_dir), lora=LORA, gradient_checkpointing=True,
                              optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    batch = collate([tokenize_example(_ex(i), tokenizer, 96) for i in range(3)], tokenizer.pad_token_id)
    trainer.fit(module, datamodule=_data(tokenizer))
    assert all(torch.equal(p, frozen_before[n]) for n, p in module.model.named_parameters() if n in frozen_before)
    module.model.eval()
    with torch.no_grad():
        peft_logits = module.model(input_ids=batch["chosen_input_ids"],
                                   attention_mask=batch["chosen_attention_mask"]).logits
    module.export(tmp_path / "export", card_config={"peft": {"r": 4}}, metrics={"train/loss": 1.0})
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert "adapter_config.json" not in files and {"model.safetensors", "tokenizer.json", "README.md"} <= files
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        merged_logits = plain(input_ids=batch["chosen_input_ids"],
                              attention_mask=batch["chosen_attention_mask"]).logits
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        base_logits = base(input_ids=batch["chosen_input_ids"], attention_mask=batch["chosen_attention_mask"]).logits
    assert (merged_logits - peft_logits).abs().max() <= 1e-5
    assert (base_logits - peft_logits).abs().max() > 1e-3             # the adapters did change the model
    assert "LoRA r=4 merged" in (tmp_path / "export" / "README.md").read_text()


def test_lora_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_model_dir: Path, tokenizer: Any) -> None:
    batch = collate([tokenize_example(_ex(i), tokenizer, 96) for i in range(2)], tokenizer.pad_token_id)
    plain = PreferenceModule(str(tiny_model_dir), lora=LORA)
    ckpt = PreferenceModule(str(tiny_model_dir), lora=LORA, gradient_checkpointing=True)
    ckpt.model.load_state_dict(plain.model.state_dict())
    losses = []
    for m in (plain, ckpt):
        loss = m.compute(batch)[0]
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (n, a), (_, b) in zip(plain.model.named_parameters(), ckpt.model.named_parameters()):
        if a.requires_grad:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), n


def test_lora_targets_that_the_model_lacks_are_a_clear_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="peft.target_modules"):
        load_causal_lm(tiny_model_dir, lora=LoraSettings(target_modules=["query_key_value"]))


def test_peft_groups_compose_and_qlora_needs_a_gpu(compose_cfg) -> None:
    lora = compose_cfg("peft=lora", "peft.r=8")
    validate_config(lora, resolve=False)
    settings = LoraSettings.from_config(lora.peft)
    assert settings is not None and settings.r == 8 and not settings.quantized
    assert LoraSettings.from_config(compose_cfg().peft) is None        # peft=none: full fine-tuning
    qlora = compose_cfg("peft=qlora", "trainer=gpu")
    validate_config(qlora, resolve=False)
    assert qlora.peft.quantization.value == "nf4" and qlora.peft.r == 16
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg("peft=qlora"), resolve=False)       # trainer=cpu
    assert e.value.key == "peft.quantization" and "GPU" in str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_qlora_on_cpu_fails_with_the_fix_in_the_message(tiny_model_dir: Path) -> None:
    with pytest.raises(QLoRAUnavailableError, match="CUDA GPU"):
        load_causal_lm(tiny_model_dir, lora=LoraSettings(quantization="nf4"))


@pytest.mark.gpu
@gpu
def test_qlora_trains_and_exports_a_merged_model_on_gpu(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    module = PreferenceModule(str(tiny_model_dir), lora=LoraSettings(r=4, alpha=8.0, quantization="nf4"),
                              optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    metrics = fit_preference_model(module, _data(tokenizer), trainer, tmp_path / "export")
    assert math.isfinite(metrics["train/loss"])
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert not any("lora" in n for n, _ in plain.named_parameters())


# ---------------------------------------------------------------- trainer configs

@pytest.mark.parametrize("option", ["cpu", "ddp_cpu"])
def test_cpu_trainer_configs_build(compose_cfg, option: str, tmp_path: Path) -> None:
    cfg = compose_cfg(f"trainer={option}", "trainer.num_nodes=1")
    validate_config(cfg, resolve=False)
    trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    assert trainer.num_nodes == 1 and trainer.num_devices == (2 if option == "ddp_cpu" else 1)
    assert type(trainer.strategy).__name__ == ("DDPStrategy" if option == "ddp_cpu" else "SingleDeviceStrategy")
    if option == "ddp_cpu":  # re-launched ranks like trainer=ddp (tests/training/test_parallelism.py)
        assert trainer.strategy._get_process_group_backend() == "gloo"


@pytest.mark.parametrize("option", ["gpu", "ddp", "fsdp", "deepspeed"])
def test_gpu_trainer_configs_compose_with_num_nodes(compose_cfg, option: str) -> None:
    cfg = compose_cfg(f"trainer={option}", "trainer.num_nodes=2")
    validate_config(cfg, resolve=False)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.num_nodes == 2
    assert cfg.trainer.use_distributed_sampler is False


def test_fsdp_strategy_is_instantiated_from_its_config(compose_cfg, tmp_path: Path) -> None:
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

    cfg = compose_cfg("trainer=fsdp", "trainer.num_nodes=2", "trainer.strategy.activation_checkpointing=true")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert Qwen2DecoderLayer in strategy.kwargs["auto_wrap_policy"]._module_classes
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"
    if not torch.cuda.is_available():  # trainer=fsdp as written wants GPUs: one clear line
        with pytest.raises(TrainerConfigError, match="no CUDA GPU"):
            build_trainer(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    # the same strategy on the CPU accelerator is trainer=fsdp_cpu (parallelism.ShardedStrategy passes
    # Lightning's GPU-only check, which tests the exact FSDPStrategy type)
    trainer = build_trainer(cfg.trainer, accelerator="cpu", devices=2, logger=False, default_root_dir=str(tmp_path))
    assert trainer.strategy._get_process_group_backend() == "gloo"


def test_deepspeed_config_names_the_missing_package(compose_cfg, tmp_path: Path) -> None:
    import importlib.util

    cfg = compose_cfg("trainer=deepspeed", "trainer.num_nodes=2")
    assert cfg.trainer.strategy == "deepspeed_stage_2"
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed; its path is the gpu test")
    with pytest.raises(TrainerConfigError, match="deepspeed package"):
        build_trainer(cfg.trainer, accelerator="cpu", logger=False, default_root_dir=str(tmp_path))


def test_gpu_config_on_cpu_names_the_missing_gpu(compose_cfg, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TrainerConfigError, match="no CUDA GPU"):
        build_trainer(compose_cfg("trainer=gpu").trainer, logger=False, default_root_dir=str(tmp_path))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("option", ["gpu", "fsdp", "deepspeed"])
def test_gpu_trainer_configs_train_the_tiny_model(compose_cfg, option: str, tiny_model_dir: Path, tokenizer: Any,
                                                  tmp_path: Path) -> None:
    if option == "deepspeed":
        pytest.importorskip("deepspeed")
    cfg = compose_cfg(f"trainer={option}", "trainer.max_steps=2", "trainer.devices=1")
    module = PreferenceModule(str(tiny_model_dir), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    metrics = fit_preference_model(module, _data(tokenizer), trainer, tmp_path / "export")
    assert trainer.global_step == 2 and math.isfinite(metrics["train/loss"])
    assert (tmp_path / "export" / "model.safetensors").exists()


# ---------------------------------------------------------------- W&B: stripped config, sample table

def test_offline_wandb_run_gets_stripped_config_and_a_sample_table(
        compose_cfg, tiny_model_dir: Path, tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import time

    from oyster_exp.run.cli import build_loggers, finish_loggers
    from oyster_exp.training.callbacks import SampleGenerationTable

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    key = "sk-" + "Zq7" * 10
    cfg = compose_cfg("llm=openai", f"llm.base_url=http://user:{key}@127.0.0.1:9/v1", "trainer.max_steps=4",
                      f"logger.wandb.save_dir={tmp_path}", "run_name=table-test", "training.sample_generations=2")
    loggers = build_loggers(cfg)
    val = [_ex(10), _ex(11), _ex(12)]
    table = SampleGenerationTable(val, int(cfg.training.sample_generations), max_new_tokens=6)
    module = PreferenceModule(str(tiny_model_dir), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    data = PreferenceDataModule([_ex(i) for i in range(4)], val, tokenizer, max_length=96, batch_size=2)
    trainer = build_trainer(cfg.trainer, logger=loggers, callbacks=[table], enable_checkpointing=False,
                            default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    sent = loggers[0].experiment.config.as_dict()                       # what the W&B run holds
    finish_loggers(loggers, ok=True)
    assert table.logged == 2                                            # one table per validation (2 epochs)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    tables = sorted((run / "files" / "media" / "table" / "val").glob("samples_*.table.json"))
    assert len(tables) == 2
    content = json.loads(tables[-1].read_text())
    assert content["columns"] == ["step", "id", "prompt", "chosen", "output"]
    assert [row[1] for row in content["data"]] == ["p10", "p11"]
    assert content["data"][0][3] == val[0].chosen and "question" in content["data"][0][2]
    assert all(isinstance(row[4], str) for row in content["data"])
    assert sent["objective"]["beta"] == 0.1 and sent["run_name"] == "table-test"   # the resolved config
    assert sent["llm"]["base_url"] == "http://user:***@127.0.0.1:9/v1"               # secret redacted
    (record,) = run.glob("run-*.wandb")
    deadline = time.time() + 60                                         # W&B's writer process flushes on its own
    while b"user:***@127.0.0.1" not in record.read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    assert b"user:***@127.0.0.1" in record.read_bytes()                # and that is what the run file holds
    leaks = [str(f) for f in run.rglob("*") if f.is_file() and key.encode() in f.read_bytes()]
    assert leaks == []
