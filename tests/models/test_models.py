"""Model sources: each `model=` option builds its source, which finds or builds a checkpoint; bad paths name
the key."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from oyster_exp.models.resolve import ModelNotFoundError, model_source, resolve_model_dir
from oyster_exp.models.sources import EmbeddedModel, HubModel, LocalPathModel, TinyRandomModel
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
    with pytest.raises(ModelNotFoundError, match="model.path"):
        LocalPathModel(model_id="m", path=str(tmp_path)).checkpoint_dir()


def test_hub_ids_resolve_only_from_the_local_cache() -> None:
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        HubModel(model_id="m", path="nobody/not-a-real-model-xyz").checkpoint_dir()


@pytest.mark.parametrize("option, cls", [("smollm2_135m", EmbeddedModel), ("tiny_random", TinyRandomModel),
                                         ("local_path", LocalPathModel), ("qwen3_14b", HubModel),
                                         ("r1_distill_qwen_14b", HubModel)])
def test_every_model_option_builds_its_source(compose_cfg, option: str, cls: type) -> None:
    extra = ["model.path=/models/x"] if option == "local_path" else []
    cfg = compose_cfg(f"model={option}", *extra)
    source = model_source(cfg.model)
    assert type(source) is cls
    assert source.name == option and source.model_id == str(cfg.model.model_id)
    assert model_source(source) is source   # a built source passes through


def test_tiny_random_knobs_belong_to_it_and_size_the_model(compose_cfg) -> None:
    cfg = compose_cfg("model=tiny_random", "model.tiny_hidden=32", "model.tiny_layers=1")
    path = resolve_model_dir(cfg.model)
    arch = json.loads((path / "config.json").read_text())
    assert (arch["hidden_size"], arch["num_hidden_layers"]) == (32, 1)
    with pytest.raises(Exception, match="tiny_hidden"):   # other sources do not carry the tiny model's knobs
        compose_cfg("model=smollm2_135m", "model.tiny_hidden=32")


def test_local_path_and_hub_sources_find_a_checkpoint_directory(compose_cfg, tiny_model_dir: Path) -> None:
    local = compose_cfg("model=local_path", f"model.path={tiny_model_dir}")
    assert resolve_model_dir(local.model) == tiny_model_dir
    assert local.model.model_id == str(tiny_model_dir)           # identity defaults to the path
    assert model_source(local.model).weights_status() == f"found: {tiny_model_dir}"
    hub = compose_cfg("model=qwen3_14b", f"model.path={tiny_model_dir}")   # the paper config on local weights
    assert resolve_model_dir(hub.model) == tiny_model_dir and hub.model.model_id == "Qwen/Qwen3-14B"


def test_local_llm_client_gets_the_built_model_source(compose_cfg) -> None:
    """`client: {_target_: local_client, model: ${model}}`: Hydra builds the source first; the client
    loads the checkpoint that source names."""
    from hydra.utils import instantiate

    from oyster_exp.llm.factory import clear_local_clients

    cfg = compose_cfg("model=tiny_random")
    clear_local_clients()      # a client an earlier test left on the same weights under another id must not answer
    try:
        client = instantiate(cfg.llm.roles.actor.client)
        assert client.model_id == "oyster-exp/tiny-random-qwen2-v1"
        assert instantiate(cfg.llm.roles.editor.client) is client   # one in-process model for every role
    finally:
        clear_local_clients()
