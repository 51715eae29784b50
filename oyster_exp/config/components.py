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

    The schema is always mutable, even for a frozen component: OmegaConf makes the node of a frozen
    dataclass read-only, and the option YAML and the command line must be able to set its knobs.
    `instantiate` then builds the component class itself (frozen or not) from the composed node.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__}: a component's settings must be a dataclass")
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        return dataclasses.make_dataclass(
            f"{cls.__name__}Schema", [("_target_", str, dataclasses.field(default=target or target_of(cls)))],
            bases=(cls,))
    hints = typing.get_type_hints(cls)
    copied = []
    for f in dataclasses.fields(cls):
        kw: dict[str, Any] = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        copied.append((f.name, hints[f.name], dataclasses.field(**kw)))
    return dataclasses.make_dataclass(
        f"{cls.__name__}Schema", [*copied, ("_target_", str, dataclasses.field(default=target or target_of(cls)))])


def register_component(group: str, name: str, cls: type, target: str | None = None) -> None:
    """Store `cls` as the schema `<group>/<name>_schema` (the option YAML's first defaults entry)."""
    ConfigStore.instance().store(group=group, name=f"{name}_schema", node=component_schema(cls, target))


def settings_of(node: Any, cls: type) -> Any:
    """A component's settings from a config node that may carry `_target_` (the dataclass does not)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(node).items() if k in names})
