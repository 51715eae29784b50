"""Fault tolerance: 1,000 structured calls while the loopback server fails 20 % of requests
(429 with Retry-After, 500, dropped connections, 5 s stalls, truncated or invalid JSON).

    .venv/bin/python benchmarks/llm_faults.py           # prints one JSON line last; exit 0 when nothing is lost
    .venv/bin/python benchmarks/llm_faults.py --backend dashscope      # the same through the real dashscope SDK
    .venv/bin/python benchmarks/llm_faults.py --backend dashscope_sse  # ... as thinking calls, streamed (SSE)

Every outcome is written through the journal (which refuses a second record with the same id), so
`lost` and `duplicated` are counted on what would reach disk.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel


class Verdict(BaseModel):
    reason: str
    verdict: Literal["safe", "unsafe"]


class Outcome(BaseModel):
    id: str
    ok: bool
    failure: str | None = None


def main() -> int:
    from oyster_exp.llm.base import ChatMessage
    from oyster_exp.llm.engine import CallEngine
    from oyster_exp.llm.openai_compat import OpenAICompatClient
    from oyster_exp.llm.service import LLMService, RoleBinding
    from oyster_exp.pipeline.artifacts import Journal, read_records
    from oyster_exp.testing.loopback import Faults, serve

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--backend", choices=["openai", "dashscope", "dashscope_sse"], default="openai")
    a = ap.parse_args()
    faults = Faults(rate_429=0.05, rate_500=0.04, rate_drop=0.03, rate_hang=0.02, rate_truncated=0.03,
                    rate_malformed=0.03, retry_after_s=0.2, hang_s=5.0)
    with serve(latency_s=a.latency, faults=faults, seed=7, keep_bodies=False) as (url, state), \
            tempfile.TemporaryDirectory() as tmp:
        engine = CallEngine(concurrency=a.concurrency, max_attempts=6, timeout_s=2.0, backoff_base_s=0.1)
        if a.backend == "openai":
            client = OpenAICompatClient(url, "bench", api_key_env=None, engine=engine)
        else:
            import os

            from oyster_exp.llm.dashscope import DashScopeClient

            os.environ.setdefault("OYSTER_BENCH_DASHSCOPE_KEY", "sk-" + "b" * 32)  # the loopback checks none here
            client = DashScopeClient("bench", api_key_env="OYSTER_BENCH_DASHSCOPE_KEY", base_url=state.dashscope_url,
                                     engine=engine)
        binding = RoleBinding(client=client, enable_thinking=a.backend == "dashscope_sse")
        svc = LLMService({"judge": binding}, max_retries=1)
        convs = [[ChatMessage(role="user", content=f"request {i}")] for i in range(a.requests)]
        t0 = time.perf_counter()
        outs = svc.structured("judge", convs, Verdict)
        seconds = time.perf_counter() - t0
        journal = Journal(Path(tmp) / "outcomes.jsonl", Outcome)
        for i, o in enumerate(outs):
            journal.append(Outcome(id=f"r{i}", ok=o.value is not None, failure=o.failure if o.value is None else None))
        journal.close()
        recs = read_records(Path(tmp) / "outcomes.jsonl", Outcome)
        server_requests = state.requests
    ids = [r.id for r in recs]
    succeeded = sum(r.ok for r in recs)
    failed = sum(1 for r in recs if not r.ok and r.failure)
    result = {
        "benchmark": "llm_faults", "backend": a.backend, "requests": a.requests, "succeeded": succeeded,
        "failed_with_reason": failed,
        "lost": a.requests - len(set(ids)) + sum(1 for r in recs if not r.ok and not r.failure),
        "duplicated": len(ids) - len(set(ids)), "server_requests": server_requests,
        "engine_retries": engine.stats.retries, "fault_rate": 0.20, "seconds": round(seconds, 2),
    }
    print(json.dumps(result))
    ok = result["lost"] == 0 and result["duplicated"] == 0 and succeeded + failed == a.requests
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
