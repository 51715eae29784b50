"""Weights & Biases: offline without a key, artifacts with lineage, and a resumed run that keeps its id.

The Lightning `WandbLogger` does the logging; this module holds what it does not: the run's pairs and
exported model as W&B artifacts (`log_stage_artifact`; its knobs are on `wandb_logger.ArtifactWandbLogger`),
where the run id of a train stage is kept (beside its checkpoint), and how a resumed process gets that id back from a
wandb-core service that still holds it.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run.json"


def wandb_offline() -> bool:
    """Offline unless a key is present (W&B's own WANDB_MODE still wins inside wandb)."""
    return not os.environ.get("WANDB_API_KEY")


def wandb_loggers(loggers: list[Any]) -> list[Any]:
    from lightning.pytorch.loggers import WandbLogger

    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def artifact_name(name: str) -> str:
    """A W&B artifact name (letters, digits, `-`, `_`, `.`) from any run name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "oyster-exp"


def log_stage_artifact(loggers: list[Any], *, name: str, kind: str, paths: list[Path],
                       metadata: dict[str, Any] | None = None, used: bool = False) -> list[Any]:
    """Log `paths` (files and directories) as one W&B artifact of type `kind` into every W&B logger's run.

    `used=True` records the artifact as an input of the run too (lineage: the run trained on these
    pairs). `run.use_artifact` refuses to run offline, so offline the artifact record carries
    `use_after_commit`, the flag `use_artifact` itself sets for a new artifact, and `wandb sync` makes
    the link. Files are added as immutable (no staging copy of a model): the run directory's files are
    hard links into the stage cache, which is never rewritten. Returns the logged artifacts; a W&B error
    is logged and skipped, since a missing artifact must not fail a run whose results are already written.
    """
    import wandb

    out = []
    for lg in wandb_loggers(loggers):
        if hasattr(lg, "logs_artifact") and not lg.logs_artifact(kind):   # ArtifactWandbLogger's log_model/log_dataset
            continue
        try:
            art = wandb.Artifact(artifact_name(name), type=kind, metadata=metadata or {})
            for path in paths:
                if path.is_dir():
                    art.add_dir(str(path), name=path.name, policy="immutable")
                elif path.is_file():
                    art.add_file(str(path), name=path.name, policy="immutable")
            run = lg.experiment
            if used and run.offline:
                run._log_artifact(art, is_user_created=True, use_after_commit=True)
            elif used:
                run.use_artifact(art)
            else:
                run.log_artifact(art)
            out.append(art)
        except Exception as e:
            log.warning("W&B %s artifact %s not logged: %s: %s", kind, name, type(e).__name__, e)
    return out


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
