"""Artifacts on disk: the append-only JSONL journal, the content-addressed stage cache, hashing.

A stage writes its records into the journal of its cache entry
(`<cache>/<stage>/<key>/records.jsonl`): a killed run leaves a valid prefix there, and the same
command computes the same key, so the rerun resumes from that prefix. Once the stage completes, a
`COMPLETE` marker seals the entry and the records are copied to the run's `artifacts/<stage>.jsonl`.
A stage that ended with transiently failed records gets a `PARTIAL` marker instead (with the counts):
the entry serves as input, but the next run of that stage drops exactly those records from the journal
and redoes them (`pipeline.runner`); `order.json` keeps the first run's record order meanwhile.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)


PARTIAL = "PARTIAL"


class JournalError(RuntimeError):
    pass


class Journal(Generic[R]):
    """Append-only JSONL of one record type, safe against `kill -9`.

    Each record is one line, flushed and fsynced before `append` returns. On open, a torn last
    line (the process died mid-write) is cut off; a corrupt line elsewhere is an error naming the
    file and line, because it means something other than a crash changed the file.
    """

    def __init__(self, path: Path, record_type: type[R]):
        self.path = path
        self.record_type = record_type
        self._records: dict[str, R] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held until close()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good_bytes = 0
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        for lineno, raw in enumerate(lines, start=1):
            is_last = lineno == len(lines)
            if not raw.strip():
                if not is_last:
                    good_bytes += len(raw) + 1
                continue
            try:
                rec = self.record_type.model_validate_json(raw)
            except (ValidationError, ValueError) as e:
                if is_last or (lineno == len(lines) - 1 and not lines[-1]):
                    # torn tail from a crash mid-write: drop it
                    log.warning("%s:%d: dropping a partial record left by an interrupted run", self.path, lineno)
                    break
                raise JournalError(f"{self.path}:{lineno}: corrupt record ({str(e).splitlines()[0]})") from e
            if is_last:
                # a complete JSON object without its newline: keep it, restore the newline
                good_bytes += len(raw)
                self._records[rec.id] = rec  # type: ignore[attr-defined]
                with open(self.path, "ab") as f:
                    f.write(b"\n")
                good_bytes += 1
                continue
            if rec.id in self._records:  # type: ignore[attr-defined]
                raise JournalError(f"{self.path}:{lineno}: duplicate record id {rec.id!r}")  # type: ignore[attr-defined]
            self._records[rec.id] = rec  # type: ignore[attr-defined]
            good_bytes += len(raw) + 1
        if good_bytes < self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, record_id: str) -> R | None:
        return self._records.get(record_id)

    def records(self) -> list[R]:
        return list(self._records.values())

    def append(self, record: R) -> None:
        rid = record.id  # type: ignore[attr-defined]
        if rid in self._records:
            raise JournalError(f"{self.path}: record {rid!r} already written")
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._records[rid] = record

    def close(self) -> None:
        self._fh.close()


def read_records(path: Path, record_type: type[R]) -> list[R]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append(record_type.model_validate_json(line))
                except ValidationError as e:
                    raise JournalError(f"{path}:{lineno}: {str(e).splitlines()[0]}") from e
    return out


def write_records(path: Path, records: Iterable[BaseModel], durable: bool = False) -> None:
    """Replace `path` atomically; `durable` fsyncs first (a journal rewritten in place must survive a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r.model_dump_json() + "\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


class CacheEntry:
    """One stage result: `records.jsonl`, optional files (a model), `meta.json`, `COMPLETE`."""

    def __init__(self, root: Path, stage: str, key: str):
        self.dir = root / stage / key[:20]
        self.key = key

    @property
    def records_path(self) -> Path:
        return self.dir / "records.jsonl"

    @property
    def complete(self) -> bool:
        return (self.dir / "COMPLETE").exists()

    @property
    def partial(self) -> bool:
        """Finished, but with transiently failed records that the next run of the stage redoes."""
        return (self.dir / PARTIAL).exists()

    @property
    def order_path(self) -> Path:
        return self.dir / "order.json"

    def _mark(self, name: str, summary: dict[str, Any]) -> None:
        tmp = self.dir / f"{name}.tmp"
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
        tmp.replace(self.dir / name)

    def mark_complete(self, summary: dict[str, Any]) -> None:
        self._mark("COMPLETE", summary)
        self.unmark_partial()
        self.order_path.unlink(missing_ok=True)

    def mark_partial(self, summary: dict[str, Any]) -> None:
        self._mark(PARTIAL, summary)

    def unmark_partial(self) -> None:
        """Back to unfinished (a retry is under way): a run killed meanwhile resumes instead of reusing it."""
        (self.dir / PARTIAL).unlink(missing_ok=True)

    def reset(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer per entry: a second process running the same stage waits, then reuses."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Hard-link files (no extra disk for a model) and fall back to copying across filesystems."""
    if dst.exists():
        shutil.rmtree(dst)
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
