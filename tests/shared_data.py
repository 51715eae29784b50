"""The shared benchmark data (`../shared/data`, or OYSTER_EXP_DATA) for tests that read it.

CI always has it, so a test that needs it fails when it is absent: a skip there would hide a broken
path. On a machine without the data, OYSTER_EXP_ALLOW_MISSING_DATA=1 turns those failures into skips.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ALLOW = "OYSTER_EXP_ALLOW_MISSING_DATA"
DATA = Path(os.environ.get("OYSTER_EXP_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def needs_shared_data(*paths: Path, what: str = "shared benchmark data") -> Callable[[Any], Any]:
    """Decorate a test that reads `paths`: it fails naming the first absent one, or skips under ALLOW=1."""
    absent = [p for p in paths if not p.exists()]
    if not absent:
        return lambda test: test
    why = f"{what} not found: {absent[0]} (set OYSTER_EXP_DATA; {ALLOW}=1 skips instead)"
    if os.environ.get(ALLOW) == "1":
        return pytest.mark.skip(reason=why)

    def fail_instead(test: Any) -> Any:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> None:
            pytest.fail(why)

        return run

    return fail_instead
