"""Flat JSON schemas as a list of field specs, for decoding values into a fixed JSON frame.

The local backend writes the frame (`{"key": `, separators, quotes) itself and lets the model
produce only the values: an enum value is chosen among its options, a string is free text up to a
quote or newline, an array is a bounded list of strings. The output is valid by construction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["enum", "string", "array", "number"]


@dataclass
class FieldSpec:
    name: str
    kind: Kind
    options: list[Any] = field(default_factory=list)   # enum values (str or int)
    max_length: int | None = None                      # characters (strings)
    min_items: int = 1
    max_items: int = 4
    integer: bool = False


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].split("/")[-1]
        return _resolve(defs[name], defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        return _resolve(node["allOf"][0], defs)
    if "anyOf" in node:
        non_null = [n for n in node["anyOf"] if n.get("type") != "null"]
        if len(non_null) == 1:
            return _resolve(non_null[0], defs)
    return node


def field_specs(schema: dict[str, Any]) -> list[FieldSpec]:
    defs = schema.get("$defs", {})
    specs = []
    for name, raw in schema.get("properties", {}).items():
        node = _resolve(raw, defs)
        if "const" in node:
            specs.append(FieldSpec(name, "enum", options=[node["const"]]))
        elif "enum" in node:
            specs.append(FieldSpec(name, "enum", options=list(node["enum"])))
        elif node.get("type") == "string":
            specs.append(FieldSpec(name, "string", max_length=node.get("maxLength")))
        elif node.get("type") == "array":
            items = _resolve(node.get("items", {}), defs)
            if items.get("type") != "string":
                raise ValueError(f"property {name!r}: only arrays of strings are supported")
            specs.append(FieldSpec(name, "array", min_items=max(1, node.get("minItems", 1)),
                                   max_items=node.get("maxItems", 4)))
        elif node.get("type") in ("integer", "number"):
            specs.append(FieldSpec(name, "number", integer=node.get("type") == "integer"))
        else:
            raise ValueError(f"property {name!r}: unsupported schema {node.get('type', node)!r} "
                             "(nested objects are not supported in a flat reply)")
    return specs
