"""The trainable model: load a checkpoint, wrap it in LoRA / QLoRA, and export a plain transformers directory.

Why one place: the module, the export and the tests must agree on how a model is built (dtype,
dropout off, gradient checkpointing, adapters) and on what an export is (LoRA merged, so the result
loads with a plain `AutoModelForCausalLM.from_pretrained`, plus tokenizer and a model card).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class QLoRAUnavailableError(RuntimeError):
    """QLoRA was asked for where it cannot run (no CUDA device or no bitsandbytes)."""


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (the `peft` config group); `quantization="nf4"` makes it QLoRA."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    quantization: str = "none"
    compute_dtype: str = "bfloat16"

    @classmethod
    def from_config(cls, node: Any) -> LoraSettings | None:
        """`None` for full fine-tuning (`peft.enabled=false` or no `peft` node)."""
        if node is None or not bool(node.get("enabled", False)):
            return None
        quant = node.get("quantization", "none")
        return cls(r=int(node.r), alpha=float(node.alpha), dropout=float(node.dropout),
                   target_modules=[str(m) for m in node.target_modules],
                   quantization=str(getattr(quant, "value", quant)),
                   compute_dtype=str(node.get("compute_dtype", "bfloat16")))

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    value = getattr(torch, str(name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} (float32, bfloat16, float16)")
    return value


def require_qlora_support() -> None:
    """Fail with the fix in the message; bitsandbytes' 4-bit kernels exist for CUDA only."""
    if not torch.cuda.is_available():
        raise QLoRAUnavailableError("QLoRA (peft.quantization=nf4) needs a CUDA GPU; this machine has none. "
                                    "Use peft=lora on CPU, or trainer=gpu on a GPU machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QLoRAUnavailableError("QLoRA needs the bitsandbytes package: pip install -e '.[qlora]'")


def quantization_kwargs(lora: LoraSettings, sharded: bool = False) -> dict[str, Any]:
    """`BitsAndBytesConfig` keyword arguments for QLoRA (NF4, double quantisation, matmuls in `compute_dtype`).

    `sharded`: the strategy shards parameters (FSDP, ZeRO-3). FSDP flattens each unit's parameters into
    one tensor of one dtype, and bitsandbytes packs 4-bit weights into uint8 by default, which cannot be
    flattened with the unit's bf16 norms and adapters; stored in the compute dtype instead, the packed
    weights shard with the rest (`bnb_4bit_quant_storage`, the transformers FSDP-QLoRA recipe).
    """
    compute = _dtype(lora.compute_dtype)
    kwargs: dict[str, Any] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                              "bnb_4bit_compute_dtype": compute}
    if sharded:
        kwargs["bnb_4bit_quant_storage"] = compute
    return kwargs


