"""Dataset loader for lm-eval task YAMLs whose JSONL sits next to them (no hub, no absolute paths).

lm-eval resolves `!function local_json.load` next to the task YAML and calls it with the task's
`dataset_kwargs` (plus metadata, ignored here). `datasets.load_dataset("json", data_files=...)`
resolves relative files against the working directory, so a packaged task could only be run from
one place; resolving them against this folder makes the YAML + JSONL pair relocatable. Copy this
file beside your own task YAMLs to use the same pattern.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _resolve(files: Any) -> Any:
    if isinstance(files, dict):
        return {split: _resolve(f) for split, f in files.items()}
    if isinstance(files, (list, tuple)):
        return [_resolve(f) for f in files]
    p = Path(str(files)).expanduser()
    p = p if p.is_absolute() else HERE / p
    if not p.is_file():
        raise FileNotFoundError(f"lm-eval task data not found: {p}")
    return str(p)


def load(data_files: Any, **_: Any) -> Any:
    """A DatasetDict from JSON/JSONL files named relative to this folder."""
    import datasets

    return datasets.load_dataset("json", data_files=_resolve(data_files))
