"""A loopback OpenAI-compatible server with latency and fault injection (tests and benchmarks).

Replies are deterministic: a JSON schema in `response_format` gets a schema-valid object (first
enum option, "ok" strings), free text gets an echo of the last user message. Faults are drawn
from a seeded RNG per request: 429 with Retry-After, 500, a malformed body, or a hang.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Faults:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_malformed: float = 0.0
    rate_hang: float = 0.0
    rate_drop: float = 0.0          # close the connection without answering
    rate_truncated: float = 0.0     # 200 with half a JSON body
    retry_after_s: float = 0.05
    hang_s: float = 5.0


@dataclass
class ServerState:
    latency_s: float = 0.0
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    keep_bodies: bool = True


def _value(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in node:
        return _value(defs[node["$ref"].split("/")[-1]], defs)
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    t = node.get("type")
    if t == "array":
        return [_value(node.get("items", {"type": "string"}), defs)]
    if t in ("integer", "number"):
        return 0
    if t == "boolean":
        return True
    return "ok"


def reply_for(body: dict[str, Any]) -> str:
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema")
    if schema:
        defs = schema.get("$defs", {})
        return json.dumps({k: _value(v, defs) for k, v in schema.get("properties", {}).items()})
    users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    return "echo: " + (users[-1] if users else "")


def _respond(state: ServerState, body: dict[str, Any], n: int) -> tuple[int, bytes, dict[str, str], float]:
    """(status, payload, headers, extra delay) for request number n: faults drawn from a seeded RNG."""
    r = random.Random(state.seed * 1_000_003 + n).random()
    f = state.faults
    if r < f.rate_429:
        return 429, b'{"error": "rate limited"}', {"Retry-After": str(f.retry_after_s)}, 0.0
    r -= f.rate_429
    if r < f.rate_500:
        return 500, b'{"error": "server error"}', {}, 0.0
    r -= f.rate_500
    if r < f.rate_malformed:
        return 200, b'{"choices": []}', {}, 0.0
    r -= f.rate_malformed
    if r < f.rate_drop:
        return -1, b"", {}, 0.0
    r -= f.rate_drop
    truncated = r < f.rate_truncated
    r -= f.rate_truncated
    delay = f.hang_s if 0 <= r < f.rate_hang else 0.0
    content = reply_for(body)
    thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
    payload = {"id": f"cmpl-{n}", "object": "chat.completion", "model": body.get("model"),
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content,
                                        "reasoning_content": "thinking..." if thinking else None}}],
               "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(content) // 4)}}
    data = json.dumps(payload).encode()
    return 200, data[: len(data) // 2] if truncated else data, {}, delay


def make_app(state: ServerState) -> Any:
    """An aiohttp app: one event loop serves every connection, so the server adds almost no latency
    of its own and a benchmark measures the client, not the fixture."""
    from aiohttp import web

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        with state.lock:
            state.requests += 1
            n = state.requests
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            if state.keep_bodies:
                state.bodies.append({"auth": request.headers.get("Authorization"), **body})
        try:
            status, payload, headers, delay = _respond(state, body, n)
            await asyncio.sleep(state.latency_s + delay)
            if status < 0:  # a dropped connection: no status line at all
                if request.transport is not None:
                    request.transport.close()
                raise ConnectionResetError("dropped by fault injection")
            return web.Response(status=status, body=payload, headers=headers, content_type="application/json")
        finally:
            with state.lock:
                state.in_flight -= 1

    async def stats(request: web.Request) -> web.Response:
        with state.lock:
            data = {"requests": state.requests, "max_in_flight": state.max_in_flight}
        return web.json_response(data)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/stats", stats)
    return app


@contextmanager
def serve(latency_s: float = 0.0, faults: Faults | None = None, seed: int = 0, keep_bodies: bool = True
          ) -> Iterator[tuple[str, ServerState]]:
    """Run the server on 127.0.0.1 (a free port) in a background thread; yields (base_url, state)."""
    from aiohttp import web

    state = ServerState(latency_s=latency_s, faults=faults or Faults(), seed=seed, keep_bodies=keep_bodies)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # injected drops are not server errors
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(state), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="loopback OpenAI-compatible server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    with serve(latency_s=args.latency, keep_bodies=False) as (url, _):
        print(url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
