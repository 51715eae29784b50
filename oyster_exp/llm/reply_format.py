"""The JSON-schema instruction for backends that cannot enforce a schema on the wire.

DashScope's native API offers at most `{"type": "json_object"}` (and none in thinking mode), so
the schema itself has to travel in the prompt. One fixed, parseable wording is used so that the
loopback test server can read the schema back the way a real model would, and answer in shape.
"""
from __future__ import annotations

import json
from typing import Any

MARKER = "Reply with one JSON object that conforms to this JSON schema (no prose, no code fences):"


def schema_instruction(schema: dict[str, Any]) -> str:
    return f"{MARKER}\n{json.dumps(schema, ensure_ascii=False, sort_keys=True)}"


def schema_from_text(text: str) -> dict[str, Any] | None:
    """The schema embedded by `schema_instruction`, or None."""
    at = text.rfind(MARKER)
    if at < 0:
        return None
    try:
        value = json.loads(text[at + len(MARKER):].strip().splitlines()[0])
    except (json.JSONDecodeError, IndexError):
        return None
    return value if isinstance(value, dict) else None


def json_text(content: str) -> str:
    """The JSON object inside a reply that wrapped it in code fences or a sentence.

    Validation stays with the service: this only cuts the outermost `{...}` span, it never repairs.
    """
    s = content.strip()
    if s.startswith("{") and s.endswith("}"):
        return s
    first, last = s.find("{"), s.rfind("}")
    return s[first:last + 1] if 0 <= first < last else s
