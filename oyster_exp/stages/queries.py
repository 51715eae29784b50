"""queries: load the query set, filter languages, split train / held-out by a stable hash."""
from __future__ import annotations

from typing import Any

from hydra.utils import instantiate

from oyster_exp.core.errors import DataError, StageError
from oyster_exp.csa.records import QueryRecord
from oyster_exp.data.seed import SEED_ASSET, heldout_split
from oyster_exp.data.sources import QuerySource
from oyster_exp.data.taxonomy import TAXONOMY_ASSET
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage


def query_source(ctx: RunContext) -> QuerySource:
    """The `data` component (seed set, a user file, ...): the stage asks it for rows, whatever it is."""
    return instantiate(ctx.cfg.data)


class QueriesStage(Stage):
    name = "queries"
    record_type = QueryRecord
    config_keys = ("data", "seed")
    runs_when_needed = True                 # no LLM call: runs when a selected stage needs it
    assets = (SEED_ASSET, TAXONOMY_ASSET)   # the seed set, checked against the taxonomy's category names

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        """The content hash of whatever the source reads (a file, a saved dataset's folder, a cached hub set)."""
        try:
            return {"queries_file": query_source(ctx).input_hash()}
        except DataError as e:
            raise StageError(f"data.path: {e}") from None

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        source = query_source(ctx)
        try:
            rows = source.rows()
        except ValueError as e:  # names the file, line and field: one line on stderr, exit 2 (run.cli)
            raise DataError(f"data: {e}") from None
        for r in rows:
            if r["id"] in journal:
                continue
            journal.append(QueryRecord(
                id=r["id"], query=r["query"], language=r["language"], risk_level=r.get("risk_level"),
                category=r.get("category"), persona=r.get("persona", ""), task=r.get("task", ""),
                split=heldout_split(r["id"], int(ctx.cfg.seed), float(source.heldout_fraction)),  # type: ignore[arg-type]
            ))
