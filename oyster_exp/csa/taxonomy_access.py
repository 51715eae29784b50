"""The taxonomy a run uses: the project's default, or the user's workbook (`risk.taxonomy_path`)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from oyster_exp.csa.taxonomy import Taxonomy, default_taxonomy


@lru_cache(maxsize=8)
def _from_xlsx(path: str) -> Taxonomy:
    return Taxonomy.from_xlsx(Path(path))


def taxonomy_for(cfg: Any) -> Taxonomy:
    path = cfg.risk.get("taxonomy_path")
    return _from_xlsx(str(Path(str(path)).expanduser())) if path else default_taxonomy()
