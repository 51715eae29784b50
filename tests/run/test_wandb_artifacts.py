"""`logger.wandb.log_model` / `log_dataset` decide which results become W&B artifacts (read back offline)."""
from __future__ import annotations

from pathlib import Path

import pytest
from wandb_records import records, run_file


def test_log_model_false_keeps_the_model_out_and_the_pairs_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from oyster_exp.tracking.wandb import artifact_name, log_stage_artifact
    from oyster_exp.tracking.wandb_logger import ArtifactWandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "pairs.jsonl").write_text('{"id": "p1"}\n')
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    lg = ArtifactWandbLogger(project="oyster-exp-test", save_dir=str(tmp_path), offline=True, log_model=False)
    try:
        model = log_stage_artifact([lg], name="x-model", kind="model", paths=[tmp_path / "model"])
        pairs = log_stage_artifact([lg], name=artifact_name("my run: beta=0.1-pairs"), kind="dataset",
                                   paths=[tmp_path / "pairs.jsonl"], metadata={"records": 1}, used=True)
    finally:
        wandb.finish()
    assert model == [] and len(pairs) == 1
    logged = [r.artifact for r in records(run_file(tmp_path)) if r.WhichOneof("record_type") == "artifact"]
    assert [(a.type, a.name, a.use_after_commit) for a in logged] == [("dataset", "my-run-beta-0.1-pairs", True)]
    assert [c.path for c in logged[0].manifest.contents] == ["pairs.jsonl"]
    assert ArtifactWandbLogger(project="p", offline=True).logs_artifact("model")     # the default logs both
