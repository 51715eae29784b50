"""Read an offline W&B run back: the `.wandb` file is a LevelDB-style log of protobuf records.

wandb 0.31 writes no `wandb-summary.json` offline and ships no Python reader, so the tests parse
the log (header `:W&B` + magic + version, then 32 KiB blocks of crc/length/type-framed chunks).
"""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    pos, chunks, buf = HEADER, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            chunks.append(buf + chunk)
    return [pb.Record.FromString(c) for c in chunks]


def summary(run_file: Path) -> dict[str, Any]:
    """Top-level summary keys (last value wins), as the W&B UI would show them."""
    out: dict[str, Any] = {}
    for r in records(run_file):
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                if item.key:
                    out[item.key] = json.loads(item.value_json)
    return out


def run_file(root: Path, timeout_s: float = 30.0) -> Path:
    """The single offline run's `.wandb` file under root, once wandb-core has finished writing it."""
    deadline = time.time() + timeout_s
    while True:
        files = sorted(root.rglob("run-*.wandb"))
        if files:
            size = files[-1].stat().st_size
            time.sleep(0.5)
            if files[-1].stat().st_size == size and size > 7:
                return files[-1]
        if time.time() > deadline:
            raise AssertionError(f"no finished offline W&B run under {root}")
        time.sleep(0.2)
