"""The exported card's front matter is what the Hub reads (`huggingface_hub.ModelCard`), and eval results
added later land in its `model-index` without touching the stage cache's copy."""
from __future__ import annotations

import os
from pathlib import Path

from oyster_exp.core.redaction import strip_secrets
from oyster_exp.training.card import NOT_EVALUATED, CardMeta, add_eval_results, front_matter, model_card


def _card() -> str:
    meta = CardMeta.from_config({"license": "apache-2.0", "datasets": ["org/prompts"], "tags": ["demo"]},
                                "HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1", ["oyster-exp-pairs-0123456789ab"])
    config = strip_secrets({"objective": {"beta": 0.1}, "llm": {"api_key": "sk-live-123456"}})
    return model_card("Trained with `orpo (beta=0.1)`.", "orpo", {"train/loss": 1.25}, config, meta)


def test_front_matter_has_the_hub_fields() -> None:
    card = _card()
    meta = front_matter(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"      # the revision suffix is not a Hub id
    assert meta["datasets"] == ["org/prompts", "oyster-exp-pairs-0123456789ab"]
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert meta["library_name"] == "transformers" and {"oyster-exp", "orpo", "demo"} <= set(meta["tags"])
    assert "model-index" not in meta and NOT_EVALUATED in card
    assert "train/loss: 1.25" in card and "beta: 0.1" in card and "sk-live-123456" not in card


def test_an_explicit_base_model_wins_and_none_is_left_out() -> None:
    assert CardMeta.from_config({"base_model": "org/base"}, "local/x@v1").base_model == "org/base"
    assert "base_model" not in front_matter(model_card("s", "sft", None, None, CardMeta()))


def test_eval_results_replace_the_run_copy_not_the_cached_card(tmp_path: Path) -> None:
    cached, run_copy = tmp_path / "cache" / "README.md", tmp_path / "run" / "README.md"
    cached.parent.mkdir()
    run_copy.parent.mkdir()
    cached.write_text(_card())
    os.link(cached, run_copy)                          # how the runner puts a cached export into the run dir
    assert add_eval_results(run_copy, {"construction/constructive@beta=2": 0.375, "strata_sword/asr[en-L1]": 20.0},
                            "csa")
    meta = front_matter(run_copy.read_text())
    (index,) = meta["model-index"]
    values = {(r["dataset"]["name"], m["type"]): m["value"] for r in index["results"] for m in r["metrics"]}
    assert index["name"] == "csa" and values == {("construction", "constructive@beta=2"): 0.375,
                                                  ("strata_sword", "asr[en-L1]"): 20.0}
    text = run_copy.read_text()
    assert NOT_EVALUATED not in text and "| construction | constructive@beta=2 | 0.375 |" in text
    assert "## Config" in text and meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cached.read_text() == _card()
    assert not add_eval_results(tmp_path / "missing" / "README.md", {"a/b": 1.0}, "csa")
