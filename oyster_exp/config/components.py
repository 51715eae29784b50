"""Components as structured configs: a component's settings dataclass is the schema of its config group.

A swappable part of an experiment (a loss, a pair policy, a similarity, a benchmark, ...) is a dataclass
whose fields are its knobs, each with its default and range written once, where it is defined:

    @dataclass(frozen=True)
    class ORPOLoss(PreferenceLoss):
        beta: float = field(default=0.1, metadata=ge(0.0))   # the paper's lambda

        def __call__(self, ...): ...

    register_component("objective", "orpo", ORPOLoss)        # in the component's own module

`register_component` stores the dataclass, plus a `_target_` naming it, in Hydra's ConfigStore as
`<group>/<name>_schema`. The option's YAML (`conf/objective/orpo.yaml`) lists that schema first in its
defaults and sets only what differs, so composition type-checks every knob, rejects unknown keys, and
`hydra.utils.instantiate(cfg.objective)` builds the component. A caller never branches on a name: it
calls the object it was given.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hydra.core.config_store import ConfigStore


def ge(v: float) -> dict[str, float]:
    """Range metadata checked by `config.structured.validate_config`: value >= v."""
    return {"ge": v}


def rng(ge: float | None = None, le: float | None = None, gt: float | None = None) -> dict[str, float]:
    """Range metadata: any of >= ge, <= le, > gt (None: no bound)."""
    return {k: v for k, v in {"ge": ge, "le": le, "gt": gt}.items() if v is not None}


def target_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def component_schema(cls: type, target: str | None = None) -> type:
    """`cls`'s fields plus `_target_` (default: `cls` itself), as a dataclass Hydra can store.

    The schema mirrors the fields instead of subclassing `cls`: OmegaConf makes the node of a frozen
    dataclass read-only, so command-line overrides (`pairs.min_margin=0.2`) would fail on a frozen
    component. A field typed with another dataclass gets that dataclass's schema (with its own
    `_target_`), so `instantiate` builds the nested settings object too. A static
    `check_config(node, key)` on `cls` is carried over: `config.structured.validate_config` calls it
    with the composed node for the checks ranges cannot express.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__}: a component's settings must be a dataclass")
    cached = _SCHEMAS.get((cls, target))
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    specs: list[Any] = [("_target_", str, dataclasses.field(default=target or target_of(cls)))]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, Any)
        nested = _dataclass_in(tp)
        if nested is not None:
            sub = component_schema(nested)
            tp = sub | None if _is_optional(tp) else sub
        specs.append((f.name, tp, _mirror_field(f)))
    # a component's own cross-field checks (`check_config(node, key)`), run by validate_config
    check = getattr(cls, "check_config", None)
    namespace = {"check_config": staticmethod(check)} if callable(check) else {}
    schema = dataclasses.make_dataclass(f"{cls.__name__}Schema", specs, namespace=namespace)
    schema.__doc__ = cls.__doc__
    _SCHEMAS[(cls, target)] = schema
    return schema


_SCHEMAS: dict[tuple[type, str | None], type] = {}


def _is_optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field is typed with (`X` or `X | None`), else None."""
    for t in (tp, *typing.get_args(tp)):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def _mirror(value: Any) -> Any:
    """A dataclass instance as an instance of its schema (field by field); other values unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        sub = component_schema(type(value))
        return sub(**{f.name: _mirror(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init})
    return value


def _mirror_field(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        factory = f.default_factory
        return dataclasses.field(default_factory=lambda: _mirror(factory()), metadata=f.metadata)
    if dataclasses.is_dataclass(f.default) and not isinstance(f.default, type):
        default = f.default
        return dataclasses.field(default_factory=lambda: _mirror(default), metadata=f.metadata)
    return dataclasses.field(default=f.default, metadata=f.metadata)


def register_component(group: str, name: str, cls: type, target: str | None = None) -> None:
    """Store `cls` as the schema `<group>/<name>_schema` (the option YAML's first defaults entry)."""
    ConfigStore.instance().store(group=group, name=f"{name}_schema", node=component_schema(cls, target))


def settings_of(node: Any, cls: type) -> Any:
    """A component's settings from a config node that may carry `_target_` (the dataclass does not)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(node).items() if k in names})
