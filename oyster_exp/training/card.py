"""The exported model's README: Hub metadata (`huggingface_hub.ModelCardData`) and the prose around it.

Why the Hub's own card class: the front matter it writes is what the Hub indexes (`base_model` links the
model tree, `datasets`, `license`, `pipeline_tag` drive search, `model-index` shows the eval table), so a
card written here reads the same once pushed. The train stage writes the card before anything is
evaluated and says so; the report stage adds the final eval metrics to the run's copy (`with_eval_results`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EVAL_HEADING = "## Evaluation"
NOT_EVALUATED = ("Not evaluated yet: the evaluate and report stages add their final metrics to the run's copy of "
                 "this card (`oyster-exp stage=[evaluate,report]` with the same config).")


@dataclass
class CardMeta:
    """What the card says about where the model comes from (front matter fields of the Hub)."""

    base_model: str | None = None              # a Hub repo id; the model tree links to it
    datasets: list[str] = field(default_factory=list)
    license: str | None = None
    pipeline_tag: str = "text-generation"
    tags: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, node: Any, model_id: str | None, extra_datasets: list[str] | None = None) -> CardMeta:
        """From a `training.card` node; `base_model: null` falls back to `model_id` without its `@revision`."""
        get = node.get if node is not None and hasattr(node, "get") else (lambda _k, d=None: d)
        base = get("base_model") or (str(model_id).split("@", 1)[0] if model_id else None)
        return cls(base_model=base, datasets=[str(d) for d in (get("datasets") or [])] + list(extra_datasets or []),
                   license=get("license"), pipeline_tag=str(get("pipeline_tag") or "text-generation"),
                   tags=[str(t) for t in (get("tags") or [])])


def plain(obj: Any) -> Any:
    """Config values as YAML-safe builtins (enums, paths and other objects become strings)."""
    from enum import Enum

    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, Enum):
        return plain(obj.value)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _yaml_block(obj: Any, sort: bool) -> list[str]:
    return ["```yaml", yaml.safe_dump(plain(obj), sort_keys=sort, allow_unicode=True).strip(), "```"]


def model_card(summary: str, objective: str, metrics: dict[str, float] | None, config: dict[str, Any] | None,
               meta: CardMeta | None = None) -> str:
    """README.md text: Hub front matter, how the model was trained, its training metrics, its config.

    `config` must already be secret-stripped (`core.redaction.strip_secrets`): it is printed as is.
    """
    from huggingface_hub import ModelCard, ModelCardData

    meta = meta or CardMeta()
    data = ModelCardData(base_model=meta.base_model, datasets=meta.datasets or None, license=meta.license,
                         library_name="transformers", pipeline_tag=meta.pipeline_tag,
                         tags=list(dict.fromkeys(["oyster-exp", "constructive-safety-alignment", objective,
                                                  *meta.tags])))
    base = f"`{meta.base_model}`" if meta.base_model else "its base model"
    lines = ["---", data.to_yaml(), "---", "", "# oyster-exp model", "",
             f"A Constructive Safety Alignment (Oyster-I method) fine-tune of {base}, made with oyster-exp: "
             "preference pairs from its data engine (an initial response against a Lingo-BP-optimised one), "
             "then the training objective below in a Lightning Trainer.", "", summary, "",
             "## Training metrics (last step / last validation epoch)", "", *_yaml_block(metrics or {}, True), "",
             EVAL_HEADING, "", NOT_EVALUATED, "",
             "## Config (the train stage's config; secrets removed)", "", *_yaml_block(config or {}, False), ""]
    return str(ModelCard("\n".join(lines)))


def _eval_section(results: dict[str, float]) -> str:
    rows = ["| benchmark | metric | value |", "|---|---|---|"]
    for key, value in sorted(results.items()):
        bench, metric = key.split("/", 1) if "/" in key else (key, key)
        rows.append(f"| {bench} | {metric} | {value:.4g} |")
    return "\n".join([EVAL_HEADING, "", "Final metrics of the evaluate stage for the trained model:", "", *rows, ""])


def with_eval_results(card_text: str, results: dict[str, float], model_name: str) -> str:
    """The card with `results` ("benchmark/metric" -> value) in its `model-index` and its Evaluation section."""
    from huggingface_hub import EvalResult, ModelCard

    card = ModelCard(card_text)
    card.data.model_name = model_name
    card.data.eval_results = [
        EvalResult(task_type="text-generation", dataset_type=f"oyster-exp/{key.split('/', 1)[0]}",
                   dataset_name=key.split("/", 1)[0], metric_type=key.split("/", 1)[-1], metric_value=float(v))
        for key, v in sorted(results.items())] or None
    text = card.text
    head, sep, rest = text.partition(EVAL_HEADING)
    if sep:
        nxt = rest.find("\n## ")
        text = head + _eval_section(results) + (rest[nxt:] if nxt >= 0 else "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + _eval_section(results)
    return str(ModelCard(f"---\n{card.data.to_yaml()}\n---\n{text}"))


def add_eval_results(card_path: Path, results: dict[str, float], model_name: str) -> bool:
    """Rewrite `card_path` with the eval results; False when there is no card there.

    The file is replaced, not written in place: the run directory's copy is a hard link into the train
    stage's cache entry, which must keep the card that its cache key describes.
    """
    card_path = Path(card_path)
    if not card_path.is_file():
        return False
    text = with_eval_results(card_path.read_text(encoding="utf-8"), results, model_name)
    tmp = card_path.with_name(card_path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(card_path)
    return True


def front_matter(card_text: str) -> dict[str, Any]:
    """The card's YAML metadata as a dict (what the Hub reads)."""
    from huggingface_hub import ModelCard

    return ModelCard(card_text).data.to_dict()
