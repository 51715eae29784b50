"""A key in the environment never lands in the run directory, the caches, the W&B files or the logs."""
from __future__ import annotations

import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def test_api_keys_from_the_environment_leave_no_trace(tmp_path: Path) -> None:
    key = "sk-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    out = tmp_path / "outputs"
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(out), "OYSTER_EXP_DATA": str(SHARED_DATA),
           "WANDB_MODE": "offline", "DASHSCOPE_API_KEY": key, "OPENAI_API_KEY": key}
    env.pop("WANDB_API_KEY", None)
    args = ["debug=fast", "model=tiny_random", "data.limit=3", "eval.strata_sword.limit=1",
            *(f"llm.roles.{r}.temperature=1.0" for r in ("actor", "user_judge", "safety_judge", "editor"))]
    p = subprocess.run([sys.executable, "-m", "oyster_exp.cli", *args], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert key not in p.stdout + p.stderr
    files = [f for f in out.rglob("*") if f.is_file() and not f.is_symlink()]
    assert any(f.suffix == ".wandb" for f in files), "expected an offline W&B run to scan"
    leaks = [str(f) for f in files if key.encode() in f.read_bytes()]
    assert leaks == []
