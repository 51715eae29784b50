"""The backend contract: a chat request in, a chat response out, optionally schema-constrained.

Every backend (local transformers, OpenAI-compatible HTTP, DashScope) implements `LLMClient`.
Structured output is part of the request (`response_schema`, a JSON schema of a flat object) so
that remote backends can forward it as `response_format` and the local backend can decode into a
fixed JSON frame. Callers never parse free text themselves: they validate `ChatResponse.content`
against the pydantic model they asked for.

A conversation that ends with an assistant message asks the backend to continue that message (an
assistant prefill) rather than open a new turn: the reply is only the continuation. The evaluation uses
it to close a reasoning phase that ran out of budget and make the model answer (`generation.py`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


def continues_assistant(messages: list[ChatMessage]) -> bool:
    """Does this conversation end in an assistant message the backend should continue (a prefill)?"""
    return bool(messages) and messages[-1].role == "assistant"


class ChatRequest(BaseModel):
    messages: list[ChatMessage]
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    # JSON schema (pydantic `model_json_schema()`) of a flat object: properties of type string,
    # enum (string or integer), or array of strings. None = free text.
    response_schema: dict[str, Any] | None = None
    # Token budget per free-text field when `response_schema` is set (local backend).
    max_tokens_per_field: int = Field(48, ge=1)
    enable_thinking: bool = False

    def token_estimate(self) -> int:
        """Tokens this request may cost, before it is sent (for tokens-per-minute limits): prompt characters / 3
        plus the reply budget. The limiter replaces it with the reply's real usage once it comes."""
        return sum(len(m.content) for m in self.messages) // 3 + self.max_tokens

    def cache_key(self, backend: str, model_id: str) -> str:
        """Stable hash of everything that determines the reply (used by the call cache)."""
        payload = {"backend": backend, "model": model_id, **self.model_dump(mode="json")}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatResponse(BaseModel):
    content: str
    reasoning: str = ""
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str = "stop"


@runtime_checkable
class LLMClient(Protocol):
    """One model behind one backend. `backend` and `model_id` enter cache keys, so they must name
    the model's identity (not a machine-specific path)."""

    backend: str
    model_id: str

    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse | str]:
        """Answer several requests in order; a request that failed for good is its reason (a string).

        Backends that can batch (local) generate them together; remote ones run them concurrently.
        """
        ...


OnReply = Callable[[int, ChatResponse], None]
"""Called with (index, reply) as each request of a remote batch succeeds (`LLMService` caches it at once)."""


class LLMError(RuntimeError):
    """A backend failure worth a retry (transport, rate limit, server error)."""
