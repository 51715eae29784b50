"""Any `/v1/chat/completions` server: vLLM, SGLang, llama.cpp server, DashScope compatible mode.

Requests go through the `CallEngine` (bounded concurrency, rate limits, retries honouring
Retry-After). The API key is read from the environment variable named in the config, never from
the config itself, and is never logged.
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx

from oyster_exp.llm.base import ChatRequest, ChatResponse, OnReply, Usage, continues_assistant
from oyster_exp.llm.engine import CallEngine, FatalError, RetryableError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


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
            body["response_format"] = (
                {"type": "json_schema", "json_schema": {"name": "reply", "schema": req.response_schema,
                                                        "strict": True}}
                if self.json_schema else {"type": "json_object"})
        if continues_assistant(req.messages):  # vLLM's and SGLang's names for an assistant prefill
            body["continue_final_message"], body["add_generation_prompt"] = True, False
        if req.enable_thinking and self.thinking_param == "chat_template_kwargs":
            body["chat_template_kwargs"] = {"enable_thinking": True}
        elif self.thinking_param == "enable_thinking":
            body["enable_thinking"] = bool(req.enable_thinking)
        return body

    async def _post(self, client: httpx.AsyncClient, req: ChatRequest) -> ChatResponse:
        try:
            resp = await client.post(f"{self.base_url}/chat/completions", json=self.body(req), headers=self._headers())
        except httpx.TimeoutException:
            raise RetryableError("timeout") from None
        except httpx.TransportError as e:
            raise RetryableError(f"transport error: {type(e).__name__}") from None
        if resp.status_code in RETRYABLE_STATUS:
            raise RetryableError(f"HTTP {resp.status_code}", retry_after=_retry_after(resp))
        if resp.status_code >= 400:
            raise FatalError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            data = resp.json()
        except json.JSONDecodeError:
            raise RetryableError("malformed response body (not JSON)") from None
        return parse_completion(data)

    async def achat_batch(self, requests: list[ChatRequest], on_reply: OnReply | None = None
                          ) -> list[ChatResponse | str]:
        limits = httpx.Limits(max_connections=self.engine.concurrency,
                              max_keepalive_connections=self.engine.concurrency)
        async with httpx.AsyncClient(timeout=self.engine.timeout_s, limits=limits) as client:
            calls = [lambda r=r: self._post(client, r) for r in requests]
            return await self.engine.run(calls, on_reply=on_reply)

    def chat_batch(self, requests: list[ChatRequest], on_reply: OnReply | None = None) -> list[ChatResponse | str]:
        return asyncio.run(self.achat_batch(requests, on_reply))
