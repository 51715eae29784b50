"""The in-process backend: micro-batched free text and schema-valid structured output from both decoders
(`grammar`: llguidance masks over a batch; `frame`: the per-request JSON-frame decoder).

Fast tests run on the tiny random model; the `slow` one on the embedded SmolLM2.
"""
from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from oyster_exp.llm.base import ChatMessage, ChatRequest, LLMClient
from oyster_exp.llm.json_frame import field_specs


class Mood(str, Enum):
    calm = "calm"
    tense = "tense"


class Judgement(BaseModel):
    label: Literal["safe", "partly_safe", "unsafe"]
    item: Literal[-1, 0, 1]
    note: str
    steps: list[str]


class WithEnumClass(BaseModel):
    mood: Mood
    score: int
    short: str = Field(max_length=5)
    tags: list[Literal["x", "y"]] = Field(max_length=2)
    sure: bool


class Nested(BaseModel):
    verdict: Literal["yes", "no"]
    inner: Judgement


@pytest.fixture(scope="module")
def grammar_client(tiny_model_dir: Path):
    from oyster_exp.llm.local import LocalClient

    return LocalClient(tiny_model_dir, model_id="tiny", max_batch_size=8, structured_decoding="grammar")


@pytest.fixture(scope="module")
def frame_client(tiny_model_dir: Path):
    from oyster_exp.llm.local import LocalClient

    return LocalClient(tiny_model_dir, model_id="tiny", max_batch_size=8, structured_decoding="frame")


@pytest.fixture
def client(frame_client):
    """Free-text tests: the default client (its structured decoder plays no part)."""
    return frame_client


@pytest.fixture(params=["grammar", "frame"])
def sclient(request):
    """Structured tests: each decoder in turn."""
    return request.getfixturevalue(f"{request.param}_client")


def _req(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **kw)


# -- free text ----------------------------------------------------------------------------------
def test_client_identity(client, tiny_model_dir: Path) -> None:
    from oyster_exp.llm.local import LocalClient

    assert isinstance(client, LLMClient)
    assert client.backend == "local" and client.model_id == "tiny"
    assert LocalClient(tiny_model_dir).model_id == tiny_model_dir.name  # default: the directory name
    assert client.count_tokens("hello world") > 0 and client.count_tokens("") == 0


def test_batched_greedy_equals_one_by_one(client) -> None:
    prompts = ["alpha", "a much longer prompt about safety, risk and how to help the user", "中文问题"]
    batch = client.chat_batch([_req(p, max_tokens=12) for p in prompts])
    singles = [client.chat_batch([_req(p, max_tokens=12)])[0] for p in prompts]
    assert [b.content for b in batch] == [s.content for s in singles]
    assert [b.usage for b in batch] == [s.usage for s in singles]
    for b in batch:
        assert b.usage.prompt_tokens > 0 and 0 < b.usage.completion_tokens <= 12
        assert b.finish_reason in ("stop", "length") and b.reasoning == ""
        assert "<|im_end|>" not in b.content and "<|endoftext|>" not in b.content
    # deterministic across calls
    assert [r.content for r in client.chat_batch([_req(p, max_tokens=12) for p in prompts])] == \
        [b.content for b in batch]


def test_sampling_is_reproducible_per_seed_and_batch_independent(client) -> None:
    def ask(seed: int, extra: int = 0) -> str:
        reqs = [_req("hello", max_tokens=12, temperature=1.0, seed=seed)]
        reqs += [_req(f"other prompt {k}", max_tokens=12, temperature=1.0, seed=100 + k) for k in range(extra)]
        return client.chat_batch(reqs)[0].content

    a, b, c = ask(5), ask(5), ask(6)
    assert a == b and a != c
    assert ask(5, extra=3) == a, "a sampled reply must not depend on its batch mates"


def test_mixed_batch_keeps_input_order(sclient) -> None:
    schema = Judgement.model_json_schema()
    reqs = [_req("one", max_tokens=5), _req("two", response_schema=schema, max_tokens_per_field=3),
            _req("three", max_tokens=7, temperature=0.7, seed=1), _req("four", max_tokens=5)]
    out = sclient.chat_batch(reqs)
    assert len(out) == 4
    Judgement.model_validate_json(out[1].content)
    assert out[0].content == sclient.chat_batch([reqs[0]])[0].content
    assert out[3].content == sclient.chat_batch([reqs[3]])[0].content
    assert out[2].usage.completion_tokens <= 7


# -- structured ---------------------------------------------------------------------------------
def test_calls_show_on_the_remote_clients_progress_bar(client, capsys: pytest.CaptureFixture) -> None:
    schema = Judgement.model_json_schema()
    reqs = [_req("a", max_tokens=4), _req("b", max_tokens=4), _req("c", response_schema=schema,
                                                                   max_tokens_per_field=3)]
    assert client.progress is False                       # pytest's stderr is no terminal: no bar by default
    client.chat_batch(reqs)
    assert capsys.readouterr().err == ""
    client.progress = True
    try:
        out = client.chat_batch(reqs)
    finally:
        client.progress = False
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    tokens = sum(r.usage.prompt_tokens + r.usage.completion_tokens for r in out)
    assert last.startswith("local tiny: 100%") and "3/3" in last and ("call/s" in last or "s/call" in last), last
    assert "failures=0" in last and f"tok={tokens}," in last and "tok_s=" in last


