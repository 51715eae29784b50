"""The embedded seed queries and user query files (JSONL), validated line by line."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from oyster_exp.csa.taxonomy import NO_RISK, default_taxonomy

REQUIRED = ("id", "query", "language", "risk_level", "category", "persona", "task")
LANGUAGES = ("en", "cn")
LEVELS = ("R0", "R1", "R2")


def seed_path() -> Path:
    return Path(str(resources.files("oyster_exp") / "assets" / "seed_queries.jsonl"))


def load_query_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a query JSONL; a bad line raises ValueError naming file, line and field."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    tax = default_taxonomy()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object")
            for key in ("id", "query"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(f"{path}:{n}: field {key!r} is missing or empty")
            row.setdefault("language", "en")
            if row["language"] not in LANGUAGES:
                raise ValueError(f"{path}:{n}: field 'language' must be one of {LANGUAGES}, got {row['language']!r}")
            if row.get("risk_level") is not None and row["risk_level"] not in LEVELS:
                raise ValueError(f"{path}:{n}: field 'risk_level' must be one of {LEVELS}, got {row['risk_level']!r}")
            cat = row.get("category")
            if cat and cat != NO_RISK and tax.get(cat).name_en == "Unknown Risk" and cat != "Unknown Risk":
                raise ValueError(f"{path}:{n}: field 'category' {cat!r} is not a known risk category")
            if row["id"] in seen:
                raise ValueError(f"{path}:{n}: field 'id' {row['id']!r} is a duplicate")
            seen.add(row["id"])
            row.setdefault("persona", "")
            row.setdefault("task", "")
            rows.append(row)
    return rows


def load_seed_queries() -> list[dict[str, Any]]:
    return load_query_file(seed_path())
