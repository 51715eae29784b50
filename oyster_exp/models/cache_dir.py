"""Where converted models and other machine-level caches live (outside the repository)."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "OYSTER_EXP_CACHE"


def cache_root() -> Path:
    """The machine-wide cache; `OYSTER_EXP_CACHE` overrides `~/.cache/oyster-exp`."""
    root = Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "oyster-exp").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
