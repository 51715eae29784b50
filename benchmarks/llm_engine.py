"""Call-engine throughput: ours (asyncio engine + OpenAI-compatible client) beside a re-creation of
the reference code's scheduler (one thread per task, a fixed 0.5 s launch interval, at most 100 in
flight), both against the same loopback server with 200 ms latency.

    .venv/bin/python benchmarks/llm_engine.py            # prints one JSON line last

Each side runs in its own subprocess (its own time and peak memory); runs alternate ours/reference.
The reference needs 0.5 s per launch whatever the server does, so it gets fewer calls by default
(--reference-calls); its rate is steady long before that. A third side runs the same calls through
our DashScope client (the real dashscope SDK, native protocol; thinking replies streamed as SSE)
against the loopback server's DashScope route (`dashscope_*` fields).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
import urllib.request


def _cpu_s() -> float:
    """This process's CPU seconds: the client's own cost per call, which a busy machine's scheduling does not
    blur as much as it blurs the call rate."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_ours(url: str, calls: int, concurrency: int) -> dict:
    from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
    from oyster_exp.llm.engine import CallEngine
    from oyster_exp.llm.openai_compat import OpenAICompatClient

    client = OpenAICompatClient(url, "bench", api_key_env=None,
                                engine=CallEngine(concurrency=concurrency, max_attempts=3, timeout_s=30))
    reqs = [ChatRequest(messages=[ChatMessage(role="user", content=f"q{i}")], max_tokens=16) for i in range(calls)]
    t0, c0 = time.perf_counter(), _cpu_s()
    out = client.chat_batch(reqs)
    dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    ok = sum(isinstance(o, ChatResponse) for o in out)
    return {"calls": calls, "ok": ok, "seconds": dt, "calls_per_s": ok / dt, "cpu_ms_per_call": cpu * 1000 / calls}


def run_dashscope(url: str, calls: int, concurrency: int, thinking: bool) -> dict:
    import os

    from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
    from oyster_exp.llm.dashscope import DashScopeClient
    from oyster_exp.llm.engine import CallEngine

    os.environ.setdefault("OYSTER_BENCH_DASHSCOPE_KEY", "sk-" + "b" * 32)  # the loopback checks no key here
    native = url[: -len("/v1")] + "/api/v1"
    client = DashScopeClient("bench", api_key_env="OYSTER_BENCH_DASHSCOPE_KEY", base_url=native,
                             engine=CallEngine(concurrency=concurrency, max_attempts=3, timeout_s=30))
    reqs = [ChatRequest(messages=[ChatMessage(role="user", content=f"q{i}")], max_tokens=16,
                        enable_thinking=thinking) for i in range(calls)]
    t0, c0 = time.perf_counter(), _cpu_s()
    out = client.chat_batch(reqs)
    dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    ok = sum(isinstance(o, ChatResponse) and (o.reasoning != "") == thinking for o in out)
    return {"calls": calls, "ok": ok, "seconds": dt, "calls_per_s": ok / dt, "cpu_ms_per_call": cpu * 1000 / calls}


