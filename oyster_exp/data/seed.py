"""The embedded seed queries and user query files (JSONL), validated line by line.

A bad line fails loudly with `<file>:<line>: field '<name>': ...` so that a typo in a user's file is
found before any LLM call is paid for. The embedded seed set is held to the strict format (exactly the
seven keys, sequential ids, canonical EN category names); user files only need `id` and `query`, and the
optional labels are checked when present (a category may be written as any name the taxonomy accepts and
is stored under its canonical EN name).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from oyster_exp.core.contract import package_file
from oyster_exp.core.errors import DataError
from oyster_exp.data.jsonl_files import jsonl_objects
from oyster_exp.data.taxonomy import NO_RISK, Taxonomy, UnknownCategoryError, default_taxonomy

SEED_ASSET = "assets/seed_queries.jsonl"
KEYS = ("id", "query", "language", "risk_level", "category", "persona", "task")
LANGUAGES = ("en", "cn")
LEVELS = ("R0", "R1", "R2")


def seed_path() -> Path:
    """Location of the packaged seed set (a real file: the package is installed unzipped)."""
    return package_file(SEED_ASSET)


def heldout_split(qid: str, seed: int, heldout_fraction: float) -> str:
    """"heldout" or "train" by a stable hash of (seed, id): the same query lands in the same split on every
    machine and in every run, whatever the file's order."""
    h = int(hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def load_seed_queries(path: Path | str | None = None) -> list[dict[str, Any]]:
    """The project's embedded seed queries (or the seed-format file at `path`, e.g. an edited copy of the set),
    checked against the strict seed format."""
    return _load(Path(path) if path is not None else seed_path(), default_taxonomy(), seed=True)


def load_query_file(path: Path | str, taxonomy: Taxonomy | None = None) -> list[dict[str, Any]]:
    """Rows of a user query JSONL (same keys as the seed set; only `id` and `query` are required).

    Missing optional keys get defaults (language "en", risk_level/category None, persona/task "").
    `taxonomy` is the one the run uses (default: the project's) for checking `category`.
    """
    return _load(Path(path), taxonomy or default_taxonomy(), seed=False)


def check_query_row(row: dict[str, Any], where: str, taxonomy: Taxonomy | None = None) -> dict[str, Any]:
    """One user query row checked like a line of a user JSONL (`where` prefixes every error)."""
    return _check_row(row, taxonomy or default_taxonomy(), seed=False, where=where)


def _load(path: Path, tax: Taxonomy, seed: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for n, row in jsonl_objects(path):
        row = _check_row(row, tax, seed, where=f"{path}:{n}")
        if row["id"] in seen:
            raise DataError(f"{path}:{n}: field 'id': {row['id']!r} is a duplicate of line {seen[row['id']]}")
        if seed and row["id"] != f"seed-{len(rows) + 1:04d}":
            raise DataError(f"{path}:{n}: field 'id': expected 'seed-{len(rows) + 1:04d}' (ids are sequential), "
                             f"got {row['id']!r}")
        seen[row["id"]] = n
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no queries (the file is empty)")
    return rows


def _check_row(row: dict[str, Any], tax: Taxonomy, seed: bool, where: str) -> dict[str, Any]:
    def fail(field: str, msg: str) -> DataError:
        return DataError(f"{where}: field {field!r}: {msg}")

    if seed:
        missing = [k for k in KEYS if k not in row]
        extra = sorted(set(row) - set(KEYS))
        if missing:
            raise fail(missing[0], f"missing (the seed format needs exactly {list(KEYS)})")
        if extra:
            raise fail(extra[0], f"unexpected key (the seed format needs exactly {list(KEYS)})")
    if not seed and isinstance(row.get("id"), int) and not isinstance(row["id"], bool):
        row = {**row, "id": str(row["id"])}  # users often number their queries
    required = KEYS if seed else ("id", "query")
    for key in required:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise fail(key, "missing or empty" if row.get(key) in (None, "") else
                       f"must be a non-empty string, got {row[key]!r}")
    out = dict(row)
    out.setdefault("language", "en")
    if out["language"] not in LANGUAGES:
        raise fail("language", f"must be one of {list(LANGUAGES)}, got {out['language']!r}")
    out["risk_level"] = out.get("risk_level")
    if out["risk_level"] is not None and out["risk_level"] not in LEVELS:
        raise fail("risk_level", f"must be one of {list(LEVELS)}, got {out['risk_level']!r}")
    for key in ("persona", "task"):
        out[key] = out.get(key) if out.get(key) is not None else ""
        if not isinstance(out[key], str):
            raise fail(key, f"must be a string, got {out[key]!r}")
    out["category"] = _check_category(out.get("category"), out["risk_level"], tax, seed, fail)
    return out


def _check_category(cat: Any, level: str | None, tax: Taxonomy, seed: bool, fail: Any) -> str | None:
    if cat is None or cat == "":
        return None
    if not isinstance(cat, str):
        raise fail("category", f"must be a string, got {cat!r}")
    if seed:  # the seed file uses canonical EN names only
        if cat == NO_RISK:
            if level != "R0":
                raise fail("category", f"{NO_RISK!r} is only for R0 queries (risk_level is {level!r})")
            return cat
        if cat not in tax.names_en():
            try:
                hint = str(tax.get_strict(cat).name_en)
                raise fail("category", f"{cat!r} is not a canonical EN category name; write {hint!r}")
            except UnknownCategoryError as e:
                raise fail("category", str(e)) from None
        return cat
    try:
        return tax.get_strict(cat).name_en
    except UnknownCategoryError as e:
        raise fail("category", str(e)) from None
