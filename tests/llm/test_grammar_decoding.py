"""The grammar decoder's schema bounding and value tracking (no model needed)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from oyster_exp.llm.grammar_decoding import _ValueTracker, bounded_schema, token_bound
from oyster_exp.llm.json_frame import DEFAULT_MAX_ITEMS


class Inner(BaseModel):
    tags: list[str]
    note: str = ""


class Outer(BaseModel):
    name: str
    inner: Inner
    few: list[int] = Field(max_length=2)


def test_bounded_schema_requires_every_property_and_caps_arrays() -> None:
    raw = Outer.model_json_schema()
    b = bounded_schema(raw)
    assert b["required"] == ["name", "inner", "few"] and b["additionalProperties"] is False
    inner = b["$defs"]["Inner"]
    assert inner["required"] == ["tags", "note"] and inner["additionalProperties"] is False
    assert (inner["properties"]["tags"]["minItems"], inner["properties"]["tags"]["maxItems"]) == (1, DEFAULT_MAX_ITEMS)
    assert b["properties"]["few"]["maxItems"] == 2                   # a schema's own bound is kept
    assert "required" not in raw["$defs"]["Inner"] or raw["$defs"]["Inner"]["required"] == ["tags"]  # a copy
    # the length cap grows with the per-field budget and covers every bounded value
    assert token_bound(b, 32) > token_bound(b, 8) > 3 * 8


def test_value_tracker_counts_tokens_inside_strings_and_numbers() -> None:
    t = _ValueTracker()
    for piece in ['{"', 'name', '":', ' "', 'he', 'llo']:
        t.feed(piece)
    assert t.in_string and t.tokens == 2      # "he", "llo" (the opening quote's token starts the value)
    t.feed('",')
    assert not t.in_string
    for piece in [' "', 'few', '": ', '[', '12', '3']:
        t.feed(piece)
    assert t.in_number and t.tokens == 2
    t.feed(']}')
    assert not t.in_number and not t.in_string