def test_structured_replies_always_validate(sclient) -> None:
    schema = Judgement.model_json_schema()
    labels, items = set(), set()
    for i in range(20):
        r = sclient.chat_batch([_req(f"case {i}: judge this {'please ' * (i % 4)}", response_schema=schema,
                                    max_tokens_per_field=6, temperature=0.0 if i < 4 else 1.0, seed=i)])[0]
        j = Judgement.model_validate_json(r.content)
        assert list(json.loads(r.content)) == ["label", "item", "note", "steps"]  # schema order
        assert j.label in ("safe", "partly_safe", "unsafe") and j.item in (-1, 0, 1)
        assert 1 <= len(j.steps) <= 4
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0 and r.reasoning == ""
        labels.add(j.label)
        items.add(j.item)
    assert len(labels) >= 2 and len(items) >= 2, "sampling should reach more than one enum value"


def test_structured_greedy_is_deterministic(sclient) -> None:
    req = _req("judge", response_schema=Judgement.model_json_schema(), max_tokens_per_field=5)
    assert sclient.chat_batch([req])[0].content == sclient.chat_batch([req])[0].content
    sampled = _req("judge", response_schema=Judgement.model_json_schema(), max_tokens_per_field=5,
                   temperature=1.0, seed=11)
    assert sclient.chat_batch([sampled])[0].content == sclient.chat_batch([sampled])[0].content


def test_enum_class_ref_numbers_bools_and_limits(sclient) -> None:
    schema = WithEnumClass.model_json_schema()
    assert "$defs" in schema  # Mood is a $ref
    for i in range(6):
        r = sclient.chat_batch([_req(f"x{i}", response_schema=schema, temperature=1.0, seed=i,
                                    max_tokens_per_field=8)])[0]
        v = WithEnumClass.model_validate_json(r.content)
        assert v.mood in (Mood.calm, Mood.tense)
        assert len(v.short) <= 5 and 1 <= len(v.tags) <= 2


def test_field_specs() -> None:
    specs = {s.name: s for s in field_specs(WithEnumClass.model_json_schema())}
    assert specs["mood"].kind == "enum" and specs["mood"].options == ("calm", "tense")
    assert specs["score"].kind == "number" and specs["score"].integer
    assert specs["short"].kind == "string" and specs["short"].max_length == 5
    assert specs["tags"].kind == "array" and specs["tags"].item.options == ("x", "y")
    assert (specs["tags"].min_items, specs["tags"].max_items) == (1, 2)
    assert specs["sure"].options == (True, False)
    j = {s.name: s for s in field_specs(Judgement.model_json_schema())}
    assert j["item"].options == (-1, 0, 1) and j["steps"].item.kind == "string"
    assert (j["steps"].min_items, j["steps"].max_items) == (1, 4)
    const = field_specs({"type": "object", "properties": {"k": {"const": "only"}}})
    assert const[0].options == ("only",)


def test_nested_object_raises_naming_the_field_in_the_frame_decoder(frame_client) -> None:
    with pytest.raises(ValueError, match="inner"):
        field_specs(Nested.model_json_schema())
    with pytest.raises(ValueError, match="inner"):
        frame_client.chat_batch([_req("x", response_schema=Nested.model_json_schema())])


def test_grammar_decoder_takes_nested_schemas_batched(grammar_client) -> None:
    """Arbitrary schemas (a nested object behind $ref) in one batch, each reply valid and in schema order."""
    reqs = [_req(f"nested {i}", response_schema=Nested.model_json_schema(), max_tokens_per_field=4,
                 temperature=1.0, seed=i) for i in range(5)]
    reqs.append(_req("flat", response_schema=WithEnumClass.model_json_schema(), max_tokens_per_field=4))
    out = grammar_client.chat_batch(reqs)
    for r in out[:5]:
        n = Nested.model_validate_json(r.content)
        assert list(json.loads(r.content)["inner"]) == ["label", "item", "note", "steps"]
        assert 1 <= len(n.inner.steps) <= 4 and r.finish_reason == "stop"
    WithEnumClass.model_validate_json(out[5].content)
    with pytest.raises(ValueError, match="constrained decoding"):
        bad = {"type": "object", "properties": {"a": {"type": "nope"}}}
        grammar_client.chat_batch([_req("x", response_schema=bad)])


def test_grammar_decoder_batch_independent_and_budgeted(grammar_client) -> None:
    """A sampled structured reply does not depend on its batch mates; string values stop near their token
    budget (the squeeze); the two decoders never share a call-cache label."""
    schema = Judgement.model_json_schema()
    alone = grammar_client.chat_batch([_req("solo", response_schema=schema, temperature=1.0, seed=3,
                                    max_tokens_per_field=5)])[0]
    mates = [_req(f"mate {k} " * (k + 1), response_schema=schema, temperature=1.0, seed=k,
                  max_tokens_per_field=9) for k in range(4)]
    batched = grammar_client.chat_batch([*mates[:2], _req("solo", response_schema=schema, temperature=1.0, seed=3,
                                                  max_tokens_per_field=5), *mates[2:]])
    assert batched[2].content == alone.content
    note = Judgement.model_validate_json(alone.content).note
    # the budget counts tokens inside the value (its closing quote may share the last one)
    assert grammar_client.count_tokens(note) <= 5 + 1, note
    assert grammar_client.cache_backend == "local/grammar"


# -- the embedded SmolLM2 -----------------------------------------------------------------------
@pytest.mark.slow
def test_embedded_smollm2_structured_and_free_text() -> None:
    from oyster_exp.llm.local import LocalClient
    from oyster_exp.models.embedded import ensure_embedded_model

    class Answer(BaseModel):
        answer: Literal["yes", "no"]
        reason: str

    c = LocalClient(ensure_embedded_model())
    structured, free = c.chat_batch([
        _req("Is water wet? Answer yes or no, with a short reason.", response_schema=Answer.model_json_schema(),
             max_tokens_per_field=16),
        _req("What is the capital of France?", max_tokens=24),
    ])
    a = Answer.model_validate_json(structured.content)
    assert a.answer in ("yes", "no")
    assert "Paris" in free.content, free.content
