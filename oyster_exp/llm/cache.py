"""Persistent LLM call cache (sqlite, WAL): a rerun or a resumed run makes no call twice.

Keyed by `ChatRequest.cache_key(backend, model_id)`: messages, sampling parameters, schema and
seed. Several processes (a joblib sweep, parallel runs) may share one file:
- one connection per (process, thread), opened lazily, so a forked child never reuses its
  parent's connection;
- WAL mode plus a busy timeout, and a bounded retry on SQLITE_BUSY/"database is locked" for the
  cases sqlite does not send through the busy handler (switching the journal mode, lock upgrades);
- first writer wins (INSERT OR IGNORE) and `put` returns the stored value, so every process that
  asked the same request goes on with the identical reply, even when sampling differed.
"""
from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from oyster_exp.llm.base import ChatResponse

T = TypeVar("T")
BUSY_TIMEOUT_S = 60.0


def _busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class CallCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._retry(lambda c: c.execute(
            "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL)"))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            # after a fork the inherited connection belongs to the parent: never touch it, open ours
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._local.conn, self._local.pid = conn, os.getpid()
            self._retry(lambda c: c.execute("PRAGMA journal_mode=WAL"), conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _retry(self, op: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection | None = None) -> T:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                return op(conn or self._conn())
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.5)

    def get(self, key: str) -> ChatResponse | None:
        row = self._retry(lambda c: c.execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone())
        return ChatResponse.model_validate_json(row[0]) if row else None

    def put(self, key: str, response: ChatResponse) -> ChatResponse:
        """Store unless another writer was first; returns the stored reply (the first writer's)."""
        blob = response.model_dump_json()

        def op(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO calls (key, response, created) VALUES (?, ?, ?)",
                      (key, blob, time.time()))
            row = c.execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone()
            return row[0]

        stored = self._retry(op)
        return response if stored == blob else ChatResponse.model_validate_json(stored)

    def discard(self, keys: list[str]) -> None:
        """Forget these replies (they never became an answer), so the next run asks for them again."""
        if keys:
            self._retry(lambda c: c.executemany("DELETE FROM calls WHERE key = ?", [(k,) for k in keys]))

    def __len__(self) -> int:
        return self._retry(lambda c: c.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
