"""The OpenAI-compatible client and the call engine against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import time
from typing import Literal

import pytest
from pydantic import BaseModel

from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
from oyster_exp.llm.engine import CallEngine
from oyster_exp.llm.openai_compat import OpenAICompatClient
from oyster_exp.llm.service import LLMService, RoleBinding
from oyster_exp.testing.loopback import Faults, serve


class Verdict(BaseModel):
    verdict: Literal["safe", "unsafe"]
    reason: str


def _req(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **kw)


def _client(url: str, **engine_kw) -> OpenAICompatClient:
    engine = CallEngine(**{"concurrency": 8, "max_attempts": 4, "backoff_base_s": 0.01, "timeout_s": 5.0,
                           **engine_kw})
    return OpenAICompatClient(url, "test-model", api_key_env="OYSTER_TEST_KEY", engine=engine)


def test_free_text_and_request_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OYSTER_TEST_KEY", "sk-test-not-a-real-key-000")
    with serve() as (url, state):
        out = _client(url).chat_batch([_req("hello", max_tokens=7, temperature=0.3, seed=11)])
    assert isinstance(out[0], ChatResponse) and out[0].content == "echo: hello"
    body = state.bodies[0]
    assert body["model"] == "test-model" and body["max_tokens"] == 7 and body["seed"] == 11
    assert body["auth"] == "Bearer sk-test-not-a-real-key-000"


def test_no_key_in_env_means_no_auth_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OYSTER_TEST_KEY", raising=False)
    with serve() as (url, state):
        _client(url).chat_batch([_req("x")])
    assert state.bodies[0]["auth"] is None


def test_structured_output_through_the_service() -> None:
    with serve() as (url, state):
        svc = LLMService({"judge": RoleBinding(client=_client(url))})
        out = svc.structured("judge", [[ChatMessage(role="user", content="judge")]], Verdict)[0]
    assert out.value == Verdict(verdict="safe", reason="ok")
    rf = state.bodies[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"]["properties"]["verdict"]["enum"]


def test_reasoning_passthrough() -> None:
    with serve() as (url, _):
        out = _client(url).chat_batch([_req("think", enable_thinking=True)])[0]
    assert isinstance(out, ChatResponse) and out.reasoning == "thinking..."


def test_faults_are_retried_and_every_call_completes() -> None:
    faults = Faults(rate_429=0.2, rate_500=0.15, rate_malformed=0.1, retry_after_s=0.02)
    with serve(faults=faults, seed=3) as (url, state):
        # 45% of requests fail; which ones depends on arrival order under concurrency, so the attempt budget
        # must make "all 60 succeed" near certain: 0.45**16 * 60 ~ 1e-4 (8 attempts failed ~10% of runs)
        client = _client(url, max_attempts=16)
        out = client.chat_batch([_req(f"q{i}") for i in range(60)])
    assert all(isinstance(o, ChatResponse) for o in out), [o for o in out if isinstance(o, str)]
    assert [o.content for o in out] == [f"echo: q{i}" for i in range(60)]  # order kept
    assert client.engine.stats.retries > 0 and state.requests == 60 + client.engine.stats.retries


def test_permanent_failure_becomes_a_reason_not_an_exception() -> None:
    with serve(faults=Faults(rate_500=1.0)) as (url, _):
        client = _client(url, max_attempts=3)
        out = client.chat_batch([_req("a"), _req("b")])
    assert all(isinstance(o, str) and "after 3 attempts" in o and "500" in o for o in out)
    assert client.engine.stats.failures == 2


def test_timeout_is_a_failure_with_its_reason() -> None:
    with serve(faults=Faults(rate_hang=1.0, hang_s=2.0)) as (url, _):
        out = _client(url, max_attempts=1, timeout_s=0.3).chat_batch([_req("slow")])
    assert isinstance(out[0], str) and "timeout" in out[0]


def test_retry_after_is_honoured() -> None:
    with serve(faults=Faults(rate_429=1.0, retry_after_s=0.4)) as (url, _):
        t0 = time.monotonic()
        out = _client(url, max_attempts=2).chat_batch([_req("x")])
    assert isinstance(out[0], str) and "429" in out[0]
    assert time.monotonic() - t0 >= 0.4


def test_concurrency_is_bounded_and_used() -> None:
    with serve(latency_s=0.05) as (url, state):
        out = _client(url, concurrency=6).chat_batch([_req(f"q{i}") for i in range(30)])
    assert all(isinstance(o, ChatResponse) for o in out)
    assert state.max_in_flight == 6


def test_dropped_connections_and_truncated_bodies_are_retried() -> None:
    with serve(faults=Faults(rate_drop=0.25, rate_truncated=0.25), seed=5) as (url, state):
        client = _client(url, max_attempts=10)
        out = client.chat_batch([_req(f"q{i}") for i in range(40)])
    assert [o.content for o in out if isinstance(o, ChatResponse)] == [f"echo: q{i}" for i in range(40)]
    assert client.engine.stats.retries > 0
