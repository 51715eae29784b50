"""Optimize-stage loop on SmolLM2: lockstep over queries (ours) beside one query at a time (the previous
stage's call pattern, where every LLM call was a batch of 1).

    .venv/bin/python benchmarks/optimize_lockstep.py --queries 8 --repeats 2    # prints one JSON line last
    .venv/bin/python benchmarks/optimize_lockstep.py --backend loopback --queries 32 --latency 0.2

Both sides run the same Lingo-BP loop (`lingo_bp=one_step` unless --lingo-bp, no call cache) on the same
seed queries; the sequential side calls it with one query per chunk, ours with all of them in one chunk.
`--backend local`: the `llm=local` roles on SmolLM2 (CPU). `--backend loopback`: `llm=openai` against the
project's loopback OpenAI-compatible server with a fixed latency per request (a remote server's shape).
Each side runs in its own subprocess (own time and peak RSS); runs alternate.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _inputs(n: int) -> list:
    from oyster_exp.csa.chain import SafetyChain
    from oyster_exp.csa.optimize import QueryInput
    from oyster_exp.data.seed import load_seed_queries

    rows = [r for r in load_seed_queries() if r["language"] == "en"][:n]
    return [QueryInput(id=r["id"], query=r["query"], lang="en", think="",
                       response="I am sorry, I cannot help with that.",
                       chain=SafetyChain(user_needs=r.get("task") or "get an answer", risk_intent="may be sensitive",
                                         safety_guidelines="do not give harmful specifics",
                                         usefulness_strategies=["answer the question directly"],
                                         safety_strategies=["refuse anything risky"]),
                       category="Unknown Risk", guideline="1. Do not give harmful specifics.") for r in rows]


def side(mode: str, n: int, lingo_bp: str, backend: str, latency: float) -> dict:
    from contextlib import ExitStack

    from hydra import compose, initialize_config_dir

    import oyster_exp.run.cli  # noqa: F401 - registers the schema
    from oyster_exp.csa.optimize import optimize_batch
    from oyster_exp.llm.build import build_service
    from oyster_exp.stages.optimize import settings_from
    from oyster_exp.testing.loopback import serve

    stack = ExitStack()
    overrides = [f"lingo_bp={lingo_bp}", "llm.call_cache=false"]
    if backend == "loopback":
        url, _ = stack.enter_context(serve(latency_s=latency, keep_bodies=False))
        overrides += ["llm=openai", f"llm.base_url={url}", "llm.model=bench"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    service = build_service(cfg, Path("/nonexistent"))
    items = _inputs(n)
    s = settings_from(cfg)
    if backend == "local":
        service.roles["actor"].client.encode("warm up")   # load the model before the clock starts
    chunk = 1 if mode == "sequential" else len(items)
    t0, c0 = time.perf_counter(), time.process_time()
    results = []
    for i in range(0, len(items), chunk):
        results += optimize_batch(service, items[i:i + chunk], s)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    stack.close()
    u = service.usage.totals()
    return {"side": mode, "queries": len(items), "seconds": round(dt, 2), "cpu_s": round(cpu, 2),
            "s_per_query": round(dt / len(items), 2),
            "llm_calls": u["calls"],
            "judged_entries": sum(1 for r in results for e in r.trace if e.reward is not None),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["lockstep", "sequential"])
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--lingo-bp", default="one_step")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backend", choices=["local", "loopback"], default="local")
    ap.add_argument("--latency", type=float, default=0.2, help="loopback: seconds per request")
    a = ap.parse_args()
    if a.side:
        print(json.dumps(side(a.side, a.queries, a.lingo_bp, a.backend, a.latency)))
        return
    runs: dict[str, list[dict]] = {"lockstep": [], "sequential": []}
    for rep in range(a.repeats):
        for s in (("sequential", "lockstep") if rep % 2 == 0 else ("lockstep", "sequential")):
            cmd = [sys.executable, __file__, "--side", s, "--queries", str(a.queries), "--lingo-bp", a.lingo_bp,
                   "--backend", a.backend, "--latency", str(a.latency)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})
            runs[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[s][-1]), file=sys.stderr)
    lock = min(r["seconds"] for r in runs["lockstep"])
    seq = min(r["seconds"] for r in runs["sequential"])
    lock_cpu = min(r["cpu_s"] for r in runs["lockstep"])
    seq_cpu = min(r["cpu_s"] for r in runs["sequential"])
    print(json.dumps({
        "benchmark": "optimize_lockstep",
        "backend": "SmolLM2-135M-Instruct fp32 CPU" if a.backend == "local" else f"loopback {a.latency}s/request",
        "lingo_bp": a.lingo_bp,
        "queries": a.queries, "repeats": a.repeats, "lockstep_s": lock, "sequential_s": seq,
        "speedup": round(seq / lock, 2), "lockstep_cpu_s": lock_cpu, "sequential_cpu_s": seq_cpu,
        "cpu_speedup": round(seq_cpu / lock_cpu, 2),
        "lockstep_llm_calls": runs["lockstep"][0]["llm_calls"],
        "sequential_llm_calls": runs["sequential"][0]["llm_calls"],
        "lockstep_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["lockstep"]),
        "sequential_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["sequential"]),
        "note": "shared 2-core machine (wall time inflated by other users; cpu_s is this process's own CPU time); "
                "best of the alternating runs per side",
    }))


if __name__ == "__main__":
    main()
