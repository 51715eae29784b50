"""A remote batch killed half-way keeps the replies already paid for.

The service stores each reply of a remote backend in the call cache the moment it lands (the engine's
`on_reply`), not when the whole batch returns: a job SIGKILLed while one request hangs must not pay
again for the requests that had finished. The server is the real loopback HTTP server; the client runs
in a subprocess that the test kills.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from oyster_exp.llm.cache import CallCache
from oyster_exp.testing.loopback import Faults, serve

CLIENT = """
import sys
from pathlib import Path
from oyster_exp.llm.base import ChatMessage
from oyster_exp.llm.cache import CallCache
from oyster_exp.llm.engine import CallEngine
from oyster_exp.llm.openai_compat import OpenAICompatClient
from oyster_exp.llm.service import LLMService, RoleBinding

client = OpenAICompatClient(sys.argv[1], "served", api_key_env=None,
                            engine=CallEngine(concurrency=4, max_attempts=1, timeout_s=600))
svc = LLMService({"actor": RoleBinding(client=client)}, cache=CallCache(Path(sys.argv[2])))
svc.text("actor", [[ChatMessage(role="user", content=f"question {i}")] for i in range(4)])
"""


def test_replies_of_a_killed_remote_batch_stay_cached(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite"
    # requests 1-3 answer at once, request 4 hangs (6 s: the server still shuts down within its 10 s)
    with serve(faults=Faults(script=("ok", "ok", "ok", "hang"), hang_s=6.0)) as (url, state):
        proc = subprocess.Popen([sys.executable, "-c", CLIENT, url, str(db)], env={**os.environ},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and state.requests < 4 and proc.poll() is None:
                time.sleep(0.05)
            assert state.requests == 4, proc.stderr.read() if proc.poll() is not None else "requests never arrived"
            cache, stored_by = CallCache(db), time.monotonic() + 5.0
            while len(cache) < 3 and time.monotonic() < stored_by:   # three replies land; the fourth hangs
                time.sleep(0.05)
            assert proc.poll() is None, "the batch finished although one request hangs"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(CallCache(db)) == 3
