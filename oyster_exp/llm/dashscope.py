"""DashScope through its native SDK (dashscope 2.x `AsyncClient`, native protocol), run by the `CallEngine`.

The SDK sends the request; every policy decision is ours: the SDK's own retries are switched
off (`max_retries=0`) so that concurrency, rate limits, backoff honouring Retry-After, per-call
timeouts and the failure reason after the last attempt all come from one place, the engine.
Errors are classified here: 429, 5xx, timeouts, dropped connections and malformed bodies are
worth another attempt; a bad key (401/403) and other 4xx are not, and fail at once.

QwQ and other thinking models are served as streams only, so a request that asks for thinking
is streamed (SSE) and the deltas are joined; `reasoning_content` becomes `ChatResponse.reasoning`.
The native API cannot carry a JSON schema, so a structured request gets the schema in its prompt
(`schema_prompt`), plus `response_format={"type": "json_object"}` where the model supports it.

The key is read once from the environment variable named by `api_key_env` (a config value names
the variable, never the key); it is kept out of reprs, logs and failure reasons. Throttling (429,
`Throttling*` codes) slows the whole endpoint through its shared limiter (`limits.py`); `probe` checks the
endpoint, the key and the model once before a stage's first call (GET models/<model>, which costs no tokens).
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx

from oyster_exp.core.redaction import REDACTED, SECRET_VALUE
from oyster_exp.llm import limits, transport
from oyster_exp.llm.base import ChatRequest, ChatResponse, OnReply, Usage, continues_assistant
from oyster_exp.llm.engine import CallEngine, FatalError, RetryableError
from oyster_exp.llm.limits import endpoint_limiter, key_id, retry_after_s
from oyster_exp.llm.reply_format import json_text, schema_instruction

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/api/v1"
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
RETRYABLE_CODES = ("Throttling", "InternalError", "ServiceUnavailable", "GatewayTimeout", "RequestTimeOut")
THROTTLING_CODES = ("Throttling",)   # Throttling, Throttling.RateQuota, Throttling.AllocationQuota, ...
UNKNOWN_MODEL = ("model not exist", "modelnotfound", "model_not_found", "not found")
PROBE_TIMEOUT_S = 10.0


class MissingAPIKey(RuntimeError):
    """The environment variable that should hold the key is unset or empty."""


class DashScopeClient:
    backend = "dashscope"

    def __init__(self, model: str, api_key_env: str = "DASHSCOPE_API_KEY", base_url: str | None = None,
                 json_mode: bool = False, stream: bool | None = None, thinking_budget: int | None = None,
                 workspace: str | None = None, engine: CallEngine | None = None):
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise MissingAPIKey(f"the DashScope backend needs an API key in the environment variable {api_key_env} "
                                f"(export {api_key_env}=sk-...); it is not set")
        self._key = key
        self.api_key_env = api_key_env
        self.model_id = model
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.json_mode = json_mode
        self.stream = stream
        self.thinking_budget = thinking_budget
        self.workspace = workspace
        self.engine = engine or CallEngine()
        self.engine.label = self.engine.label or f"dashscope {model}"
        self.endpoint = (self.base_url, key_id(key))   # (URL, key hash): one limiter and one probe per pair
        self.engine.attach(endpoint_limiter(self.base_url, key))
        # The SDK takes ~1 s to import: pay it here, once, rather than inside the first batch's calls (where it
        # stalled every call of that batch, and the import error, if any, would come mid-stage)
        import dashscope.v2.errors  # noqa: F401  (`_classify` reads them)
        from dashscope import AsyncClient

        self._sdk_client = AsyncClient

    def __repr__(self) -> str:  # no key, ever
        return f"DashScopeClient(model={self.model_id!r}, base_url={self.base_url!r})"

    def _scrub(self, text: str) -> str:
        return SECRET_VALUE.sub(REDACTED, text.replace(self._key, REDACTED))

    def kwargs(self, req: ChatRequest) -> dict[str, Any]:
        """The SDK call's arguments for one request (pure; the tests read it)."""
        messages = [m.model_dump() for m in req.messages]
        if req.response_schema is not None:
            last = messages[-1]
            last["content"] = f"{last['content']}\n\n{schema_instruction(req.response_schema)}"
        if continues_assistant(req.messages):
            messages[-1]["partial"] = True  # DashScope's partial mode: continue the final assistant message
        kw: dict[str, Any] = {"model": self.model_id, "messages": messages, "temperature": req.temperature,
                              "top_p": req.top_p, "max_tokens": req.max_tokens, "seed": req.seed,
                              "enable_thinking": req.enable_thinking,
                              "stream": self.stream if self.stream is not None else req.enable_thinking}
        if req.enable_thinking and self.thinking_budget:
            kw["thinking_budget"] = self.thinking_budget
        if req.response_schema is not None and self.json_mode:
            kw["response_format"] = {"type": "json_object"}
        return kw

    def _classify(self, e: Exception) -> Exception:
        """An SDK or transport exception -> RetryableError / FatalError with a key-free reason."""
        from dashscope.v2.errors import APIConnectionError, APITimeoutError, DashScopeError

        if isinstance(e, (APITimeoutError, httpx.TimeoutException)):
            return RetryableError("timeout")
        if isinstance(e, APIConnectionError):
            return RetryableError(f"connection error: {type(e.__cause__ or e).__name__}")
        if isinstance(e, httpx.TransportError):  # raised while reading a stream
            return RetryableError(f"connection error: {type(e).__name__}")
        if isinstance(e, DashScopeError):
            status, code = e.status_code, str(e.code or "")
            what = f"HTTP {status}" + (f" {code}" if code else "")
            if status in (401, 403) or code.startswith(("InvalidApiKey", "AccessDenied")):
                return FatalError(f"{what}: the key in {self.api_key_env} was refused (bad, expired or "
                                  f"not entitled to {self.model_id}); not retried")
            if (status in RETRYABLE_STATUS) or code.startswith(RETRYABLE_CODES):
                return RetryableError(what, retry_after=retry_after_s(e.headers or {}),
                                      throttled=status == 429 or code.startswith(THROTTLING_CODES))
            if status is None and not code:  # malformed SSE payload and the like
                return RetryableError(f"malformed response body ({self._scrub(e.message)[:120]})")
            return FatalError(f"{what}: {self._scrub(str(e.message))[:200]}")
        if isinstance(e, (ValueError, TypeError, KeyError)):  # JSONDecodeError, pydantic ValidationError
            return RetryableError(f"malformed response body ({type(e).__name__})")
        return e

    async def _call(self, client: Any, req: ChatRequest) -> ChatResponse:
        kw = self.kwargs(req)
        try:
            if kw["stream"]:
                stream = await client.chat.completions.create(**kw)
                limits.answered()   # the stream is open: the provider has counted the request
                try:
                    completion = await stream.get_final_message()
                finally:
                    await stream.aclose()
            else:
                completion = await client.chat.completions.create(**kw)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise self._classify(e) from None
        return self.to_response(completion, structured=req.response_schema is not None)

    @staticmethod
    def to_response(completion: Any, structured: bool) -> ChatResponse:
        if not completion.choices:
            raise RetryableError("malformed response body (no choices)")
        choice = completion.choices[0]
        content = choice.message.content
        if content is None:
            raise RetryableError("malformed response body (no content)")
        usage = completion.usage
        finish = choice.finish_reason if choice.finish_reason not in (None, "null") else "stop"
        return ChatResponse(content=json_text(content) if structured else content,
                            reasoning=choice.message.reasoning_content or "", finish_reason=finish,
                            usage=Usage(prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                                        completion_tokens=int(getattr(usage, "output_tokens", 0) or 0)))

    def _client(self) -> Any:
        n = self.engine.concurrency
        # Our own pool (sized to the engine's concurrency, all kept alive) with the key as a default
        # header; the SDK builds URLs from base_url and never retries (max_retries=0).
        # On aiohttp's pool (`transport.py`): httpcore's bookkeeping was most of the SDK path's CPU per call.
        http = transport.async_client(n, self.engine.timeout_s, headers={"Authorization": f"Bearer {self._key}"})
        return self._sdk_client(api_key=self._key, base_url=self.base_url, workspace=self.workspace, protocol="native",
                           timeout=self.engine.timeout_s, max_retries=0, http_client=http), http

    async def achat_batch(self, requests: list[ChatRequest], on_reply: OnReply | None = None,
                          budgets: list[int] | None = None) -> list[ChatResponse | str]:
        client, http = self._client()
        try:
            calls = [lambda r=r: self._call(client, r) for r in requests]
            estimate = (lambda i: requests[i].token_estimate()) if self.engine.tokens_per_minute else None
            return await self.engine.run(calls, estimate_tokens=estimate, on_reply=on_reply, budgets=budgets)
        finally:
            await client.aclose()
            await http.aclose()

    def chat_batch(self, requests: list[ChatRequest], on_reply: OnReply | None = None,
                   budgets: list[int] | None = None) -> list[ChatResponse | str]:
        return asyncio.run(self.achat_batch(requests, on_reply, budgets))

    def probe(self) -> str | None:
        """None when the endpoint answers, takes the key and knows the model; else why not (never the key).

        GET <base>/models/<model> costs no tokens. Only what no retry can fix fails: unreachable, key refused,
        model unknown. Any other answer (429, 5xx, a 404 from a deployment without that route) passes."""
        url = f"{self.base_url}/models/{self.model_id}"
        headers = {"Authorization": f"Bearer {self._key}"}
        if self.workspace:
            headers["X-DashScope-WorkSpace"] = self.workspace
        try:
            r = httpx.get(url, headers=headers, timeout=PROBE_TIMEOUT_S)
        except httpx.TransportError as e:
            return f"unreachable ({type(e).__name__})"
        try:
            code = str((r.json() or {}).get("code") or "")
        except ValueError:
            code = ""
        if r.status_code in (401, 403) or code.startswith(("InvalidApiKey", "AccessDenied")):
            return f"the key in {self.api_key_env} was refused (HTTP {r.status_code}{' ' + code if code else ''})"
        text = self._scrub(r.text[:300]).lower()
        if r.status_code in (400, 404) and code and any(w in (code.lower() + " " + text) for w in UNKNOWN_MODEL):
            return f"unknown model {self.model_id!r} (HTTP {r.status_code} {code})"
        return None

