"""Evaluation generation: the model under test at batch 8 against one prompt at a time.

    .venv/bin/python benchmarks/eval_generation.py          # SmolLM2-135M, fp32, CPU; one JSON line last

Both sides run the evaluation path itself (`oyster_exp.evaluation.generation.generate` through the LLM
service as the "subject" role, chat template, greedy, no call cache) on the same prompts: the project's
over-refusal probes (EN and CN, real evaluation prompts). The batched side uses
`eval.generation.batch_size=8` (left-padded, length-sorted batches); the sequential side sends one prompt
per call. Each side runs in its own subprocess (own time, own peak RSS); sides alternate for --repeats
rounds so load from other processes hits both; the figure per side is the median over rounds.
Throughput counts answer tokens up to each row's own end of turn (padding after a row finished in a
batch is not counted).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def side(mode: str, n: int, max_new: int, threads: int) -> dict:
    import torch

    from oyster_exp.evaluation.generation import (
        GenerationSettings,
        bind_subject,
        conversation,
        generate,
        local_subject,
    )
    from oyster_exp.evaluation.over_refusal import load_xstest_csv, probe_set_path
    from oyster_exp.llm.service import LLMService
    from oyster_exp.models.embedded import ensure_embedded_model

    torch.set_num_threads(threads)
    prompts = [it.prompt for it in load_xstest_csv(probe_set_path())]
    prompts = (prompts * (n // len(prompts) + 1))[:n]
    batch = 8 if mode == "batched" else 1
    settings = GenerationSettings(max_new_tokens=max_new, temperature=0.0, batch_size=batch)
    client = local_subject(ensure_embedded_model(), "HuggingFaceTB/SmolLM2-135M-Instruct", "float32", batch)
    svc = LLMService({})                                     # no call cache: every answer is generated
    bind_subject(svc, client, settings)
    convs = [conversation(p) for p in prompts]
    generate(svc, convs[:batch], settings)                   # warm-up (first-call allocations)
    svc.usage = type(svc.usage)()
    t0 = time.perf_counter()
    if mode == "batched":
        answers = generate(svc, convs, settings)
    else:
        answers = [a for c in convs for a in generate(svc, [c], settings)]
    dt = time.perf_counter() - t0
    tokens = svc.usage.totals()["completion_tokens"]
    return {"mode": mode, "seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt,
            "answers": sum(1 for a in answers if a.failure is None),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["batched", "sequential"])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same on both sides")
    a = ap.parse_args()
    if a.side:
        print(json.dumps(side(a.side, a.prompts, a.max_new_tokens, a.threads)))
        return
    runs: dict[str, list[dict]] = {"batched": [], "sequential": []}
    for rep in range(a.repeats):
        order = ("batched", "sequential") if rep % 2 == 0 else ("sequential", "batched")
        for s in order:
            cmd = [sys.executable, __file__, "--side", s, "--prompts", str(a.prompts), "--max-new-tokens",
                   str(a.max_new_tokens), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[s][-1]), file=sys.stderr)
    b = statistics.median(r["tokens_per_s"] for r in runs["batched"])
    q = statistics.median(r["tokens_per_s"] for r in runs["sequential"])
    print(json.dumps({
        "benchmark": "eval_generation", "model": "SmolLM2-135M-Instruct fp32 CPU", "prompts": a.prompts,
        "max_new_tokens": a.max_new_tokens, "batch_size": 8, "threads": a.threads, "repeats": a.repeats,
        "batched_tokens": runs["batched"][0]["tokens"], "sequential_tokens": runs["sequential"][0]["tokens"],
        "batched_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["batched"]), 1),
        "sequential_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["sequential"]), 1),
        "batched_tokens_per_s": round(b, 1), "sequential_tokens_per_s": round(q, 1), "speedup": round(b / q, 2),
    }))


if __name__ == "__main__":
    main()
