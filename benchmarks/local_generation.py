"""Local backend: free text one at a time vs micro-batched, and structured calls by both JSON decoders.

    .venv/bin/python benchmarks/local_generation.py     # SmolLM2-135M, fp32, CPU; one JSON line last

Sides, each in its own subprocess (own time and peak memory), alternating over --repeats rounds:
- `batched` / `sequential`: the same free-text prompts in one `chat_batch` (the lockstep loop over a
  micro-batch) or one call each;
- `grammar` / `frame`: the same structured requests (the user and safety judges' reply schemas, greedy and
  sampled mixed) in one `chat_batch`, decoded by `structured_decoding=grammar` (llguidance masks, a micro-batch
  in lockstep, forced ids fed with the sampled ones) or `frame` (the per-request JSON-frame decoder, the
  baseline). Every reply is validated against its schema.
The summary gives medians over the rounds and the spread (min, max) of each figure.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

TOPICS = ["bread", "rain", "trains", "sleep", "music", "taxes", "the moon", "gardening", "chess", "tea",
          "bicycles", "volcanoes", "libraries", "bees", "glaciers", "printing"]
FREE_SIDES = ("batched", "sequential")
STRUCTURED_SIDES = ("grammar", "frame")


def prompts(n: int) -> list[str]:
    forms = ["Explain {} to a child.", "Give three facts about {}.", "Why do people care about {}?",
             "Write a short note about {}."]
    return [forms[i % 4].format(TOPICS[i % len(TOPICS)]) for i in range(n)]


def side(mode: str, n: int, max_new: int, structured: int, batch: int) -> dict:
    from pydantic import BaseModel

    from oyster_exp.csa.replies import SafetyJudgementReply, UserJudgementReply
    from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
    from oyster_exp.llm.local import LocalClient
    from oyster_exp.models.embedded import ensure_embedded_model

    decoding = mode if mode in STRUCTURED_SIDES else "grammar"
    client = LocalClient(ensure_embedded_model(), max_batch_size=batch, structured_decoding=decoding)
    res: dict = {"mode": mode}
    if mode in FREE_SIDES:
        reqs = [ChatRequest(messages=[ChatMessage(role="user", content=p)], max_tokens=max_new) for p in prompts(n)]
        client.chat_batch(reqs[:1])  # warm-up
        t0 = time.perf_counter()
        out = client.chat_batch(reqs) if mode == "batched" else [client.chat_batch([r])[0] for r in reqs]
        dt = time.perf_counter() - t0
        tokens = sum(o.usage.completion_tokens for o in out if isinstance(o, ChatResponse))
        res.update(seconds=dt, tokens=tokens, tokens_per_s=tokens / dt)
    else:
        schemas: list[type[BaseModel]] = [UserJudgementReply, SafetyJudgementReply]
        texts = prompts(max(n, 1))
        asks = [f"Question: {texts[i % len(texts)]}\nReply: ok" for i in range(structured)]
        reqs = [ChatRequest(messages=[ChatMessage(role="user", content=asks[i])],
                            response_schema=schemas[i % 2].model_json_schema(), max_tokens_per_field=12,
                            temperature=0.7 if i % 3 else 0.0, seed=i) for i in range(structured)]
        client.chat_batch(reqs[:2])  # warm-up (the grammar decoder compiles each schema once)
        t0 = time.perf_counter()
        out = client.chat_batch(reqs)
        dt = time.perf_counter() - t0
        valid = 0
        for i, reply in enumerate(out):
            try:
                schemas[i % 2].model_validate_json(reply.content if isinstance(reply, ChatResponse) else "")
                valid += 1
            except ValueError:
                pass
        res.update(structured_calls=structured, structured_valid=valid, seconds=dt, calls_per_s=structured / dt)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _stats(values: list[float], digits: int = 2) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=[*FREE_SIDES, *STRUCTURED_SIDES])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--structured", type=int, default=32, help="structured calls per structured side")
    ap.add_argument("--batch", type=int, default=32, help="the client's max_batch_size (conf/llm/local.yaml's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["free", "structured"], help="run one pair of sides")
    a = ap.parse_args()
    if a.side:
        print(json.dumps(side(a.side, a.prompts, a.max_new_tokens, a.structured, a.batch)))
        return
    pairs = [p for name, p in (("free", FREE_SIDES), ("structured", STRUCTURED_SIDES)) if a.only in (None, name)]
    runs: dict[str, list[dict]] = {s: [] for p in pairs for s in p}
    for rep in range(a.repeats):
        for pair in pairs:
            for s in (pair if rep % 2 == 0 else pair[::-1]):       # alternate which side goes first
                cmd = [sys.executable, __file__, "--side", s, "--prompts", str(a.prompts), "--max-new-tokens",
                       str(a.max_new_tokens), "--structured", str(a.structured), "--batch", str(a.batch)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[s][-1]), file=sys.stderr)
    summary: dict = {"benchmark": "local_generation", "model": "SmolLM2-135M-Instruct fp32 CPU",
                     "repeats": a.repeats, "batch": a.batch}
    if runs.get("batched"):
        b = [r["tokens_per_s"] for r in runs["batched"]]
        q = [r["tokens_per_s"] for r in runs["sequential"]]
        summary.update(prompts=a.prompts, max_new_tokens=a.max_new_tokens, batched_tokens_per_s=_stats(b, 1),
                       sequential_tokens_per_s=_stats(q, 1),
                       speedup=_stats([x / y for x, y in zip(b, q)]))
    if runs.get("grammar"):
        g = [r["calls_per_s"] for r in runs["grammar"]]
        f = [r["calls_per_s"] for r in runs["frame"]]
        summary.update(
            structured_calls=a.structured, grammar_calls_per_s=_stats(g, 3), frame_calls_per_s=_stats(f, 3),
            structured_speedup=_stats([x / y for x, y in zip(g, f)]),
            grammar_valid_json_rate=round(sum(r["structured_valid"] for r in runs["grammar"])
                                          / sum(r["structured_calls"] for r in runs["grammar"]), 4),
            frame_valid_json_rate=round(sum(r["structured_valid"] for r in runs["frame"])
                                        / sum(r["structured_calls"] for r in runs["frame"]), 4),
            grammar_peak_rss_mb=round(max(r["peak_rss_mb"] for r in runs["grammar"]), 1),
            frame_peak_rss_mb=round(max(r["peak_rss_mb"] for r in runs["frame"]), 1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
