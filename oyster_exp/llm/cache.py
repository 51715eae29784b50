"""Persistent LLM call cache (sqlite, WAL): a rerun or a resumed run makes no call twice.

Keyed by `ChatRequest.cache_key(backend, model_id)`: messages, sampling parameters, schema and
seed. WAL mode plus a busy timeout lets several processes of a parallel sweep share one file.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from oyster_exp.llm.base import ChatResponse


class CallCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, response TEXT NOT NULL, created REAL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> ChatResponse | None:
        row = self._conn().execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone()
        return ChatResponse.model_validate_json(row[0]) if row else None

    def put(self, key: str, response: ChatResponse) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO calls (key, response, created) VALUES (?, ?, ?)",
            (key, response.model_dump_json(), time.time()),
        )

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM calls").fetchone()[0]
