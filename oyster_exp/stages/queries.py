"""queries: load the query set, filter languages, split train / held-out by a stable hash."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from oyster_exp.core.errors import StageError
from oyster_exp.core.hashing import file_hash
from oyster_exp.csa.records import QueryRecord
from oyster_exp.data.seed import SEED_ASSET, heldout_split, seed_path
from oyster_exp.data.taxonomy import TAXONOMY_ASSET
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage


def _source_path(ctx: RunContext) -> Path:
    if ctx.cfg.data.source == "file":
        return Path(str(ctx.cfg.data.path)).expanduser()
    return seed_path()


class QueriesStage(Stage):
    name = "queries"
    record_type = QueryRecord
    config_keys = ("data", "seed")
    assets = (SEED_ASSET, TAXONOMY_ASSET)   # the seed set, checked against the taxonomy's category names

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        path = _source_path(ctx)
        if not path.exists():
            raise StageError(f"data.path: {path} not found")
        return {"queries_file": file_hash(path)}

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        from oyster_exp.data.seed import load_query_file

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
                split=heldout_split(r["id"], int(ctx.cfg.seed), float(data.heldout_fraction)),  # type: ignore[arg-type]
            ))
