"""A sweep's ledger and arm labels: written by each arm as it ends (`run.sweep_arm`), read by the reports.

`<sweep dir>/ledger.jsonl` has one line per arm (status completed | failed | skipped, the reason of a
failure, seconds, the objective value). An arm's label is the overrides that set it apart from the
sweep's command line, which the `SweepReport` callback stores in `command_overrides.yaml`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

LEDGER = "ledger.jsonl"
COMMAND_OVERRIDES = "command_overrides.yaml"   # the sweep's command line, written by the SweepReport callback


def arm_label(overrides: list[str], sweep: Path | None) -> str:
    """The overrides that make this arm differ from the sweep's command line (e.g. "objective.beta=0.1")."""
    common: set[str] = set()
    if sweep is not None and (sweep / COMMAND_OVERRIDES).exists():
        common = set(OmegaConf.load(sweep / COMMAND_OVERRIDES))
    elif sweep is not None and (sweep / "multirun.yaml").exists():   # sweeps from before the callback
        mr = OmegaConf.load(sweep / "multirun.yaml")
        common = set(OmegaConf.select(mr, "hydra.overrides.task", default=[]) or [])
    common_norm = {_normalise(o) for o in common}
    own = [o for o in overrides if _normalise(o) not in common_norm]
    return " ".join(own) if own else " ".join(overrides) or "default"


def _normalise(override: str) -> str:
    """`print_config=false` and the sweeper's re-rendered `print_config=False` are the same override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (o,) = OverridesParser.create().parse_overrides([override])
        if o.is_sweep_override():
            return override
        return f"{o.get_key_element()}={o.get_value_element_as_str()}"
    except Exception:
        return override


def append_ledger(sweep: Path, entry: dict[str, Any]) -> None:
    """One short line per arm with O_APPEND: parallel jobs (joblib, Slurm) never interleave lines."""
    sweep.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, default=str) + "\n").encode()
    fd = os.open(sweep / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_ledger(sweep: Path) -> list[dict[str, Any]]:
    path = sweep / LEDGER
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
