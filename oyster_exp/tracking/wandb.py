"""Weights & Biases: offline without a key, and a resumed run that continues the killed run's id.

The Lightning `WandbLogger` does the logging; this module holds what it does not: where the run id of
a train stage is kept (beside its checkpoint), and how a resumed process gets that id back from a
wandb-core service that still holds it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

WANDB_ID_FILE = "wandb_run.json"


def wandb_offline() -> bool:
    """Offline unless a key is present (W&B's own WANDB_MODE still wins inside wandb)."""
    return not os.environ.get("WANDB_API_KEY")


def wandb_loggers(loggers: list[Any]) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def stored_wandb_id(ckpt_dir: Path) -> str | None:
    path = Path(ckpt_dir) / WANDB_ID_FILE
    if not path.exists():
        return None
    return str(json.loads(path.read_text())["id"])


def point_wandb_at(loggers: list[Any], run_id: str) -> bool:
    """Make not-yet-started W&B loggers continue run `run_id` (`resume="allow"`); False if one already runs."""
    ok = True
    for lg in wandb_loggers(loggers):
        if lg._experiment is not None:
            ok = ok and lg._experiment.id == run_id
            continue
        lg._wandb_init.update(id=run_id, resume="allow")
        lg._id = run_id
    return ok


def start_resumed_wandb(loggers: list[Any], attempts: int = 60, wait_s: float = 1.0) -> None:
    """Start W&B loggers that continue a killed run, waiting while the run id is still held.

    Two things can still hold the killed run's id ("run ID ... is in use"):
    - a wandb-core service inherited from a parent process (wandb exports `WANDB_SERVICE` to children, so
      a sweep driver or test runner that used W&B shares its service with every job it starts). That
      service keeps the dead client's stream open indefinitely, so waiting never helps: leave it and
      start a private service for this process.
    - the dead process's own service, for a few seconds until it notices its parent is gone: wait.
    Failing instead would lose the whole train stage of a job that was only being resumed.
    """
    import time

    for lg in wandb_loggers(loggers):
        for attempt in range(attempts):
            try:
                lg.experiment  # noqa: B018 - starts the run
                break
            except Exception as e:
                if "in use" not in str(e) or attempt == attempts - 1:
                    raise
                lg._experiment = None
                if not leave_inherited_wandb_service():
                    time.sleep(wait_s)


def leave_inherited_wandb_service() -> bool:
    """Disconnect from a wandb-core service this process did not start; True if there was one.

    The next `wandb.init` then starts a service owned by this process. A no-op for a service this
    process started itself (its token is in the environment too, but nothing else can hold our runs).
    """
    import wandb
    from wandb.sdk import wandb_setup

    token = os.environ.get("WANDB_SERVICE")
    if token is None:
        return False
    own = wandb_setup._singleton
    if own is not None and own._connection is not None and own._connection.owns_service:
        return False
    os.environ.pop("WANDB_SERVICE", None)
    wandb.teardown()
    return True
