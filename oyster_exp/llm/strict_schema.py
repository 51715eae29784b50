"""Reply schemas in the form strict structured-output servers accept, and the way back.

OpenAI's strict mode (`response_format: json_schema, strict: true`) refuses a schema unless every object
says `additionalProperties: false` and lists every property in `required`; a field the caller may omit
must instead be required and nullable. It also refuses `default`. vLLM's structured outputs (xgrammar,
guidance) accept the same form. Our reply models are plain pydantic models with optional fields, so
`strict_schema` rewrites whatever schema is sent, generically (no per-model edits), and
`drop_null_optionals` undoes the one change a reply can show: a null where the model has a default.
"""
from __future__ import annotations

import copy
from typing import Any

UNSUPPORTED = ("default",)   # keywords strict mode refuses


def _allows_null(node: dict[str, Any]) -> bool:
    t = node.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t):
        return True
    return any(isinstance(b, dict) and _allows_null(b) for b in node.get("anyOf", ()))


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if k not in UNSUPPORTED}
    if out.get("type") == "object" or "properties" in out:
        props: dict[str, Any] = out.get("properties", {})
        required = set(node.get("required", ()))
        for name, prop in list(props.items()):
            if name not in required and isinstance(prop, dict) and not _allows_null(prop):
                props[name] = {"anyOf": [prop, {"type": "null"}]}
        out["properties"] = props
        out["required"] = list(props)
        out["additionalProperties"] = False
    return out


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` (any JSON schema we send) that satisfies OpenAI's strict mode: every object closed
    (`additionalProperties: false`), every property required, the optional ones nullable, no `default`."""
    return _strict(copy.deepcopy(schema))


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs.get(node["$ref"].split("/")[-1], {})
    return node


def _drop(value: Any, node: dict[str, Any], defs: dict[str, Any]) -> Any:
    node = _resolve(node, defs)
    if isinstance(value, dict) and isinstance(node.get("properties"), dict):
        props, required = node["properties"], set(node.get("required", ()))
        out = {}
        for k, v in value.items():
            sub = props.get(k)
            if v is None and k not in required and isinstance(sub, dict) and not _allows_null(_resolve(sub, defs)):
                continue          # a strict server's null for "not given": let the model's default apply
            out[k] = _drop(v, sub, defs) if isinstance(sub, dict) else v
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_drop(v, node["items"], defs) for v in value]
    if "anyOf" in node and value is not None:
        branches = [b for b in node["anyOf"] if isinstance(b, dict) and b.get("type") != "null"]
        if len(branches) == 1:
            return _drop(value, branches[0], defs)
    return value


def drop_null_optionals(data: Any, schema: dict[str, Any]) -> Any:
    """`data` without the nulls a strict server put in fields `schema` (the original, non-strict one) does not
    require and does not allow to be null, so that validation applies their defaults instead of failing."""
    return _drop(data, schema, schema.get("$defs", {}))
