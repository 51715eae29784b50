"""A loopback OpenAI-compatible server with latency and fault injection (tests and benchmarks).

Replies are deterministic: a JSON schema in `response_format` gets a schema-valid object (first
enum option, "ok" strings), free text gets an echo of the last user message. Faults are drawn
from a seeded RNG per request: 429 with Retry-After, 500, a malformed body, or a hang.
"""
from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Faults:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_malformed: float = 0.0
    rate_hang: float = 0.0
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


def make_handler(state: ServerState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            with state.lock:
                stats = {"requests": state.requests, "max_in_flight": state.max_in_flight}
            self._send(200, json.dumps(stats).encode())

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with state.lock:
                state.requests += 1
                n = state.requests
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                if state.keep_bodies:
                    state.bodies.append({"auth": self.headers.get("Authorization"), **body})
            try:
                r = random.Random(state.seed * 1_000_003 + n).random()
                f = state.faults
                time.sleep(state.latency_s)
                if r < f.rate_429:
                    self._send(429, b'{"error": "rate limited"}', {"Retry-After": str(f.retry_after_s)})
                    return
                r -= f.rate_429
                if r < f.rate_500:
                    self._send(500, b'{"error": "server error"}')
                    return
                r -= f.rate_500
                if r < f.rate_malformed:
                    self._send(200, b'{"choices": []}')
                    return
                r -= f.rate_malformed
                if r < f.rate_hang:
                    time.sleep(f.hang_s)
                content = reply_for(body)
                payload = {"id": f"cmpl-{n}", "object": "chat.completion", "model": body.get("model"),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content,
                                                    "reasoning_content": "thinking..." if body.get(
                                                        "chat_template_kwargs", {}).get("enable_thinking") else None}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": max(1, len(content) // 4)}}
                self._send(200, json.dumps(payload).encode())
            finally:
                with state.lock:
                    state.in_flight -= 1

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


@contextmanager
def serve(latency_s: float = 0.0, faults: Faults | None = None, seed: int = 0, keep_bodies: bool = True
          ) -> Iterator[tuple[str, ServerState]]:
    """Run the server on 127.0.0.1 (a free port) in a thread; yields (base_url, state)."""
    state = ServerState(latency_s=latency_s, faults=faults or Faults(), seed=seed, keep_bodies=keep_bodies)
    server = _Server(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    ap = argparse.ArgumentParser(description="loopback OpenAI-compatible server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    state = ServerState(latency_s=args.latency, keep_bodies=False)
    server = _Server(("127.0.0.1", args.port), make_handler(state))
    print(f"http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
