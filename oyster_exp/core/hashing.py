"""Content hashes: the stage cache, the call cache and the sweep ledger key on these."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def stable_hash(obj: Any) -> str:
    """sha256 of a canonical JSON encoding (sorted keys, no whitespace)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def path_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order): a saved
    `datasets` folder is one input whose every file decides what is read from it."""
    if path.is_file():
        return file_hash(path)
    return stable_hash({str(p.relative_to(path)): file_hash(p) for p in sorted(path.rglob("*")) if p.is_file()})
