"""Constructive-benchmark format: the queries the Construction Score is measured on.

The paper's benchmark (383 queries, 3 risk levels, 32 categories, 257 user roles) is not released; its
published record fields are Profile, Task, Category, Query and a risk level. This JSONL format carries
the same fields, one object per line:

    {"id": "cb-001", "query": "...", "risk_level": "R1", "category": "Mental Health",
     "persona": "exhausted student", "task": "cope with distress", "language": "en",
     "reference_responses": ["...", "..."]}            # optional, at most five

The project's seed set is one instance of the format (its held-out split is what `eval=quick` scores).
A bad line fails with `<file>:<line>: field '<name>': ...`, before any model is loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from oyster_exp.core.errors import DataError
from oyster_exp.data.jsonl_files import jsonl_objects
from oyster_exp.data.taxonomy import Taxonomy, default_taxonomy

REQUIRED = ("id", "query", "risk_level", "category", "persona", "task", "language")
OPTIONAL = ("reference_responses",)
LEVELS = ("R0", "R1", "R2")
LANGUAGES = ("en", "cn")
MAX_REFERENCES = 5


class ConstructiveItem(BaseModel):
    id: str = Field(min_length=1)
    query: str = Field(min_length=1)
    risk_level: str
    category: str                       # canonical EN name of the taxonomy ("No Risk" for R0)
    persona: str = ""
    task: str = ""
    language: str = "en"
    reference_responses: list[str] = Field(default_factory=list)


def _check(row: dict[str, Any], where: str, tax: Taxonomy) -> ConstructiveItem:
    def fail(name: str, msg: str) -> DataError:
        return DataError(f"{where}: field {name!r}: {msg}")

    for name in REQUIRED:
        if name not in row:
            raise fail(name, "missing")
    unknown = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise fail(unknown[0], f"unknown field (allowed: {', '.join(REQUIRED + OPTIONAL)})")
    for name in REQUIRED:
        if not isinstance(row[name], str):
            raise fail(name, f"expected a string, got {type(row[name]).__name__}")
    for name in ("id", "query"):
        if not row[name].strip():
            raise fail(name, "empty")
    if row["risk_level"] not in LEVELS:
        raise fail("risk_level", f"must be one of {', '.join(LEVELS)}, got {row['risk_level']!r}")
    if row["language"] not in LANGUAGES:
        raise fail("language", f"must be one of {', '.join(LANGUAGES)}, got {row['language']!r}")
    try:
        category = tax.get_strict(row["category"]).name_en
    except ValueError as e:
        raise fail("category", str(e)) from None
    refs = row.get("reference_responses", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.strip() for r in refs):
        raise fail("reference_responses", "expected a list of non-empty strings")
    if len(refs) > MAX_REFERENCES:
        raise fail("reference_responses", f"at most {MAX_REFERENCES} responses, got {len(refs)}")
    return ConstructiveItem(id=row["id"].strip(), query=row["query"], risk_level=row["risk_level"],
                            category=category, persona=row["persona"], task=row["task"], language=row["language"],
                            reference_responses=refs)


def load_constructive(path: Path | str, taxonomy: Taxonomy | None = None, limit: int | None = None
                      ) -> list[ConstructiveItem]:
    """Items of a constructive-benchmark JSONL, in file order; `limit` keeps the first N."""
    path = Path(path)
    tax = taxonomy or default_taxonomy()
    if not path.is_file():
        raise DataError(f"{path}: constructive-benchmark file not found")
    items: list[ConstructiveItem] = []
    seen: dict[str, int] = {}
    for n, row in jsonl_objects(path):
        if limit is not None and len(items) >= limit:
            break
        item = _check(row, f"{path}:{n}", tax)
        if item.id in seen:
            raise DataError(f"{path}:{n}: field 'id': {item.id!r} is a duplicate of line {seen[item.id]}")
        seen[item.id] = n
        items.append(item)
    if not items:
        raise DataError(f"{path}: no queries (the file is empty)")
    return items


def from_query_records(records: list[Any]) -> list[ConstructiveItem]:
    """The held-out split of the run's query set as constructive-benchmark items (labels may be absent)."""
    return [ConstructiveItem(id=q.id, query=q.query, risk_level=q.risk_level or "", category=q.category or "",
                             persona=q.persona, task=q.task, language=q.language)
            for q in records if q.split == "heldout"]
