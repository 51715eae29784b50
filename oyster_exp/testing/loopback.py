"""A loopback LLM server with latency and fault injection (tests and benchmarks).

It speaks two wire protocols on one port: OpenAI-compatible (`/v1/chat/completions`) and
DashScope's native one (`/api/v1/services/aigc/text-generation/generation`, a JSON body, or SSE
when the client sends `X-DashScope-SSE: enable`), so the real DashScope SDK can be pointed at it.

Replies are deterministic: a JSON schema (in `response_format`, or in the prompt as written by
`schema_prompt.schema_instruction`) gets a schema-valid object (first enum option, "ok" strings),
free text gets an echo of the last user message (a continuation marker after an assistant prefill).
Faults are drawn from a seeded RNG per request (429 with Retry-After, 500, a malformed body, a dropped
connection, a truncated body, a hang), or
scripted per request number for tests that need an exact sequence.

Like a real provider it can also enforce a sliding-window request limit it does not advertise
(`rate_limit` requests per `rate_window_s`: 429 with the time until a slot frees), serve a fixed list of
models (`models`: GET /v1/models and the native GET /api/v1/models/<name>; another name gets 404 / 400
"Model not exist"; with `models` None the list is empty and any name is served). Those GETs are not
counted in `requests`, so probes leave fault scripts in place.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from oyster_exp.llm.reply_format import schema_from_text

NATIVE_PATH = "/api/v1/services/aigc/text-generation/generation"


@dataclass
class Faults:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_malformed: float = 0.0
    rate_hang: float = 0.0
    rate_drop: float = 0.0          # close the connection without answering
    rate_truncated: float = 0.0     # 200 with half a JSON body
    retry_after_s: float = 0.05
    retry_after_form: str = "seconds"   # how a 429 says it: "seconds" (Retry-After), "ms" (retry-after-ms), "date"
    hang_s: float = 5.0
    # Request n (1-based) gets script[n-1] when given, else the seeded draw. Kinds: "ok", "429",
    # "500", "malformed", "drop", "truncated", "hang", "401".
    script: tuple[str, ...] = ()


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
    api_key: str | None = None      # native route: a request without `Bearer <api_key>` gets 401
    root: str = ""                  # http://127.0.0.1:<port>, set by `serve`
    models: tuple[str, ...] | None = None   # the models served (None: any name)
    rate_limit: int | None = None   # requests accepted per sliding window (None: no limit); never advertised
    rate_window_s: float = 60.0
    throttled: int = 0              # requests refused by `rate_limit`
    arrivals: list[float] = field(default_factory=list)   # monotonic arrival time of each POST
    # A scripted world: OpenAI request body -> reply content (replaces the schema filler on that route)
    responder: Callable[[dict[str, Any]], str] | None = None
    _accepted: deque[float] = field(default_factory=deque)

    def over_limit(self, now: float) -> float | None:
        """Seconds until the window has room again when it is full now, else None (and the request counts)."""
        if self.rate_limit is None:
            return None
        while self._accepted and self._accepted[0] <= now - self.rate_window_s:
            self._accepted.popleft()
        if len(self._accepted) >= self.rate_limit:
            self.throttled += 1
            return self._accepted[0] + self.rate_window_s - now
        self._accepted.append(now)
        return None

    @property
    def dashscope_url(self) -> str:
        """The native API root to give the DashScope SDK as `base_url`."""
        return f"{self.root}/api/v1"


def _value(node: dict[str, Any], defs: dict[str, Any]) -> Any:
    if "$ref" in node:
        return _value(defs[node["$ref"].split("/")[-1]], defs)
    if "anyOf" in node:     # a nullable field (strict form): the first non-null branch
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        return _value(branches[0], defs) if branches else None
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


def _object_for(schema: dict[str, Any]) -> str:
    defs = schema.get("$defs", {})
    return json.dumps({k: _value(v, defs) for k, v in schema.get("properties", {}).items()})


THINK_FOREVER = "think-forever:"
"""A user message starting with this gets a reply that opens `<think>` and never closes it (a reasoning
phase that used the whole budget)."""


def _echo(messages: list[dict[str, Any]]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    last = users[-1] if users else ""
    if messages and messages[-1].get("role") == "assistant":   # an assistant prefill: continue it
        return "continued: " + last
    if last.startswith(THINK_FOREVER):
        return "<think>" + last
    return "echo: " + last


def reply_for(body: dict[str, Any]) -> str:
    rf = body.get("response_format") or {}
    schema = (rf.get("json_schema") or {}).get("schema")
    if schema:
        return _object_for(schema)
    return _echo(body.get("messages", []))


def native_reply_for(body: dict[str, Any]) -> str:
    """DashScope carries no schema on the wire: read it from the prompt, as a model would."""
    messages = (body.get("input") or {}).get("messages", [])
    for m in reversed(messages):
        schema = schema_from_text(str(m.get("content", "")))
        if schema:
            return _object_for(schema)
    return _echo(messages)


def fault_kind(state: ServerState, n: int) -> str:
    """The fault for request number n: scripted, else drawn from a seeded RNG by the configured rates."""
    f = state.faults
    if n <= len(f.script):
        return f.script[n - 1]
    r = random.Random(state.seed * 1_000_003 + n).random()
    for name, rate in (("429", f.rate_429), ("500", f.rate_500), ("malformed", f.rate_malformed),
                       ("drop", f.rate_drop), ("truncated", f.rate_truncated)):
        if r < rate:
            return name
        r -= rate
    return "hang" if 0 <= r < f.rate_hang else "ok"


def retry_headers(seconds: float, form: str = "seconds") -> dict[str, str]:
    """The wait in one of the forms providers use."""
    if form == "ms":
        return {"retry-after-ms": str(int(seconds * 1000))}
    if form == "date":
        import email.utils

        return {"Retry-After": email.utils.formatdate(time.time() + seconds, usegmt=True)}
    return {"Retry-After": f"{seconds:.3f}"}


def _respond(state: ServerState, body: dict[str, Any], n: int) -> tuple[int, bytes, dict[str, str], float]:
    """(status, payload, headers, extra delay) for request number n on the OpenAI-compatible route."""
    f = state.faults
    kind = fault_kind(state, n)
    if kind == "429":
        return 429, b'{"error": "rate limited"}', retry_headers(f.retry_after_s, f.retry_after_form), 0.0
    if kind == "500":
        return 500, b'{"error": "server error"}', {}, 0.0
    if kind == "401":
        return 401, b'{"error": "invalid api key"}', {}, 0.0
    if kind == "malformed":
        return 200, b'{"choices": []}', {}, 0.0
    if kind == "drop":
        return -1, b"", {}, 0.0
    content = state.responder(body) if state.responder else reply_for(body)
    thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
    payload = {"id": f"cmpl-{n}", "object": "chat.completion", "model": body.get("model"),
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content,
                                        "reasoning_content": "thinking..." if thinking else None}}],
               "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(content) // 4)}}
    data = json.dumps(payload).encode()
    delay = f.hang_s if kind == "hang" else 0.0
    return 200, data[: len(data) // 2] if kind == "truncated" else data, {}, delay


def _native_error(code: str, message: str, n: int) -> bytes:
    return json.dumps({"code": code, "message": message, "request_id": f"req-{n}"}).encode()


def _native_chunks(body: dict[str, Any], n: int, stream: bool) -> list[dict[str, Any]]:
    """The reply as DashScope frames: one frame, or (stream) reasoning, content halves, final usage."""
    params = body.get("parameters") or {}
    content = native_reply_for(body)
    reasoning = "thinking about it..." if params.get("enable_thinking") else ""
    usage = {"input_tokens": 10, "output_tokens": max(1, (len(content) + len(reasoning)) // 4)}
    usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]

    def frame(text: str, think: str, finish: str, with_usage: bool = True) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if reasoning:
            msg["reasoning_content"] = think
        return {"request_id": f"req-{n}", "output": {"choices": [{"finish_reason": finish, "message": msg}]},
                "usage": usage if with_usage else None}

    if not stream:
        return [frame(content, reasoning, "stop")]
    half = len(content) // 2
    frames = [frame("", reasoning, "null")] if reasoning else []
    return frames + [frame(content[:half], "", "null"), frame(content[half:], "", "stop")]


def make_app(state: ServerState) -> Any:
    """An aiohttp app: one event loop serves every connection, so the server adds almost no latency
    of its own and a benchmark measures the client, not the fixture."""
    from aiohttp import web

    def _enter(request: web.Request, body: dict[str, Any]) -> int:
        with state.lock:
            state.requests += 1
            n = state.requests
            state.arrivals.append(time.monotonic())
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            if state.keep_bodies:
                state.bodies.append({"auth": request.headers.get("Authorization"), "path": request.path,
                                     "sse": request.headers.get("X-DashScope-SSE"), **body})
        return n

    def _leave() -> None:
        with state.lock:
            state.in_flight -= 1

    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.close()
        raise ConnectionResetError("dropped by fault injection")

    def _throttle(native: bool) -> web.Response | None:
        """The undeclared sliding-window limit: 429 with the wait until a slot frees, or None (admitted)."""
        with state.lock:
            wait = state.over_limit(time.monotonic())
        if wait is None:
            return None
        body = (_native_error("Throttling.RateQuota", "Requests rate limit exceeded.", 0) if native
                else b'{"error": {"message": "rate limit exceeded", "type": "requests"}}')
        headers = retry_headers(max(wait, 0.0), state.faults.retry_after_form)
        return web.Response(status=429, body=body, headers=headers, content_type="application/json")

    def _unknown_model(body: dict[str, Any]) -> bool:
        return state.models is not None and body.get("model") not in state.models

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        n = _enter(request, body)
        try:
            refused = _throttle(native=False)
            if refused is not None:
                await asyncio.sleep(state.latency_s)
                return refused
            if _unknown_model(body):
                return web.Response(status=404, content_type="application/json",
                                    body=json.dumps({"error": {"message": f"The model `{body.get('model')}` does "
                                                               "not exist.", "code": 404}}).encode())
            status, payload, headers, delay = _respond(state, body, n)
            await asyncio.sleep(state.latency_s + delay)
            if status < 0:  # a dropped connection: no status line at all
                _drop(request)
            return web.Response(status=status, body=payload, headers=headers, content_type="application/json")
        finally:
            _leave()

    async def native(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = _enter(request, body)
        f = state.faults
        try:
            kind = fault_kind(state, n)
            if state.api_key is not None and request.headers.get("Authorization") != f"Bearer {state.api_key}":
                kind = "401"
            refused = _throttle(native=True) if kind != "401" else None
            if refused is not None:
                await asyncio.sleep(state.latency_s)
                return refused
            if _unknown_model(body) and kind != "401":
                return web.Response(status=400, body=_native_error("InvalidParameter", "Model not exist.", n),
                                    content_type="application/json")
            await asyncio.sleep(state.latency_s + (f.hang_s if kind == "hang" else 0.0))
            errors = {"429": (429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."),
                      "500": (500, "InternalError", "An internal error has occured, please try again later."),
                      "401": (401, "InvalidApiKey", "Invalid API-key provided.")}
            if kind in errors:
                status, code, message = errors[kind]
                headers = retry_headers(f.retry_after_s, f.retry_after_form) if kind == "429" else {}
                return web.Response(status=status, body=_native_error(code, message, n), headers=headers,
                                    content_type="application/json")
            if kind == "malformed":
                return web.Response(status=200, body=b'{"output": {}, "request_id": "x"}',
                                    content_type="application/json")
            if kind == "drop":
                _drop(request)
            stream = request.headers.get("X-DashScope-SSE") == "enable"
            frames = _native_chunks(body, n, stream)
            if not stream:
                data = json.dumps(frames[0]).encode()
                return web.Response(status=200, body=data[: len(data) // 2] if kind == "truncated" else data,
                                    content_type="application/json")
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i, fr in enumerate(frames):
                event = f"id:{i + 1}\nevent:result\n:HTTP_STATUS/200\ndata:{json.dumps(fr)}\n\n".encode()
                if kind == "truncated" and i == len(frames) - 1:  # the stream breaks off mid-frame
                    await resp.write(event[: len(event) // 2])
                    _drop(request)
                await resp.write(event)
            await resp.write_eof()
            return resp
        finally:
            _leave()

    async def stats(request: web.Request) -> web.Response:
        with state.lock:
            data = {"requests": state.requests, "max_in_flight": state.max_in_flight, "throttled": state.throttled,
                    "arrivals": list(state.arrivals) if request.query.get("arrivals") else None}
        return web.json_response(data)

    async def list_models(request: web.Request) -> web.Response:
        if state.api_key is not None and request.headers.get("Authorization") != f"Bearer {state.api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"}
                                                             for m in (state.models or ())]})

    async def native_model(request: web.Request) -> web.Response:
        if state.api_key is not None and request.headers.get("Authorization") != f"Bearer {state.api_key}":
            return web.Response(status=401, body=_native_error("InvalidApiKey", "Invalid API-key provided.", 0),
                                content_type="application/json")
        name = request.match_info["name"]
        if state.models is not None and name not in state.models:
            return web.Response(status=404, body=_native_error("ModelNotFound", "Model not exist.", 0),
                                content_type="application/json")
        return web.json_response({"request_id": "m", "output": {"id": name}})

    app = web.Application()
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/api/v1/models/{name}", native_model)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post(NATIVE_PATH, native)
    app.router.add_get("/v1/stats", stats)
    return app


@contextmanager
def serve(latency_s: float = 0.0, faults: Faults | None = None, seed: int = 0, keep_bodies: bool = True,
          api_key: str | None = None, port: int = 0, models: tuple[str, ...] | None = None,
          rate_limit: int | None = None, rate_window_s: float = 60.0,
          responder: Callable[[dict[str, Any]], str] | None = None) -> Iterator[tuple[str, ServerState]]:
    """Run the server on 127.0.0.1 in a background thread; yields (OpenAI base_url, state).

    `port` 0 takes a free one; a fixed port is a server coming back where a run found none.

    `state.dashscope_url` is the native root for the DashScope SDK; `api_key` makes that route
    answer 401 to any other key; `responder` answers the OpenAI route in place of the schema filler."""
    from aiohttp import web

    state = ServerState(latency_s=latency_s, faults=faults or Faults(), seed=seed, keep_bodies=keep_bodies,
                        api_key=api_key, models=models, rate_limit=rate_limit, rate_window_s=rate_window_s,
                        responder=responder)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # injected drops are not server errors
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(make_app(state), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", port)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    state.root = f"http://127.0.0.1:{port}"
    try:
        yield f"http://127.0.0.1:{port}/v1", state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="loopback LLM server (OpenAI-compatible and DashScope native)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rate-limit", type=int, default=None, help="requests per sliding window (not advertised)")
    ap.add_argument("--rate-window", type=float, default=60.0, help="the window, seconds")
    args = ap.parse_args()
    with serve(latency_s=args.latency, keep_bodies=False, port=args.port, rate_limit=args.rate_limit,
               rate_window_s=args.rate_window) as (url, state):
        print(url, flush=True)              # line 1: the OpenAI-compatible root
        print(state.dashscope_url, flush=True)  # line 2: the DashScope native root
        threading.Event().wait()


if __name__ == "__main__":
    main()
