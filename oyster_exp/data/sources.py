"""Query sources as components: where the run's queries come from (`conf/data/*.yaml`).

Why objects: the queries stage and the dry run both need "the query rows this run uses" (the same
file, the same language filter, the same limit), and neither should know whether they come from the
packaged seed set or a user's file. A new source (a benchmark, a database export) is one class here
and one YAML file. The rows are validated line by line by `data.seed` (errors name file, line, field).

Sources: `seed` (the packaged set), `file` (a user's JSONL in the seed format), `dataset` (any table
`data.tabular` reads, with a column mapping: a public red-teaming set from config alone) and `pairs`
(preference pairs made elsewhere, in TRL's formats). A source whose `provides_pairs` is true also
hands the pairs stage its pairs, so the data-engine stages drop out of the run's graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING

from oyster_exp.config.components import register_component, rng
from oyster_exp.core.errors import DataError, StageError
from oyster_exp.core.hashing import path_hash


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
    # true: `pairs()` gives the run's preference pairs, and the pairs stage reads them instead of the engine's
    provides_pairs: ClassVar[bool] = False

    def file(self) -> Path:
        """The JSONL file the rows are read from (hashed into the queries stage's cache key)."""
        raise NotImplementedError

    def input_hash(self) -> str:
        """Content hash of what the rows are read from (the queries stage's cache key); StageError when absent."""
        path = self.file()
        if not path.exists():
            raise StageError(f"data.path: {path} not found")
        return path_hash(path)

    def pairs(self) -> list[dict[str, Any]]:
        """The preference pairs of a source that `provides_pairs` (see `data.preferences.preference_row`)."""
        raise NotImplementedError(f"{type(self).__qualname__} provides queries, not preference pairs")

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


def _check_choices(node: Any, key: str, **choices: tuple[str, ...]) -> None:
    from oyster_exp.config.errors import ConfigError

    for knob, allowed in choices.items():
        value = node.get(knob)
        if value not in allowed:
            raise ConfigError(f"{key}.{knob}", f"must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class QueryFields:
    """Which column holds each query field (None: the table has no such column)."""

    query: str = "query"
    id: str | None = None
    language: str | None = None
    category: str | None = None
    risk_level: str | None = None
    persona: str | None = None


class _TableFile:
    """A source read through `data.tabular` (a file of any table format, a saved dataset, a cached hub set):
    its `path`, `split` and `config_name` name the table, whose content hash is the stage's extra input."""

    def _ref(self) -> Any:
        from oyster_exp.data.tabular import TableRef

        return TableRef(str(self.path), str(self.split), self.config_name)

    def file(self) -> Path:
        return Path(str(self.path)).expanduser()

    def input_hash(self) -> str:
        from oyster_exp.data.tabular import table_hash

        return table_hash(self._ref())


@dataclass(frozen=True)
class DatasetQueries(_TableFile, QuerySource):
    """Queries from any table `data.tabular` reads (CSV, JSONL, Parquet, a saved dataset, a cached hub set).

    Public red-teaming sets name their columns their own way (`forbidden_prompt`, `goal`, `Behavior`), so
    `fields` maps ours onto theirs; each row is then checked like a user JSONL line (language, risk level,
    a category the taxonomy knows). A set's own category names rarely match the taxonomy's:
    `unknown_category: none` leaves those unlabelled (the assessor classifies every query anyway).
    """

    path: str = MISSING
    split: str = "train"
    config_name: str | None = None
    fields: QueryFields = field(default_factory=QueryFields)
    language: str = "en"
    unknown_category: str = "error"

    @staticmethod
    def check_config(node: Any, key: str) -> None:
        """The choices a string knob can take (run by `config.structured.validate_config`)."""
        _check_choices(node, key, unknown_category=("error", "none"), language=("en", "cn"))

    def rows(self) -> list[dict[str, Any]]:
        from oyster_exp.data.seed import check_query_row
        from oyster_exp.data.tabular import read_table
        from oyster_exp.data.taxonomy import default_taxonomy

        tax = default_taxonomy()
        mapping = {k: v for k, v in vars(self.fields).items() if v}
        stem = Path(str(self.path)).stem or "row"
        keep, out, seen = set(self.languages), [], {}
        for i, (where, raw) in enumerate(read_table(self._ref()), 1):
            for ours, col in mapping.items():
                if col not in raw:
                    raise DataError(f"{where}: field {col!r}: no such column (data.fields.{ours}; the row has "
                                    f"{sorted(raw)})")
            row = {ours: raw[col] for ours, col in mapping.items()}
            row.setdefault("id", f"{stem}-{i:05d}")
            if row.get("language") in (None, ""):
                row["language"] = self.language
            if self.unknown_category == "none" and row.get("category") not in (None, "") \
                    and str(row["category"]) not in tax:
                row["category"] = None
            try:
                checked = check_query_row(row, where, tax)
            except DataError as e:                      # name the user's column, not our field
                msg = str(e)
                for ours, col in mapping.items():
                    msg = msg.replace(f"field {ours!r}", f"field {col!r}")
                raise DataError(msg) from None
            if checked["id"] in seen:
                raise DataError(f"{where}: field {mapping.get('id', 'id')!r}: {checked['id']!r} is a duplicate of "
                                f"{seen[checked['id']]}")
            seen[checked["id"]] = where
            if checked["language"] in keep:
                out.append(checked)
        if not seen:
            raise DataError(f"{self.path}: no rows")
        return out[: int(self.limit)] if self.limit else out


@dataclass(frozen=True)
class PreferencePairs(_TableFile, QuerySource):
    """Preference pairs made elsewhere (TRL standard, conversational or implicit-prompt rows; JSONL, Parquet,
    CSV, a saved dataset or a cached hub set): the run trains, evaluates and reports on them, no engine.

    Its queries are the pairs' prompts (last user turn), one per `query_id` (else per pair), so the
    held-out split and the construction benchmark work as for engine-made pairs; pairs of a held-out
    query are kept out of training. `limit` keeps the first N pairs.
    """

    provides_pairs: ClassVar[bool] = True
    path: str = MISSING
    split: str = "train"
    config_name: str | None = None
    language: str = "en"
    heldout_fraction: float = field(default=0.0, metadata=rng(ge=0.0, le=0.9))

    @staticmethod
    def check_config(node: Any, key: str) -> None:
        """The choices a string knob can take (run by `config.structured.validate_config`)."""
        _check_choices(node, key, language=("en", "cn"))

    def pairs(self) -> list[dict[str, Any]]:
        from oyster_exp.data.preferences import preference_rows
        from oyster_exp.data.tabular import read_table

        rows = preference_rows(read_table(self._ref()), str(self.system_prompt or ""), str(self.language))
        keep = set(self.languages)
        rows = [r for r in rows if r["language"] in keep]
        return rows[: int(self.limit)] if self.limit else rows

    def rows(self) -> list[dict[str, Any]]:
        from oyster_exp.data.preferences import query_of

        out: dict[str, dict[str, Any]] = {}
        for p in self.pairs():
            qid = p["query_id"] or p["id"]
            out.setdefault(qid, {"id": qid, "query": query_of(p), "language": p["language"], "risk_level": None,
                                 "category": None, "persona": "", "task": ""})
        return list(out.values())


register_component("data", "seed", SeedQueries)
register_component("data", "file", FileQueries)
register_component("data", "dataset", DatasetQueries)
register_component("data", "pairs", PreferencePairs)