def enable_gradient_checkpointing(model: Any) -> None:
    """Non-reentrant checkpointing: correct with frozen inputs (LoRA) and with DDP's hooks."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # the transformers >= 5.2x name
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_lora(model: Any, lora: LoraSettings, gradient_checkpointing: bool = False) -> Any:
    """Wrap `model` in a peft `PeftModel`; only adapter weights train.

    Target modules absent from the architecture are dropped with a clear error if none is left,
    so a Llama-style default list works on any model that uses those names.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in names]
    if not targets:
        raise ValueError(f"peft.target_modules={lora.target_modules}: none is a module of this model "
                         f"(linear layers here: {sorted(n for n in names if n.endswith('proj'))})")
    if lora.quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def load_causal_lm(model_path: str | Path, dtype: str | torch.dtype = "float32", lora: LoraSettings | None = None,
                   gradient_checkpointing: bool = False, disable_dropout: bool = True,
                   sharded: bool = False) -> tuple[Any, Any]:
    """Model (in train mode) and tokenizer from a checkpoint directory; never touches a hub.

    `sharded` says the trainer's strategy shards parameters (see `quantization_kwargs`; only QLoRA
    loads differently). `disable_dropout` zeroes every `nn.Dropout` of the base model (TRL's default: the odds ratio
    compares two forward passes); the LoRA adapter's own dropout is kept, it is a LoRA knob.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": _dtype(dtype)}
    if lora is not None and lora.quantized:
        require_qlora_support()
        from transformers import BitsAndBytesConfig

        kwargs = {"dtype": _dtype(lora.compute_dtype),
                  "quantization_config": BitsAndBytesConfig(**quantization_kwargs(lora, sharded))}
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if disable_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora is not None:
        model = apply_lora(model, lora, gradient_checkpointing)
    model.train()  # from_pretrained returns eval mode and Lightning keeps submodule modes as found
    return model, tokenizer


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def merged_for_export(model: Any, base_path: str | Path | None = None) -> Any:
    """A plain transformers model with any LoRA adapter folded into the base weights.

    LoRA on a full-precision base merges in place (`merge_and_unload`; the caller's PEFT wrapper is
    spent afterwards). A QLoRA base is 4-bit, so merging there would re-quantise: instead the adapter
    is merged into a fresh full-precision copy of the base loaded from `base_path` on the CPU.
    """
    if not is_peft_model(model):
        return model
    if getattr(model.get_base_model(), "is_loaded_in_4bit", False):
        if base_path is None:
            raise ValueError("exporting a QLoRA model needs the base checkpoint path to merge into")
        from peft import set_peft_model_state_dict
        from peft.utils import get_peft_model_state_dict
        from transformers import AutoModelForCausalLM

        config = model.peft_config["default"]
        compute = model.get_base_model().dtype
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=compute)
        from peft import get_peft_model

        fresh = get_peft_model(base, config)
        adapter = {k: v.detach().to("cpu", compute) for k, v in get_peft_model_state_dict(model).items()}
        set_peft_model_state_dict(fresh, adapter)
        return fresh.merge_and_unload()
    return model.merge_and_unload()


def rebuilt_from_state(base_path: str | Path, state: dict[str, torch.Tensor], dtype: str | torch.dtype = "float32",
                       lora: LoraSettings | None = None) -> Any:
    """A plain transformers model (LoRA merged) holding the trained weights `state`, built on this process.

    For a model whose training copy is sharded (FSDP) and cannot save itself from one rank: `state` is
    the full state dict gathered from every rank, keyed like the training model's own `state_dict()`.
    Full fine-tuning loads every weight into the base checkpoint; LoRA and QLoRA load only the adapter
    weights (the base stays as it was loaded: frozen) into a full-precision copy and merge them there,
    so QLoRA never re-quantises. A key that fails to load is an error, never a silently stale weight.
    """
    from transformers import AutoModelForCausalLM

    if lora is None:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=_dtype(dtype))
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - \
            {n for n, _ in model.named_parameters()}  # tied weights: one tensor under two names
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - aliases:
            raise RuntimeError(f"gathered weights do not fit {base_path}: missing {sorted(set(missing) - aliases)[:3]}"
                               f", unexpected {sorted(unexpected)[:3]}")
        return model
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=_dtype(lora.compute_dtype if lora.quantized
                                                                        else dtype))
    fresh = apply_lora(base, replace(lora, quantization="none"))
    adapter = {k: v for k, v in state.items() if "lora_" in k}
    missing, unexpected = fresh.load_state_dict(adapter, strict=False)
    if not adapter or unexpected or any("lora_" in k for k in missing):
        raise RuntimeError(f"gathered LoRA weights do not fit the adapter: {len(adapter)} given, "
                           f"unexpected {sorted(unexpected)[:3]}, missing {[k for k in missing if 'lora_' in k][:3]}")
    return fresh.merge_and_unload()


def export_pretrained(model: Any, tokenizer: Any, out_dir: Path, card: str,
                      base_path: str | Path | None = None) -> Any:
    """Write weights (LoRA merged), tokenizer and card; returns the exported (merged) model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = merged_for_export(model, base_path)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    return plain
