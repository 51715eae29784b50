"""HarmBench text behaviours (CSV): loader producing ready-to-send prompts.

Columns: Behavior, FunctionalCategory, SemanticCategory, Tags, ContextString, BehaviorID. A "contextual"
behaviour is only meaningful with its context (e.g. a personal profile the request refers to), so its
prompt is built the way HarmBench does: context, a "---" separator, then the behaviour (for any row
that has a context string; a contextual row without one is an error). Context strings
span several lines, so errors report the physical line where the offending record starts.
"""
from __future__ import annotations

import csv
from pathlib import Path

from pydantic import BaseModel, Field

REQUIRED_COLUMNS: tuple[str, ...] = ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString",
                                     "BehaviorID")
OPTIONAL_COLUMNS: tuple[str, ...] = ("Tags",)
CONTEXT_SEPARATOR = "\n\n---\n\n"


class HarmBenchItem(BaseModel):
    id: str = Field(min_length=1)             # BehaviorID
    behavior: str = Field(min_length=1)
    functional_category: str                  # standard | contextual | copyright | multimodal
    semantic_category: str
    tags: list[str] = Field(default_factory=list)
    context: str = ""
    prompt: str = Field(min_length=1)         # what the target model receives


def _err(path: Path, line: int, msg: str, column: str | None = None) -> ValueError:
    where = f"{path} line {line}" + (f", column {column!r}" if column else "")
    return ValueError(f"{where}: {msg}")


def load_harmbench(path: Path, limit: int | None = None) -> list[HarmBenchItem]:
    """All behaviours of a HarmBench CSV in file order; `limit` keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: HarmBench CSV not found")
    items: list[HarmBenchItem] = []
    seen: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for col in REQUIRED_COLUMNS:
            if col not in header:
                raise _err(path, 1, f"required column missing (header has {header})", col)
        pos = {name: header.index(name) for name in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if name in header}
        start = reader.line_num + 1
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if limit is not None and len(items) >= limit:
                    break
                if not any(c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise _err(path, line, f"expected {len(header)} fields, found {len(row)}")
                get = {name: row[i].strip() for name, i in pos.items()}
                for col in ("Behavior", "BehaviorID", "FunctionalCategory"):
                    if not get[col]:
                        raise _err(path, line, "empty value", col)
                bid = get["BehaviorID"]
                if bid in seen:
                    raise _err(path, line, f"duplicate BehaviorID {bid!r} (first on line {seen[bid]})", "BehaviorID")
                seen[bid] = line
                context = get["ContextString"]
                contextual = get["FunctionalCategory"] == "contextual"
                if contextual and not context:
                    raise _err(path, line, "contextual behaviour without a context string", "ContextString")
                behavior = get["Behavior"]
                items.append(HarmBenchItem(
                    id=bid, behavior=behavior, functional_category=get["FunctionalCategory"],
                    semantic_category=get["SemanticCategory"],
                    tags=[t.strip() for t in get.get("Tags", "").split(",") if t.strip()], context=context,
                    prompt=context + CONTEXT_SEPARATOR + behavior if context else behavior))
        except csv.Error as e:
            raise _err(path, reader.line_num, f"malformed CSV ({e})") from None
    return items
