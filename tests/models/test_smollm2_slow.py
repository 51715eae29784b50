"""One real-model run: the embedded SmolLM2 through every stage, with an offline W&B run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.mark.slow
def test_pipeline_on_embedded_smollm2(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(out), "OYSTER_EXP_DATA": str(SHARED_DATA),
           "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    args = ["debug=fast", "data.limit=4", "data.heldout_fraction=0.5", "print_config=false"]
    p = subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", *args], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run,) = sorted((out / "runs").glob("*/*"))
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "completed"
    assert m["model_id"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert m["counters"]["llm_calls"] > 0
    assert m["counters"]["structured_valid_rate"] >= 0.9
    assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run in the run directory"
    gen = [json.loads(x) for x in (run / "artifacts" / "generate.jsonl").read_text().splitlines()]
    assert all(g["response"].strip() for g in gen if not g["failure"])
    assert (run / "report.md").exists()
