"""What the running stage declared it uses, so that a use it did not declare fails loudly.

A stage's cache key hashes the prompt templates and packaged assets it declares. A declaration that
misses one would let an edit of that file come back as a stale cache hit, so the runner makes the
declaration the only way in: while a stage runs, `active_stage` holds its name and declared sets, and
the two entry points (`check_template`, called by the template renderer, and `package_file`, through
which every packaged asset is located) raise `ContractError` for anything not declared. Outside a
stage (dry runs, scripts, tests of the parts) nothing is checked.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from oyster_exp.core.errors import StageError


class ContractError(StageError):
    """A stage used a config key, prompt template or packaged asset it does not declare."""


@dataclass(frozen=True)
class Declared:
    stage: str
    templates: frozenset[str]           # template names ("assess"), any language
    assets: frozenset[str]              # package-relative paths ("assets/seed_queries.jsonl") or folders


_ACTIVE: ContextVar[Declared | None] = ContextVar("oyster_exp_active_stage", default=None)


@contextlib.contextmanager
def active_stage(stage: str, templates: tuple[str, ...], assets: tuple[str, ...]) -> Iterator[Declared]:
    """Check every template render and packaged-asset lookup against these declarations until exit."""
    d = Declared(stage, frozenset(templates), frozenset(a.rstrip("/") for a in assets))
    token = _ACTIVE.set(d)
    try:
        yield d
    finally:
        _ACTIVE.reset(token)


def declared() -> Declared | None:
    """The running stage's declarations, None outside a stage."""
    return _ACTIVE.get()


def check_template(name: str) -> None:
    d = _ACTIVE.get()
    if d is not None and name not in d.templates:
        raise ContractError(f"stage {d.stage!r} renders prompt template {name!r}, which it does not declare "
                            f"(add it to the stage's `templates`: {sorted(d.templates)})")


def package_root() -> Path:
    """The installed `oyster_exp` package folder (the wheel installs it unzipped)."""
    return Path(str(resources.files("oyster_exp")))


def package_file(relpath: str) -> Path:
    """`oyster_exp/<relpath>`, checked against the running stage's declared assets (a folder covers its files)."""
    d = _ACTIVE.get()
    if d is not None and not any(relpath == a or relpath.startswith(a + "/") for a in d.assets):
        raise ContractError(f"stage {d.stage!r} reads packaged asset {relpath!r}, which it does not declare "
                            f"(add it to the stage's `assets`: {sorted(d.assets)})")
    return package_root() / relpath


def asset_files(relpath: str) -> dict[str, Path]:
    """The files a declared asset stands for, by package-relative name: itself, or every file below a folder."""
    path = package_root() / relpath
    if path.is_dir():
        return {f"{relpath}/{f.relative_to(path).as_posix()}": f for f in sorted(path.rglob("*"))
                if f.is_file() and "__pycache__" not in f.parts}
    return {relpath: path}