def run_reference(url: str, calls: int, interval: float = 0.5, pool: int = 100) -> dict:
    """One daemon thread per task, launched every `interval` seconds, at most `pool` in flight."""
    done, lock = [0], threading.Lock()
    in_flight = threading.Semaphore(pool)

    def task(i: int) -> None:
        try:
            body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": f"q{i}"}]}).encode()
            req = urllib.request.Request(f"{url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                json.loads(r.read())
            with lock:
                done[0] += 1
        finally:
            in_flight.release()

    threads = []
    t0 = time.perf_counter()
    for i in range(calls):
        in_flight.acquire()
        th = threading.Thread(target=task, args=(i,), daemon=True)
        th.start()
        threads.append(th)
        time.sleep(interval)
    for th in threads:
        th.join()
    dt = time.perf_counter() - t0
    return {"calls": calls, "ok": done[0], "seconds": dt, "calls_per_s": done[0] / dt}


def _child(side: str, url: str, calls: int, concurrency: int) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--url", url, "--calls", str(calls),
           "--concurrency", str(concurrency)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["ours", "reference", "dashscope", "dashscope_sse"])
    ap.add_argument("--url")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--reference-calls", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.side:
        if a.side.startswith("dashscope"):
            res = run_dashscope(a.url, a.calls, a.concurrency, thinking=a.side == "dashscope_sse")
        else:
            res = run_ours(a.url, a.calls, a.concurrency) if a.side == "ours" else run_reference(a.url, a.calls)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    server = subprocess.Popen([sys.executable, "-m", "oyster_exp.testing.loopback", "--latency", str(a.latency)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        ours, ref, ds, sse = [], [], [], []
        for _ in range(a.repeats):  # alternate the sides
            ours.append(_child("ours", url, a.calls, a.concurrency))
            ref.append(_child("reference", url, a.reference_calls, a.concurrency))
            ds.append(_child("dashscope", url, a.calls, a.concurrency))
            sse.append(_child("dashscope_sse", url, a.calls, a.concurrency))
            print(json.dumps({"ours": ours[-1], "reference": ref[-1], "dashscope": ds[-1], "dashscope_sse": sse[-1]}),
                  file=sys.stderr)
    finally:
        server.terminate()
    o = statistics.median(r["calls_per_s"] for r in ours)
    r = statistics.median(x["calls_per_s"] for x in ref)
    ideal = a.concurrency / a.latency
    d = statistics.median(x["calls_per_s"] for x in ds)
    d_sse = statistics.median(x["calls_per_s"] for x in sse)
    print(json.dumps({
        "benchmark": "llm_engine", "calls": a.calls, "reference_calls": a.reference_calls,
        "concurrency": a.concurrency, "latency_s": a.latency, "repeats": a.repeats,
        "ours_calls_per_s": round(o, 2), "ideal_calls_per_s": round(ideal, 2),
        "reference_calls_per_s": round(r, 2), "efficiency": round(o / ideal, 3), "vs_reference": round(o / r, 1),
        "ours_failures": sum(x["calls"] - x["ok"] for x in ours),
        "efficiency_spread": [round(min(x["calls_per_s"] for x in ours) / ideal, 3),
                              round(max(x["calls_per_s"] for x in ours) / ideal, 3)],
        "ours_cpu_ms_per_call": round(statistics.median(x["cpu_ms_per_call"] for x in ours), 3),
        "dashscope_cpu_ms_per_call": round(statistics.median(x["cpu_ms_per_call"] for x in ds), 3),
        "dashscope_sse_cpu_ms_per_call": round(statistics.median(x["cpu_ms_per_call"] for x in sse), 3),
        "ours_peak_rss_mb": round(max(x["peak_rss_mb"] for x in ours), 1),
        "reference_peak_rss_mb": round(max(x["peak_rss_mb"] for x in ref), 1),
        "dashscope_calls_per_s": round(d, 2), "dashscope_efficiency": round(d / ideal, 3),
        "dashscope_sse_calls_per_s": round(d_sse, 2), "dashscope_sse_efficiency": round(d_sse / ideal, 3),
        "dashscope_efficiency_spread": [round(min(x["calls_per_s"] for x in ds) / ideal, 3),
                                        round(max(x["calls_per_s"] for x in ds) / ideal, 3)],
        "dashscope_sse_efficiency_spread": [round(min(x["calls_per_s"] for x in sse) / ideal, 3),
                                            round(max(x["calls_per_s"] for x in sse) / ideal, 3)],
        "dashscope_failures": sum(x["calls"] - x["ok"] for x in ds + sse),
        "dashscope_peak_rss_mb": round(max(x["peak_rss_mb"] for x in ds + sse), 1),
    }))


if __name__ == "__main__":
    main()
