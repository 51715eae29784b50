"""A key in the environment never lands in the run directory, the caches, the W&B files or the logs.

The run really uses the key: its judges and editor go to the loopback DashScope server (the real
dashscope SDK over HTTP on 127.0.0.1), which refuses any other key, while the actor runs locally.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

from wandb_records import run_file, summary

from oyster_exp.testing.loopback import serve

ROOT = Path(__file__).resolve().parents[2]
# <repo>/../shared/data on main; a worktree under <root>/wt/<name> finds it one level further up
SHARED_DATA = next((d for d in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data")
                    if d.exists()), ROOT.parent / "shared" / "data")


def test_api_keys_from_the_environment_leave_no_trace(tmp_path: Path) -> None:
    key = "sk-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    out = tmp_path / "outputs"
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(out), "OYSTER_EXP_DATA": str(SHARED_DATA),
           "WANDB_MODE": "offline", "DASHSCOPE_API_KEY": key, "OPENAI_API_KEY": key, "DASHSCOPE_LOG": "debug"}
    env.pop("WANDB_API_KEY", None)
    with serve(api_key=key) as (_, state):
        args = ["llm=hybrid", f"llm.base_url={state.dashscope_url}", "debug=fast", "model=tiny_random",
                "data.limit=3", "eval.strata_sword.limit=1",
                *(f"llm.roles.{r}.temperature=1.0" for r in ("actor", "user_judge", "safety_judge", "editor"))]
        p = subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", *args], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=600)
        auths = {b["auth"] for b in state.bodies}
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-1500:]
    assert state.requests > 0 and auths == {f"Bearer {key}"}, "the judges must have used the key"
    assert key not in p.stdout + p.stderr
    files = [f for f in out.rglob("*") if f.is_file() and not f.is_symlink()]
    assert any(f.suffix == ".wandb" for f in files), "expected an offline W&B run to scan"
    assert any(f.suffix == ".log" for f in files), "expected the run's log file to scan"
    leaks = [str(f) for f in files if key.encode() in f.read_bytes()]
    assert leaks == []
    (manifest_path,) = out.rglob("manifest.json")
    usage = json.loads(manifest_path.read_text())["llm_usage"]
    assert usage["optimize/user_judge"]["calls"] > 0 and usage["generate/actor"]["calls"] > 0
    s = summary(run_file(out))
    assert s["llm/total/calls"] == sum(v["calls"] for v in usage.values()) > 0
