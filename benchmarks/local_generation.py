"""Local backend: the same prompts one at a time and micro-batched, plus structured-call validity.

    .venv/bin/python benchmarks/local_generation.py     # SmolLM2-135M, fp32, CPU; one JSON line last

Each side runs in its own subprocess (own time and peak memory); sides alternate when --repeats > 1.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TOPICS = ["bread", "rain", "trains", "sleep", "music", "taxes", "the moon", "gardening", "chess", "tea",
          "bicycles", "volcanoes", "libraries", "bees", "glaciers", "printing"]


def prompts(n: int) -> list[str]:
    forms = ["Explain {} to a child.", "Give three facts about {}.", "Why do people care about {}?",
             "Write a short note about {}."]
    return [forms[i % 4].format(TOPICS[i % len(TOPICS)]) for i in range(n)]


def side(mode: str, n: int, max_new: int, structured: int) -> dict:
    from pydantic import BaseModel

    from oyster_exp.csa.replies import SafetyJudgementReply, UserJudgementReply
    from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
    from oyster_exp.llm.local import LocalClient
    from oyster_exp.models.embedded import ensure_embedded_model

    client = LocalClient(ensure_embedded_model(), max_batch_size=16)
    reqs = [ChatRequest(messages=[ChatMessage(role="user", content=p)], max_tokens=max_new) for p in prompts(n)]
    client.chat_batch(reqs[:1])  # warm-up
    t0 = time.perf_counter()
    if mode == "batched":
        out = client.chat_batch(reqs)
    else:
        out = [client.chat_batch([r])[0] for r in reqs]
    dt = time.perf_counter() - t0
    tokens = sum(o.usage.completion_tokens for o in out if isinstance(o, ChatResponse))
    res: dict = {"mode": mode, "seconds": dt, "tokens": tokens, "tokens_per_s": tokens / dt}
    if structured:
        schemas: list[type[BaseModel]] = [UserJudgementReply, SafetyJudgementReply]
        valid = 0
        t1 = time.perf_counter()
        for i in range(structured):
            schema = schemas[i % 2]
            r = ChatRequest(messages=[ChatMessage(role="user", content=f"Question: {prompts(n)[i % n]}\nReply: ok")],
                            response_schema=schema.model_json_schema(), max_tokens_per_field=12,
                            temperature=0.7 if i % 3 else 0.0, seed=i)
            reply = client.chat_batch([r])[0]
            try:
                schema.model_validate_json(reply.content if isinstance(reply, ChatResponse) else "")
                valid += 1
            except Exception:
                pass
        res.update(structured_calls=structured, structured_valid=valid,
                   structured_seconds=time.perf_counter() - t1)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["batched", "sequential"])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--structured", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if a.side:
        print(json.dumps(side(a.side, a.prompts, a.max_new_tokens, a.structured)))
        return
    runs: dict[str, list[dict]] = {"batched": [], "sequential": []}
    for rep in range(a.repeats):
        for s in ("batched", "sequential"):
            structured = a.structured if (s == "batched" and rep == 0) else 0
            cmd = [sys.executable, __file__, "--side", s, "--prompts", str(a.prompts), "--max-new-tokens",
                   str(a.max_new_tokens), "--structured", str(structured)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[s][-1]), file=sys.stderr)
    b = max(r["tokens_per_s"] for r in runs["batched"])
    q = max(r["tokens_per_s"] for r in runs["sequential"])
    st = runs["batched"][0]
    print(json.dumps({
        "benchmark": "local_generation", "model": "SmolLM2-135M-Instruct fp32 CPU", "prompts": a.prompts,
        "max_new_tokens": a.max_new_tokens, "batched_tokens_per_s": round(b, 1),
        "sequential_tokens_per_s": round(q, 1),
        "speedup": round(b / q, 2), "structured_calls": st.get("structured_calls", 0),
        "valid_json_rate": round(st["structured_valid"] / st["structured_calls"], 4)
        if st.get("structured_calls") else None,
        "structured_s_per_call": round(st["structured_seconds"] / st["structured_calls"], 3)
        if st.get("structured_calls") else None,
        "batched_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["batched"]), 1),
        "sequential_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["sequential"]), 1),
    }))


if __name__ == "__main__":
    main()
