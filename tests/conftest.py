"""Test defaults: offline, W&B disabled, a private cache so tests never touch the user's outputs."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from oyster_exp.models.tiny import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture
def compose_cfg():
    """Compose the real config tree with overrides (no job, no run dir)."""
    from hydra import compose, initialize_config_dir

    import oyster_exp.run.cli  # noqa: F401 - registers the schema and resolvers
    from oyster_exp.run.components import register_all

    register_all()  # what the CLI does at import; explicit so the helper does not rely on that

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture(scope="session")
def single_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained 10 steps by tests/train_driver.py in this process (batch 2, one process):
    the uninterrupted reference of the resume test and the single-process side of the DDP test."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_driver

    return train_driver.run(tmp_path_factory.mktemp("single_process"))
