"""Flat JSON schemas as field specs, and the fixed text frame the local backend decodes into.

A structured reply is written as `{"key1": <value1>, "key2": <value2>}` (exactly the layout of
`json.dumps`). The keys, separators and quotes are the *frame*: the local backend feeds them to
the model as given text and lets it produce only the values. What a value may be is described by
a `FieldSpec` built from the pydantic JSON schema:

- `enum`: one of a fixed list of JSON scalars (`enum`, `const`, `Literal[...]`, `bool`, an `Enum`
  class behind `$ref`), chosen by trie-constrained decoding;
- `string`: free text cut at a quote or newline (`minLength` / `maxLength` respected);
- `number`: an integer or decimal number, constrained to digits, sign and point;
- `array`: a bounded list (`minItems`, default 1; `maxItems`, default 4) of string or enum items.

Anything else (nested objects, arrays of objects, dicts) raises `ValueError` naming the property.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["enum", "string", "number", "array"]

DEFAULT_MIN_ITEMS = 1
DEFAULT_MAX_ITEMS = 4


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    options: tuple[Any, ...] = ()          # enum: the allowed JSON scalars, in schema order
    integer: bool = False                  # number: integer only
    min_length: int = 0                    # string: characters
    max_length: int | None = None          # string: characters (longer text is truncated)
    item: FieldSpec | None = None          # array: the item spec (kind "string" or "enum")
    min_items: int = DEFAULT_MIN_ITEMS     # array
    max_items: int = DEFAULT_MAX_ITEMS     # array


def render(value: Any) -> str:
    """A JSON scalar as it appears in the reply."""
    return json.dumps(value, ensure_ascii=False)


def key_text(index: int, name: str) -> str:
    """The frame before the value of the `index`-th property: `{"name":` or `, "name":`."""
    return ("{" if index == 0 else ", ") + render(name) + ":"


def value_opener(spec: FieldSpec) -> str:
    """Frame text that starts a value and belongs to the frame (a string's opening quote).

    Enum, number and array values carry their own leading space, so that `": "yes"` is tokenised
    as a model would write it (`":`, ` "`, ...) rather than with a lone space token.
    """
    return ' "' if spec.kind == "string" else ""


def text_after(specs: list[FieldSpec], index: int) -> str:
    """The frame between the end of value `index` and the start of the next generated value."""
    if index + 1 < len(specs):
        nxt = specs[index + 1]
        return key_text(index + 1, nxt.name) + value_opener(nxt)
    return "}"


def _resolve(node: Any, defs: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Follow `$ref`, single `allOf`, and optional (`anyOf` with null) wrappers."""
    if not isinstance(node, dict) or depth > 32:
        return node if isinstance(node, dict) else {}
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/") and not ref.startswith("#/definitions/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        target = defs.get(ref.rsplit("/", 1)[-1])
        if target is None:
            raise ValueError(f"unresolved $ref {ref!r}")
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs, depth + 1)
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _resolve({**_resolve(node["allOf"][0], defs, depth + 1), **rest}, defs, depth + 1)
    for union in ("anyOf", "oneOf"):
        if union in node:
            branches = [_resolve(b, defs, depth + 1) for b in node[union]]
            non_null = [b for b in branches if b.get("type") != "null"]
            if len(non_null) == 1:
                rest = {k: v for k, v in node.items() if k != union}
                return {**non_null[0], **rest}
            options: list[Any] = []
            for b in non_null:           # a union of literals is an enum
                opts = _options(b)
                if opts is None:
                    return node
                options.extend(opts)
            return {"enum": options}
    if isinstance(node.get("type"), list):
        types = [t for t in node["type"] if t != "null"]
        if len(types) == 1:
            return {**node, "type": types[0]}
    return node


def _options(node: dict[str, Any]) -> list[Any] | None:
    if "const" in node:
        return [node["const"]]
    if "enum" in node:
        return list(node["enum"])
    if node.get("type") == "boolean":
        return [True, False]
    return None


def _unique(values: list[Any]) -> tuple[Any, ...]:
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(render(v), v)
    return tuple(seen.values())


def _scalar_spec(name: str, node: dict[str, Any], defs: dict[str, Any]) -> FieldSpec:
    opts = _options(node)
    if opts is not None:
        if not opts:
            raise ValueError(f"property {name!r}: empty enum")
        if any(isinstance(o, (dict, list)) for o in opts):
            raise ValueError(f"property {name!r}: enum options must be JSON scalars")
        return FieldSpec(name, "enum", options=_unique(opts))
    kind = node.get("type")
    if kind == "string":
        return FieldSpec(name, "string", min_length=int(node.get("minLength", 0)),
                         max_length=node.get("maxLength"))
    if kind in ("integer", "number"):
        return FieldSpec(name, "number", integer=kind == "integer")
    if kind == "null":
        return FieldSpec(name, "enum", options=(None,))
    what = "a nested object" if kind == "object" or "properties" in node else f"type {kind!r}"
    raise ValueError(f"property {name!r}: {what} is not supported in a flat structured reply")


def field_specs(schema: dict[str, Any]) -> list[FieldSpec]:
    """The properties of a flat object schema, in schema order."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    root = _resolve(schema, defs)
    if root.get("type", "object") != "object":
        raise ValueError(f"response_schema must describe an object, not {root.get('type')!r}")
    specs: list[FieldSpec] = []
    for name, raw in root.get("properties", {}).items():
        node = _resolve(raw, defs)
        if node.get("type") == "array" and _options(node) is None:
            item_node = _resolve(node.get("items", {}), defs)
            try:
                item = _scalar_spec(name, item_node, defs)
            except ValueError as e:
                raise ValueError(f"property {name!r}: array items must be strings or enums ({e})") from None
            if item.kind not in ("string", "enum"):
                raise ValueError(f"property {name!r}: array items must be strings or enums, not {item.kind}")
            lo = int(node.get("minItems", DEFAULT_MIN_ITEMS))
            hi = int(node.get("maxItems", max(DEFAULT_MAX_ITEMS, lo)))
            if hi < lo:
                raise ValueError(f"property {name!r}: maxItems < minItems")
            specs.append(FieldSpec(name, "array", item=item, min_items=lo, max_items=hi))
        else:
            specs.append(_scalar_spec(name, node, defs))
    return specs
