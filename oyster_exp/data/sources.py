"""Query sources as components: where the run's queries come from (`conf/data/*.yaml`).

Why objects: the queries stage and the dry run both need "the query rows this run uses" (the same
file, the same language filter, the same limit), and neither should know whether they come from the
packaged seed set or a user's file. A new source (a benchmark, a database export) is one class here
and one YAML file. The rows are validated line by line by `data.seed` (errors name file, line, field).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from oyster_exp.config.components import register_component, rng


@dataclass(frozen=True)
class QuerySource:
    """A JSONL query file and the run's view of it: languages kept, a limit, the held-out share.

    `heldout_fraction` is applied by the queries stage (a stable hash split on the id and the run's
    seed); `system_prompt` is the system message the actor gets with every query.
    """

    limit: int | None = field(default=None, metadata=rng(ge=1))          # first N queries after the filter
    heldout_fraction: float = field(default=0.25, metadata=rng(ge=0.0, le=0.9))
    languages: list[str] = field(default_factory=lambda: ["en", "cn"])
    system_prompt: str = ""

    def file(self) -> Path:
        """The JSONL file the rows are read from (hashed into the queries stage's cache key)."""
        raise NotImplementedError

    def rows(self) -> list[dict[str, Any]]:
        """The rows this run uses: every valid line, filtered to `languages`, cut to `limit`.

        Raises ValueError naming `<file>:<line>: field '<name>'` for a bad line.
        """
        from oyster_exp.data.seed import load_query_file

        keep = set(self.languages)
        rows = [r for r in load_query_file(self.file()) if r["language"] in keep]
        return rows[: int(self.limit)] if self.limit else rows


@dataclass(frozen=True)
class SeedQueries(QuerySource):
    """The project's embedded seed queries (`oyster_exp/assets/seed_queries.jsonl`): R0/R1/R2, EN + CN."""

    limit: int | None = field(default=12, metadata=rng(ge=1))
    heldout_fraction: float = field(default=0.34, metadata=rng(ge=0.0, le=0.9))

    def file(self) -> Path:
        from oyster_exp.data.seed import seed_path

        return seed_path()


@dataclass(frozen=True)
class FileQueries(QuerySource):
    """A user's JSONL (id and query required; language, risk_level, category, persona, task optional)."""

    path: str = MISSING

    def file(self) -> Path:
        return Path(str(self.path)).expanduser()


register_component("data", "seed", SeedQueries)
register_component("data", "file", FileQueries)
