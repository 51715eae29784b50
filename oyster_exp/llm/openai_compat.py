"""Any `/v1/chat/completions` server: vLLM, SGLang, llama.cpp server, DashScope compatible mode.

Requests go through the `CallEngine` (bounded concurrency, the endpoint's shared limiter, retries honouring
Retry-After in every form). The API key is read from the environment variable named in the config, never
from the config itself, and is never logged. Every schema goes out in strict form (`strict_schema`).

`probe` checks the endpoint once before a stage's first call (GET /models; a 1-token call where a server
has no model list), so a dead server, a refused key or an unknown model stop the run at once.
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import httpx

from oyster_exp.llm.base import ChatRequest, ChatResponse, OnReply, Usage, continues_assistant
from oyster_exp.llm.engine import CallEngine, FatalError, RetryableError
from oyster_exp.llm.limits import endpoint_limiter, key_id, retry_after_s
from oyster_exp.llm.strict_schema import strict_schema

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
PROBE_TIMEOUT_S = 10.0


def parse_completion(body: Any) -> ChatResponse:
    """A chat completion body -> ChatResponse; anything malformed is a retryable error, not data."""
    try:
        choice = body["choices"][0]
        msg = choice["message"]
        content = msg.get("content")
        if content is None:
            raise KeyError("content")
        reasoning = msg.get("reasoning_content") or msg.get("reasoning") or ""
        usage = body.get("usage") or {}
        return ChatResponse(content=content, reasoning=reasoning, finish_reason=choice.get("finish_reason") or "stop",
                            usage=Usage(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                        completion_tokens=int(usage.get("completion_tokens", 0))))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise RetryableError(f"malformed response body (missing {e})") from None


class OpenAICompatClient:
    backend = "openai_compat"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 json_schema: bool = True, thinking_param: str | None = "chat_template_kwargs",
                 engine: CallEngine | None = None, headers: dict[str, str] | None = None):
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.api_key_env = api_key_env
        self.json_schema = json_schema
        self.thinking_param = thinking_param
        self.engine = engine or CallEngine()
        self.engine.label = self.engine.label or f"openai {model}"
        self.headers = dict(headers or {})
        key = os.environ.get(api_key_env) if api_key_env else None
        self.endpoint = (self.base_url, key_id(key))   # (URL, key hash): one limiter and one probe per pair
        self.engine.attach(endpoint_limiter(self.base_url, key))
        self._strict: tuple[dict[str, Any], dict[str, Any]] | None = None   # (last schema, its strict form)

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", **self.headers}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def body(self, req: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_id, "messages": [m.model_dump() for m in req.messages],
                                "max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p,
                                "seed": req.seed}
        if req.response_schema is not None:
            schema = self._strict_form(req.response_schema)
            body["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
                if self.json_schema else {"type": "json_object"})
        if continues_assistant(req.messages):  # vLLM's and SGLang's names for an assistant prefill
            body["continue_final_message"], body["add_generation_prompt"] = True, False
        if req.enable_thinking and self.thinking_param == "chat_template_kwargs":
            body["chat_template_kwargs"] = {"enable_thinking": True}
        elif self.thinking_param == "enable_thinking":
            body["enable_thinking"] = bool(req.enable_thinking)
        return body

    def _strict_form(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The strict form of a batch's schema, computed once per batch (the service sends one dict per batch;
        holding it keeps the identity test sound)."""
        if self._strict is None or self._strict[0] is not schema:
            self._strict = (schema, strict_schema(schema))
        return self._strict[1]

    async def _post(self, session: aiohttp.ClientSession, url: str, req: ChatRequest,
                    headers: dict[str, str]) -> ChatResponse:
        data = json.dumps(self.body(req)).encode()
        try:
            async with session.post(url, data=data, headers=headers, allow_redirects=False) as resp:
                status, payload = resp.status, await resp.read()
                retry_after = retry_after_s(resp.headers) if status in RETRYABLE_STATUS else None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise RetryableError("timeout") from None
        except (aiohttp.ClientError, OSError) as e:
            raise RetryableError(f"transport error: {type(e).__name__}") from None
        if status in RETRYABLE_STATUS:
            raise RetryableError(f"HTTP {status}", retry_after=retry_after, throttled=status == 429)
        if status >= 400:
            raise FatalError(f"HTTP {status}: {payload[:200].decode(errors='replace')}")
        try:
            body = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RetryableError("malformed response body (not JSON)") from None
        return parse_completion(body)

    async def achat_batch(self, requests: list[ChatRequest], on_reply: OnReply | None = None,
                          budgets: list[int] | None = None) -> list[ChatResponse | str]:
        n = self.engine.concurrency
        headers = self._headers()   # once per batch: the key is read from the environment here
        # aiohttp, not httpx: httpcore's pool bookkeeping cost ~3 ms of CPU per call at 32 connections (see
        # `transport.py`); the engine's timeout bounds each call, the session's only the connect
        connector = aiohttp.TCPConnector(limit=n, limit_per_host=n, keepalive_timeout=30.0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=PROBE_TIMEOUT_S)
        url = f"{self.base_url}/chat/completions"
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True) as session:
            calls = [lambda r=r: self._post(session, url, r, headers) for r in requests]
            estimate = (lambda i: requests[i].token_estimate()) if self.engine.tokens_per_minute else None
            return await self.engine.run(calls, estimate_tokens=estimate, on_reply=on_reply, budgets=budgets)

    def chat_batch(self, requests: list[ChatRequest], on_reply: OnReply | None = None,
                   budgets: list[int] | None = None) -> list[ChatResponse | str]:
        return asyncio.run(self.achat_batch(requests, on_reply, budgets))

    def probe(self) -> str | None:
        """None when the endpoint answers, knows the key and serves the model; else why not (no key in it).

        GET /models first (costs nothing); where a server has no such route (404/405) a 1-token call decides.
        Only the three causes that no retry can fix fail the probe: unreachable, key refused, model unknown;
        a busy or erroring server (429, 5xx) passes, and its calls are retried as usual."""
        headers = self._headers()
        try:
            with httpx.Client(timeout=httpx.Timeout(PROBE_TIMEOUT_S)) as http:
                r = http.get(f"{self.base_url}/models", headers=headers)
                if r.status_code in (401, 403):
                    return f"the key was refused (HTTP {r.status_code})"
                if r.status_code == 200:
                    try:
                        ids = [m.get("id") for m in (r.json().get("data") or []) if isinstance(m, dict)]
                    except (ValueError, AttributeError):
                        ids = []
                    if self.model_id in ids or not ids:   # an empty list cannot tell: the first call will
                        return None
                    return f"unknown model {self.model_id!r} (the server lists {', '.join(map(str, ids[:5]))})"
                if r.status_code not in (404, 405):
                    return None
                body = {"model": self.model_id, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
                r = http.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
        except httpx.TransportError as e:
            return f"unreachable ({type(e).__name__})"
        if r.status_code in (401, 403):
            return f"the key was refused (HTTP {r.status_code})"
        text = r.text[:300].lower()
        if r.status_code == 404 or (r.status_code == 400 and "model" in text and
                                    any(w in text for w in ("not exist", "not found", "unknown"))):
            return f"unknown model {self.model_id!r} (HTTP {r.status_code})"
        return None
