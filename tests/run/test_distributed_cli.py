"""The distributed trainers through the real CLI on the tiny model, as a user's first multi-process job runs.

* `trainer=fsdp_cpu`: two gloo ranks shard the model; the run exits 0 and its export loads with a plain
  `AutoModelForCausalLM.from_pretrained`.
* a `-m` sweep with `trainer=ddp_cpu`: Lightning re-launches each rank as a command; the child must run its
  own arm once, inside that arm's directory, and never start the sweep again (which made a second sweep
  directory and trained every arm twice per rank).

Both share one outputs directory, so the sweep's data-engine stages come from the first run's cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("OYSTER_EXP_DATA") or next(
    (p / "shared" / "data" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared" / "data").exists()),
    ROOT.parent / "shared" / "data"))
TINY = ["model=tiny_random", "debug=fast", "print_config=false"]
CHILD = "GLOBAL_RANK: 1, MEMBER: 2/2"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed_cli")


def _cli(outputs: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(outputs), "OYSTER_EXP_DATA": str(SHARED_DATA),
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", *argv], env=env, cwd=outputs,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_fsdp_cpu_run_exits_0_with_an_export_that_loads(outputs: Path, tiny_model_dir: Path) -> None:
    p = _cli(outputs, *TINY, "trainer=fsdp_cpu")
    assert p.returncode == 0, p.stderr[-4000:]
    assert CHILD in p.stdout + p.stderr
    (run,) = (outputs / "runs").glob("*/*")
    record = json.loads((run / "artifacts" / "train.jsonl").read_text().splitlines()[0])
    assert record["failure"] is None and record["steps"] == 2
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(run / "train" / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [k for k, v in trained.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert moved, "the export holds the base weights: the gathered, trained ones were not saved"


@pytest.mark.slow
def test_ddp_cpu_sweep_runs_each_arm_once_in_one_sweep_directory(outputs: Path) -> None:
    runs_before = set((outputs / "runs").glob("*/*"))
    p = _cli(outputs, "-m", *TINY, "trainer=ddp_cpu", "objective.beta=0.1,0.2")
    assert p.returncode == 0, p.stderr[-4000:]
    (sweep,) = (outputs / "multirun").glob("*/*")                     # one sweep, not one more per child rank
    ledger = [json.loads(x) for x in (sweep / "ledger.jsonl").read_text().splitlines()]
    assert [e["status"] for e in ledger] == ["completed", "completed"]
    out = p.stdout + p.stderr                                         # (Lightning logs each line twice here)
    assert out.count(CHILD) == out.count("GLOBAL_RANK: 0, MEMBER: 1/2") > 0   # a child rank per rank 0, no more
    for arm in ("0", "1"):
        child_log = (sweep / arm / "train_ddp_process_1.log").read_text()  # the child ran in its arm's directory
        assert child_log.count(CHILD) == 1                            # ... once
        record = json.loads((sweep / arm / "artifacts" / "train.jsonl").read_text().splitlines()[0])
        assert record["failure"] is None and record["steps"] == 2
    assert set((outputs / "runs").glob("*/*")) == runs_before         # no single run started by a child
