"""queries: load the query set, filter languages, split train / held-out by a stable hash."""
from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

from oyster_exp.artifacts import CacheEntry, Journal, file_hash
from oyster_exp.pipeline import RunContext, Stage, StageError
from oyster_exp.records import QueryRecord


def _split(qid: str, seed: int, heldout_fraction: float) -> str:
    h = int(hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_fraction else "train"


def _source_path(ctx: RunContext) -> Path:
    if ctx.cfg.data.source == "file":
        return Path(str(ctx.cfg.data.path)).expanduser()
    return Path(str(resources.files("oyster_exp") / "assets" / "seed_queries.jsonl"))


class QueriesStage(Stage):
    name = "queries"
    record_type = QueryRecord
    config_keys = ("data", "seed")

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        path = _source_path(ctx)
        if not path.exists():
            raise StageError(f"data.path: {path} not found")
        return {"queries_file": file_hash(path)}

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        from oyster_exp.csa.seed import load_query_file

        data = ctx.cfg.data
        try:
            rows = load_query_file(_source_path(ctx))
        except ValueError as e:  # names the file, line and field: report it, without a traceback
            raise StageError(f"data: {e}") from None
        rows = [r for r in rows if r["language"] in set(data.languages)]
        if data.limit:
            rows = rows[: int(data.limit)]
        for r in rows:
            if r["id"] in journal:
                continue
            journal.append(QueryRecord(
                id=r["id"], query=r["query"], language=r["language"], risk_level=r.get("risk_level"),
                category=r.get("category"), persona=r.get("persona", ""), task=r.get("task", ""),
                split=_split(r["id"], int(ctx.cfg.seed), float(data.heldout_fraction)),  # type: ignore[arg-type]
            ))
