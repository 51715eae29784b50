"""Numerics and scale settings of the training path: the chunked LM head under autocast, fp32 master weights,
QLoRA storage under sharding, the paper configs' checkpoints, DeepSpeed stage 3."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oyster_exp.training.losses import linear_token_logps


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny model gains nothing from threads; on the shared 2-core box threads only wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONFIDENT = 16
"""Rows of the LM-head case whose target the head predicts with p ~ 1 (gradient ~ 1 - p, nearly 0)."""


def _head_case(weight_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden rows (fp32, as a decoder under autocast hands them over), an LM head, targets and an upstream
    gradient; the first `CONFIDENT` rows point straight at their target's weight row."""
    g = torch.Generator().manual_seed(7)
    n, h, vocab = 64, 32, 500
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(vocab, h, generator=g) * 0.3
    targets = torch.randint(0, vocab, (n,), generator=g)
    weight[targets[:CONFIDENT]] += 12 * hidden[:CONFIDENT] / hidden[:CONFIDENT].norm(dim=-1, keepdim=True)
    return hidden, weight.to(weight_dtype), targets, torch.randn(n, generator=g)


def _grads(fn, hidden: torch.Tensor, weight: torch.Tensor, upstream: torch.Tensor, autocast: bool):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(h, w)
    (out * upstream).sum().backward()
    return out.detach(), h.grad, w.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_chunked_lm_head_matches_autograd_under_bf16_autocast(weight_dtype: torch.dtype) -> None:
    """The reference is autograd through the same computation under the same autocast: a bf16 matmul,
    float32 log-softmax. Tolerances: the hidden gradient is the same bf16 matmul of the same operands, so
    it must agree to 1e-3 overall and on the confident rows alone (before the fix: 9% and 70x); the
    weight gradient is summed over chunks in float32 where the reference rounds one bf16 matmul, so 1e-2
    (bf16 resolution is 4e-3)."""
    hidden, weight, targets, upstream = _head_case(weight_dtype)
    probs = torch.exp(linear_token_logps(hidden, weight.float(), targets))
    assert bool((probs[:CONFIDENT] > 0.99).all())                      # the confident rows really are

    def plain(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = (h @ w.T).float()
        return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)

    ref = _grads(plain, hidden, weight, upstream, autocast=True)
    for chunk in (7, 64):
        out, g_hidden, g_weight = _grads(lambda h, w, c=chunk: linear_token_logps(h, w, targets, c), hidden, weight,
                                         upstream, autocast=True)
        assert out.dtype == torch.float32 and g_hidden.dtype == torch.float32 and g_weight.dtype == weight_dtype
        assert torch.allclose(out, ref[0], atol=1e-5)
        assert _rel(g_hidden, ref[1]) < 1e-3
        assert _rel(g_hidden[:CONFIDENT], ref[1][:CONFIDENT]) < 1e-3
        assert _rel(g_weight, ref[2]) < 1e-2


def test_chunked_lm_head_without_autocast_is_exact_in_float32() -> None:
    hidden, weight, targets, upstream = _head_case(torch.float32)
    ref = _grads(lambda h, w: torch.log_softmax(h @ w.T, -1).gather(-1, targets[:, None]).squeeze(-1),
                 hidden, weight, upstream, autocast=False)
    out = _grads(lambda h, w: linear_token_logps(h, w, targets, 5), hidden, weight, upstream, autocast=False)
    for mine, theirs in zip(out, ref):                                 # log-probs, hidden and weight gradients
        assert _rel(mine, theirs) < 1e-5


# ---------------------------------------------------------------- master weights

