"""Model sources: the tiny builder is deterministic; bad local paths fail with the key named."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from oyster_exp.models.resolve import ModelNotFoundError, resolve_model_dir
from oyster_exp.models.tiny import build_tiny


def _digest(d: Path) -> dict[str, str]:
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in ("model.safetensors", "tokenizer.json")}


def test_tiny_model_build_is_deterministic(tmp_path: Path) -> None:
    a = build_tiny(tmp_path / "a")
    b = build_tiny(tmp_path / "b")
    assert _digest(a) == _digest(b)
    c = build_tiny(tmp_path / "c", seed=1)
    assert _digest(c)["model.safetensors"] != _digest(a)["model.safetensors"]


def test_tiny_tokenizer_has_a_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id


def test_local_path_without_checkpoint_names_the_key(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"source": "local_path", "path": str(tmp_path)})
    with pytest.raises(ModelNotFoundError, match="model.path"):
        resolve_model_dir(cfg)


def test_hub_ids_resolve_only_from_the_local_cache() -> None:
    cfg = OmegaConf.create({"source": "hub", "path": "nobody/not-a-real-model-xyz"})
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        resolve_model_dir(cfg)
