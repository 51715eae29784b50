"""Rows of any table a researcher already has: CSV, JSONL, Parquet, a saved `datasets` folder, a cached hub set.

Public safety sets ship in all of these shapes, and the query and preference sources should not care
which: `read_table` returns each row with the place it came from (`<file>:<line>` for CSV and JSONL,
`<file> row <n>` for Parquet and `datasets`), so a bad value is reported where the user can find it.
CSV and JSONL are read here (line numbers survive); Parquet through pyarrow; a saved dataset with
`datasets.load_from_disk`; anything else is taken as a hub dataset name and loaded from the local
`datasets` cache only, with the hub switched off for the call (nothing is ever downloaded).
`table_hash` is the content hash the stage cache keys on.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oyster_exp.core.errors import DataError
from oyster_exp.core.hashing import file_hash, path_hash, stable_hash
from oyster_exp.data.jsonl_files import jsonl_objects

FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class TableRef:
    """Where a table lives: a local file or folder, or a hub dataset name (with its config and split)."""

    path: str
    split: str = "train"              # the split of a DatasetDict folder or a hub dataset
    config_name: str | None = None    # a hub dataset's configuration (None: its default)

    @property
    def local(self) -> Path:
        return Path(self.path).expanduser()

    @property
    def is_local(self) -> bool:
        """A path that exists, or one written like a path (a suffix we read, a folder separator at its start)."""
        p = self.local
        return p.exists() or p.suffix in FILE_SUFFIXES or self.path.startswith(("/", ".", "~"))


def read_table(ref: TableRef) -> list[tuple[str, dict[str, Any]]]:
    """(where, row) for every row, in file order; a `DataError` names the file when it cannot be read."""
    if not ref.is_local:
        return list(_hub_rows(ref))
    path = ref.local
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        rows = _load_from_disk(path, ref.split).to_list()      # one Arrow->Python conversion, not one per row
        return [(f"{path} row {i}", row) for i, row in enumerate(rows, 1)]
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return list(_csv_rows(path))
    if suffix in (".jsonl", ".json"):
        if suffix == ".json" and path.read_text(encoding="utf-8-sig").lstrip().startswith("["):
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
            return [(f"{path} row {i}", _object(path, i, r)) for i, r in enumerate(rows, 1)]
        return [(f"{path}:{n}", row) for n, row in jsonl_objects(path)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        return [(f"{path} row {i}", row) for i, row in enumerate(table.to_pylist(), 1)]
    raise DataError(f"{path}: unknown table format {suffix!r} (read: {', '.join(FILE_SUFFIXES)} files, a folder "
                    f"written by datasets' save_to_disk, or a hub dataset name in the local cache)")


def table_hash(ref: TableRef) -> str:
    """Content hash of the table: the file, the folder's files, or a cached hub dataset's Arrow files."""
    if ref.is_local:
        path = ref.local
        if not path.exists():
            raise DataError(f"{path}: file not found")
        return stable_hash({"content": path_hash(path), "split": ref.split if path.is_dir() else None})
    ds = _load_hub(ref)
    files = sorted(str(f["filename"]) for f in ds.cache_files)
    return stable_hash({"hub": ref.path, "config": ref.config_name, "split": ref.split,
                        "files": [file_hash(Path(f)) for f in files] if files else ds._fingerprint})


def _object(path: Path, i: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{path} row {i}: expected a JSON object, got {type(row).__name__}")
    return row


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            start = 2
            for row in reader:
                where, start = f"{path}:{start}", reader.line_num + 1
                if None in row:
                    raise DataError(f"{where}: more fields than the header's {len(reader.fieldnames or [])}")
                if any((v or "").strip() for v in row.values()):
                    yield where, {k: (v if v != "" else None) for k, v in row.items()}
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None


def _load_from_disk(path: Path, split: str) -> Any:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: not a folder written by datasets' save_to_disk ({e})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    return ds


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """The hub switched off for one call: a dataset name resolves from the local cache or not at all."""
    import datasets.config as dcfg
    import huggingface_hub.constants as hcfg

    saved = (os.environ.get("HF_HUB_OFFLINE"), dcfg.HF_HUB_OFFLINE, hcfg.HF_HUB_OFFLINE)
    os.environ["HF_HUB_OFFLINE"] = "1"
    dcfg.HF_HUB_OFFLINE = hcfg.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]
        dcfg.HF_HUB_OFFLINE, hcfg.HF_HUB_OFFLINE = saved[1], saved[2]


def _load_hub(ref: TableRef) -> Any:
    from datasets import load_dataset

    with _hub_offline():
        try:
            return load_dataset(ref.path, ref.config_name, split=ref.split)
        except Exception as e:  # datasets raises many types for "not cached"; the message says which
            raise DataError(f"{ref.path}: not a local file or folder, and not a hub dataset in the local cache "
                            f"(nothing is downloaded; {type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _hub_rows(ref: TableRef) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, row in enumerate(_load_hub(ref).to_list(), 1):
        yield f"{ref.path}[{ref.split}] row {i}", row
