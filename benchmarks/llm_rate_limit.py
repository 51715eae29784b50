"""Rate limits the client is not told: three roles through the engine against a loopback server that
enforces a sliding-window request limit (429 with the wait until a slot frees), as a provider does.

    .venv/bin/python benchmarks/llm_rate_limit.py       # prints one JSON line last; exit 0 when the targets hold

Two sides, each in its own subprocess, alternating for --repeats rounds:
- `found`: no limit configured; the engine must find the server's (achieved rate / limit >= 0.9, 429s <= 2 %).
- `configured`: the limit configured (requests_per_minute); no window of the server's may hold more than it.
Time is scaled down: the server's window is --window seconds (60 in production) and the client's limiter
uses the same window (`window_s`), so `limit` requests per window stand for `limit` requests per minute.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time


def run_side(side: str, url: str, limit: int, window: float, calls: int, concurrency: int) -> dict:
    from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
    from oyster_exp.llm.engine import CallEngine
    from oyster_exp.llm.limits import EndpointLimiter
    from oyster_exp.llm.openai_compat import OpenAICompatClient

    rpm = limit * 60.0 / window if side == "configured" else None    # the limit, in per-minute units
    shared = EndpointLimiter(label=url, window_s=window)
    clients = []
    for _role in ("actor", "user_judge", "safety_judge"):
        engine = CallEngine(concurrency=concurrency, requests_per_minute=rpm, max_attempts=20, timeout_s=30,
                            backoff_base_s=0.05)
        client = OpenAICompatClient(url, "bench", api_key_env=None, engine=engine)
        engine.attach(shared)   # the registry's is keyed by a 60-s window; the scaled one stands in for it
        clients.append(client)
    results: list = []
    lock = threading.Lock()

    def role(client: OpenAICompatClient, name: str) -> None:
        reqs = [ChatRequest(messages=[ChatMessage(role="user", content=f"{name} {i}")], max_tokens=8)
                for i in range(calls)]
        out = client.chat_batch(reqs)
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=role, args=(c, f"r{i}")) for i, c in enumerate(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    ok = sum(isinstance(r, ChatResponse) for r in results)
    return {"side": side, "calls": 3 * calls, "ok": ok, "seconds": seconds, "t0": t0, "t1": t0 + seconds,
            "limiter_cuts": shared.stats.cuts, "learned": shared.learned_requests}


def _server_stats(root: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{root}/v1/stats?arrivals=1", timeout=10) as r:
        return json.loads(r.read())


def _max_in_window(arrivals: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(arrivals):
        while arrivals[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _round(side: str, a: argparse.Namespace) -> dict:
    """One side against a fresh server (its own process), so the server's window starts empty."""
    server = subprocess.Popen([sys.executable, "-m", "oyster_exp.testing.loopback", "--latency", str(a.latency),
                               "--rate-limit", str(a.limit), "--rate-window", str(a.window)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        cmd = [sys.executable, __file__, "--side", side, "--url", url, "--limit", str(a.limit), "--window",
               str(a.window), "--calls", str(a.calls), "--concurrency", str(a.concurrency)]
        res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
                         .splitlines()[-1])
        stats = _server_stats(url[: -len("/v1")])
    finally:
        server.terminate()
        server.wait(timeout=10)
    arrivals = sorted(t for t in stats["arrivals"] if t >= res["t0"])
    accepted = stats["requests"] - stats["throttled"]
    # the achieved rate over the run, against the server's limit (its window count per window length)
    res.update(requests=stats["requests"], throttled=stats["throttled"],
               throttled_share=stats["throttled"] / max(1, stats["requests"]),
               achieved_per_window=accepted / res["seconds"] * a.window,
               max_in_any_window=_max_in_window(arrivals, a.window))
    res["rate_ratio"] = res["achieved_per_window"] / a.limit
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["found", "configured"])
    ap.add_argument("--url")
    ap.add_argument("--limit", type=int, default=100, help="requests the server accepts per window")
    ap.add_argument("--window", type=float, default=4.0, help="the server's sliding window, seconds (60 real)")
    ap.add_argument("--calls", type=int, default=300, help="calls per role (three roles)")
    ap.add_argument("--concurrency", type=int, default=4, help="in flight per role")
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(run_side(a.side, a.url, a.limit, a.window, a.calls, a.concurrency)))
        return 0
    found, configured = [], []
    for _ in range(a.repeats):   # alternate the sides
        found.append(_round("found", a))
        configured.append(_round("configured", a))
        print(json.dumps({"found": found[-1], "configured": configured[-1]}), file=sys.stderr)

    def med(rows: list[dict], k: str) -> float:
        return round(statistics.median(r[k] for r in rows), 3)

    def spread(rows: list[dict], k: str) -> list[float]:
        return [round(min(r[k] for r in rows), 3), round(max(r[k] for r in rows), 3)]

    out = {
        "benchmark": "llm_rate_limit", "roles": 3, "calls": 3 * a.calls, "concurrency_per_role": a.concurrency,
        "latency_s": a.latency, "repeats": a.repeats,
        "server_limit_per_window": a.limit, "window_s": a.window, "time_scale": f"{a.window:g} s stands for 60 s",
        "found_rate_ratio": med(found, "rate_ratio"), "found_rate_ratio_spread": spread(found, "rate_ratio"),
        "found_429_share": med(found, "throttled_share"), "found_429_share_spread": spread(found, "throttled_share"),
        "found_failures": sum(r["calls"] - r["ok"] for r in found),
        "configured_max_in_any_window": max(r["max_in_any_window"] for r in configured),
        "configured_over_limit_windows": sum(r["max_in_any_window"] > a.limit for r in configured),
        "configured_429s": sum(r["throttled"] for r in configured),
        "configured_rate_ratio": med(configured, "rate_ratio"),
        "configured_failures": sum(r["calls"] - r["ok"] for r in configured),
    }
    print(json.dumps(out))
    ok = (out["found_rate_ratio"] >= 0.9 and out["found_429_share"] <= 0.02 and out["configured_over_limit_windows"]
          == 0 and out["found_failures"] == 0 and out["configured_failures"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
