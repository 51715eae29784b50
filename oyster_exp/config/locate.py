"""Where the configs live: inside the installed wheel, or in the checkout's top-level `conf/`.

A checkout keeps `conf/` (and `sweeps/`, linked as `conf/sweep`) at the repository's top level, the
layout users edit; the wheel's build step copies them into the package as `oyster_exp/conf`, so an
installed `oyster-exp` runs from any directory.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def packaged_conf_dir() -> Path:
    return PACKAGE_DIR / "conf"


def conf_dir() -> Path:
    """The packaged configs when installed from a wheel, else the checkout's `conf/`."""
    packaged = packaged_conf_dir()
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / "conf"


def project_root() -> str:
    """The checkout's root when running from a checkout; the launch directory for an installed wheel
    (its runs go to `./outputs` unless `OYSTER_EXP_OUTPUTS` says otherwise)."""
    if packaged_conf_dir().is_dir():
        return str(Path.cwd())
    return str(PACKAGE_DIR.parent)
