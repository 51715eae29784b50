"""Every reply schema the package sends, in the form OpenAI's strict mode and vLLM's structured outputs take."""
from __future__ import annotations

import importlib
import inspect
import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from oyster_exp.llm.base import ChatMessage, ChatRequest
from oyster_exp.llm.engine import CallEngine
from oyster_exp.llm.openai_compat import OpenAICompatClient
from oyster_exp.llm.strict_schema import drop_null_optionals, strict_schema
from oyster_exp.testing.loopback import serve

REPLY_MODULES = ("oyster_exp.csa.replies", "oyster_exp.evaluation.judges")


def _sent_schemas(compose_cfg: Any) -> dict[str, type[BaseModel]]:
    """The reply models handed to `LLMService.structured`: each `*Reply` class of the reply modules, and the
    models built at run time (the assessor's, for the full risk config; the category classifier's)."""
    from hydra.utils import instantiate

    from oyster_exp.csa.assessment import reply_model
    from oyster_exp.data.taxonomy import default_taxonomy
    from oyster_exp.evaluation.judges import category_reply_model

    out: dict[str, type[BaseModel]] = {}
    for name in REPLY_MODULES:
        for cls_name, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass):
            if cls_name.endswith("Reply") and issubclass(cls, BaseModel) and cls.__module__ == name:
                out[cls_name] = cls
    tax = default_taxonomy()
    settings = instantiate(compose_cfg("risk=full").risk, _convert_="all")
    out["AssessReply"] = reply_model(tax, settings)
    out["CategoryReply"] = category_reply_model(tuple(tax.names_en()))
    return out


def _violations(node: Any, path: str = "$") -> list[str]:
    """Where `node` breaks a strict-mode rule."""
    bad: list[str] = []
    if isinstance(node, list):
        for i, x in enumerate(node):
            bad += _violations(x, f"{path}[{i}]")
        return bad
    if not isinstance(node, dict):
        return bad
    if "default" in node:
        bad.append(f"{path}: default")
    if node.get("type") == "object" or "properties" in node:
        props = node.get("properties", {})
        if node.get("additionalProperties") is not False:
            bad.append(f"{path}: additionalProperties is not false")
        if sorted(node.get("required", [])) != sorted(props):
            bad.append(f"{path}: required {node.get('required')} != properties {list(props)}")
    for k, v in node.items():
        if isinstance(v, (dict, list)) and k != "enum":
            bad += _violations(v, f"{path}.{k}")
    return bad


def test_every_sent_reply_schema_is_strict_and_keeps_its_meaning(compose_cfg: Any) -> None:
    models = _sent_schemas(compose_cfg)
    assert {"UserJudgementReply", "SafetyJudgementReply", "ChainReply", "EditReply", "StrataVerdictReply",
            "BehaviorVerdictReply", "RefusalReply", "AssessReply"} <= set(models)
    for name, model in models.items():
        raw = model.model_json_schema()
        strict = strict_schema(raw)
        assert _violations(strict) == [], name
        assert raw == model.model_json_schema(), "the original is not changed in place"
        assert set(strict["properties"]) == set(raw["properties"]), name
        for field, prop in strict["properties"].items():
            optional = field not in raw.get("required", [])
            nullable = {"type": "null"} in prop.get("anyOf", [])
            assert nullable == optional, (name, field)
    assert _violations(strict_schema(models["UserJudgementReply"].model_json_schema())) == []


class Inner(BaseModel):
    label: str
    weight: float = 1.0


class Nested(BaseModel):
    items: list[Inner] = Field(max_length=3)
    best: Inner | None = None
    mode: Literal["a", "b"] = "a"


def test_nested_objects_refs_and_the_way_back() -> None:
    raw = Nested.model_json_schema()
    strict = strict_schema(raw)
    assert _violations(strict) == []
    assert strict["$defs"]["Inner"]["required"] == ["label", "weight"]
    assert strict["properties"]["best"]["anyOf"] == raw["properties"]["best"]["anyOf"], "already nullable: kept"
    reply = {"items": [{"label": "x", "weight": None}], "best": None, "mode": None}
    assert Nested.model_validate(drop_null_optionals(reply, raw)) == Nested(items=[Inner(label="x")])
    with pytest.raises(ValueError):   # a null in a required field stays an error
        Nested.model_validate(drop_null_optionals({"items": [{"label": None}]}, raw))


def test_the_openai_client_sends_the_strict_form() -> None:
    from oyster_exp.csa.replies import UserJudgementReply

    schema = UserJudgementReply.model_json_schema()
    with serve() as (url, state):
        client = OpenAICompatClient(url, "m", api_key_env=None, engine=CallEngine(concurrency=2))
        out = client.chat_batch([ChatRequest(messages=[ChatMessage(role="user", content="j")],
                                             response_schema=schema)])
    sent = state.bodies[0]["response_format"]["json_schema"]
    assert sent["strict"] is True and sent["schema"] == strict_schema(schema) and _violations(sent["schema"]) == []
    assert UserJudgementReply.model_validate(drop_null_optionals(json.loads(out[0].content), schema))  # type: ignore[union-attr]