def _moved_share(model_dir, dtype: str, precision: str, tmp_path) -> float:
    """Share of weight elements that 10 AdamW steps at lr 5e-6 change (tiny model, CPU, `precision`)."""
    import functools

    import lightning as L
    from transformers import AutoTokenizer

    from oyster_exp.training.data import PreferenceDataModule
    from oyster_exp.training.module import PreferenceModule
    from oyster_exp.training.tokenize import PreferenceExample

    L.seed_everything(0, verbose=False)
    examples = [PreferenceExample(id=f"p{i}", prompt=[{"role": "user", "content": f"question {i} " * 3}],
                                  chosen=f"safe helpful answer {i}", rejected="unsafe answer " * (1 + i % 2))
                for i in range(20)]
    module = PreferenceModule(str(model_dir), dtype=dtype,
                              optimizer=functools.partial(torch.optim.AdamW, lr=5e-6, weight_decay=0.0))
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    data = PreferenceDataModule(train=examples, val=[], tokenizer=AutoTokenizer.from_pretrained(model_dir),
                                max_length=64, batch_size=2, seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, max_steps=10, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 10
    moved = sum(int((p.detach() != before[k]).sum()) for k, p in module.model.named_parameters())
    return moved / sum(v.numel() for v in before.values())


def test_paper_precision_policy_keeps_fp32_master_weights_that_small_updates_move(
        compose_cfg, tiny_model_dir, tmp_path) -> None:
    """The paper configs' policy (model.dtype float32 + trainer.precision bf16-mixed: fp32 weights and Adam
    state, bf16 matmuls) on the tiny model: 10 steps at the paper's lr move nearly every weight. The same
    steps on bf16 weights move a small share (updates of 5e-6 round away against bf16's 8-bit mantissa)."""
    for experiment in ("paper_qwen3_14b_orpo", "paper_r1_distill_qwen_14b_orpo"):
        cfg = compose_cfg(f"experiment={experiment}")
        assert (cfg.model.dtype, cfg.trainer.precision) == ("float32", "bf16-mixed")
        assert float(cfg.training.optimizer.lr) == 5e-6
    paper = _moved_share(tiny_model_dir, str(cfg.model.dtype), str(cfg.trainer.precision), tmp_path / "fp32")
    bf16 = _moved_share(tiny_model_dir, "bfloat16", "bf16-mixed", tmp_path / "bf16")
    assert paper > 0.95, paper
    assert bf16 < 0.5, bf16


# ---------------------------------------------------------------- QLoRA under a sharding strategy

@pytest.mark.parametrize(("trainer", "storage"),
                         [("fsdp", torch.bfloat16), ("gpu", torch.uint8), ("ddp", torch.uint8)])
def test_qlora_stores_4bit_weights_in_the_compute_dtype_when_the_strategy_shards(compose_cfg, trainer: str,
                                                                                  storage: torch.dtype) -> None:
    """The quantisation config the train stage builds (bitsandbytes itself is not needed to build it)."""
    from transformers import BitsAndBytesConfig

    from oyster_exp.training.model_setup import LoraSettings, quantization_kwargs
    from oyster_exp.training.parallelism import sharded_state

    cfg = compose_cfg("peft=qlora", f"trainer={trainer}")
    lora = LoraSettings.from_config(cfg.peft)
    built = BitsAndBytesConfig(**quantization_kwargs(lora, sharded=sharded_state(cfg.trainer.strategy)[0]))
    assert built.load_in_4bit and built.bnb_4bit_quant_type == "nf4"
    assert built.bnb_4bit_compute_dtype == torch.bfloat16
    assert built.bnb_4bit_quant_storage == storage                     # bitsandbytes' default is uint8


def test_sharding_table_names_what_each_strategy_shards() -> None:
    from omegaconf import OmegaConf

    from oyster_exp.training.parallelism import sharded_state

    assert sharded_state(OmegaConf.create({"_target_": "oyster_exp.training.parallelism.fsdp"})) == (True,) * 3
    assert sharded_state("deepspeed_stage_2") == (False, True, True)
    assert sharded_state("ddp") == sharded_state("auto") == sharded_state(None) == (False,) * 3


# ---------------------------------------------------------------- what the paper configs ask of the trainer

@pytest.mark.parametrize("experiment", ["paper_qwen3_14b_orpo", "paper_qwen3_14b_sft",
                                        "paper_r1_distill_qwen_14b_orpo", "paper_r1_distill_qwen_14b_sft"])
def test_paper_configs_checkpoint_sharded_fsdp_state(compose_cfg, experiment: str) -> None:
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose_cfg(f"experiment={experiment}")
    assert cfg.training.checkpoint_every_n_steps > 0
    strategy = instantiate(cfg.trainer.strategy)                      # the object the Trainer gets
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "sharded"


def test_deepspeed_stage_3_is_refused_with_the_alternative(compose_cfg, tmp_path) -> None:
    from oyster_exp.training.run import TrainerConfigError, build_trainer

    cfg = compose_cfg("trainer=deepspeed", "trainer.strategy=deepspeed_stage_3")
    with pytest.raises(TrainerConfigError, match=r"deepspeed_stage_3: .*not supported.*trainer=fsdp"):
        build_trainer(cfg.trainer, accelerator="cpu", logger=False, default_root_dir=str(tmp_path))


def test_fused_gated_mlp_equals_the_plain_module_in_values_and_gradients(tiny_model_dir: Path) -> None:
    """`fused.fused_mlps` swaps each SwiGLU MLP for one autograd function that saves two activations instead
    of four: the output and every gradient (input and the three weights) match the plain module to 1e-5,
    the swap is undone on exit, and a backward after the block still works."""
    from transformers import AutoModelForCausalLM

    from oyster_exp.training import fused
    from oyster_exp.training.fused import fused_mlps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    fused._CHECKED.clear()
    with torch.no_grad(), fused_mlps(model) as count:  # a first check from a no_grad caller still passes
        assert count == len(model.model.layers)
    mlp = model.model.layers[0].mlp
    x = torch.randn(2, 5, mlp.gate_proj.in_features, requires_grad=True)

    def run(fused: bool) -> list[torch.Tensor]:
        mlp.zero_grad()
        x.grad = None
        if fused:
            with fused_mlps(model) as count:
                out = mlp(x)
            assert count == len(model.model.layers) and "forward" not in vars(mlp)
        else:
            out = mlp(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return [out.detach(), x.grad.clone()] + [getattr(mlp, f"{n}_proj").weight.grad.clone()
                                                 for n in ("gate", "up", "down")]

    plain, fused = run(False), run(True)
    for a, b in zip(fused, plain):
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max()), (a - b).abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16), fused_mlps(model) as count:
        assert count == 0                      # under autocast the plain modules run
