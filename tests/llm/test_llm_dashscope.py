"""The DashScope client: the real dashscope SDK against the loopback server's DashScope-native route.

DashScope's servers are out of reach here, so the SDK's base_url points at a real aiohttp server
on 127.0.0.1 that speaks the native protocol (JSON and SSE) and injects faults by script.
"""
from __future__ import annotations

import logging
import secrets
import string
import time
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
from oyster_exp.llm.dashscope import DashScopeClient, MissingAPIKey
from oyster_exp.llm.engine import CallEngine
from oyster_exp.llm.service import LLMService, RoleBinding
from oyster_exp.testing.loopback import Faults, serve

ENV = "OYSTER_TEST_DASHSCOPE_KEY"


class Verdict(BaseModel):
    verdict: Literal["safe", "unsafe"]
    reason: str


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "sk-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    monkeypatch.setenv(ENV, value)
    return value


def _client(url: str, **kw) -> DashScopeClient:
    engine_kw = {"concurrency": 8, "max_attempts": 3, "backoff_base_s": 0.01, "timeout_s": 5.0, "progress": False}
    engine_kw.update({k: kw.pop(k) for k in list(kw) if k in engine_kw})
    return DashScopeClient("qwq-32b", api_key_env=ENV, base_url=url, engine=CallEngine(**engine_kw), **kw)


def _req(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **kw)


def test_success_sends_the_native_request_and_reads_usage(key: str) -> None:
    with serve(api_key=key) as (_, state):
        out = _client(state.dashscope_url).chat_batch([_req("hello", max_tokens=7, temperature=0.4, top_p=0.8,
                                                            seed=11)])
    (resp,) = out
    assert isinstance(resp, ChatResponse) and resp.content == "echo: hello" and resp.reasoning == ""
    assert resp.usage.prompt_tokens == 10 and resp.usage.completion_tokens > 0
    body = state.bodies[0]
    assert body["path"] == "/api/v1/services/aigc/text-generation/generation" and body["sse"] is None
    assert body["auth"] == f"Bearer {key}" and body["model"] == "qwq-32b"
    assert body["input"]["messages"] == [{"role": "user", "content": "hello"}]
    p = body["parameters"]
    assert (p["max_tokens"], p["temperature"], p["top_p"], p["seed"]) == (7, 0.4, 0.8, 11)
    assert p["result_format"] == "message" and p["enable_thinking"] is False and "response_format" not in p


def test_thinking_request_streams_and_returns_reasoning(key: str) -> None:
    with serve(api_key=key) as (_, state):
        (resp,) = _client(state.dashscope_url, thinking_budget=512).chat_batch([_req("why?", enable_thinking=True)])
    assert isinstance(resp, ChatResponse)
    assert resp.content == "echo: why?" and resp.reasoning == "thinking about it..."
    assert state.bodies[0]["sse"] == "enable"
    p = state.bodies[0]["parameters"]
    assert p["enable_thinking"] is True and p["incremental_output"] is True and p["thinking_budget"] == 512


def test_429_waits_as_long_as_retry_after_says(key: str) -> None:
    with serve(api_key=key, faults=Faults(script=("429",), retry_after_s=0.8)) as (_, state):
        client = _client(state.dashscope_url)
        t0 = time.monotonic()
        (resp,) = client.chat_batch([_req("x")])
        waited = time.monotonic() - t0
    assert isinstance(resp, ChatResponse) and state.requests == 2
    assert waited >= 0.8, f"retried after {waited:.2f}s, before Retry-After (backoff alone would be ~0.01 s)"
    assert client.engine.stats.retries == 1


def test_5xx_then_success_and_persistent_5xx_fails_with_reason(key: str) -> None:
    with serve(api_key=key, faults=Faults(script=("500", "ok", "500", "500", "500"))) as (_, state):
        client = _client(state.dashscope_url, concurrency=1)
        first, second = client.chat_batch([_req("a"), _req("b")])
    assert isinstance(first, ChatResponse)
    assert second == "after 3 attempts: HTTP 500 InternalError"
    assert state.requests == 5


def test_a_stalled_call_times_out_and_is_retried(key: str) -> None:
    with serve(api_key=key, faults=Faults(script=("hang", "ok"), hang_s=5.0)) as (_, state):
        client = _client(state.dashscope_url, timeout_s=0.5)
        t0 = time.monotonic()
        (resp,) = client.chat_batch([_req("slow")])
        elapsed = time.monotonic() - t0
    assert isinstance(resp, ChatResponse) and state.requests == 2
    assert 0.5 <= elapsed < 3.0


@pytest.mark.parametrize("thinking", [False, True], ids=["json", "sse"])
def test_malformed_truncated_and_dropped_replies_are_retried_not_data(key: str, thinking: bool) -> None:
    script = ("malformed", "truncated", "drop", "ok")
    with serve(api_key=key, faults=Faults(script=script)) as (_, state):
        client = _client(state.dashscope_url, max_attempts=4)
        (resp,) = client.chat_batch([_req("x", enable_thinking=thinking)])
        with serve(api_key=key, faults=Faults(script=script[:3])) as (_, state2):
            (failed,) = _client(state2.dashscope_url).chat_batch([_req("y", enable_thinking=thinking)])
    assert isinstance(resp, ChatResponse) and resp.content == "echo: x" and state.requests == 4
    assert isinstance(failed, str) and failed.startswith("after 3 attempts: connection error")
    assert client.engine.stats.retries == 3


def test_a_refused_key_is_fatal_at_once_and_never_printed(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    wrong = "sk-" + "w" * 32
    monkeypatch.setenv(ENV, wrong)
    monkeypatch.setenv("DASHSCOPE_LOG", "debug")
    caplog.set_level(logging.DEBUG)
    with serve(api_key="sk-" + "r" * 32) as (_, state):
        client = _client(state.dashscope_url, max_attempts=5)
        out = client.chat_batch([_req("a"), _req("b")])
    assert state.requests == 2, "a 401 must not be retried"
    for reason in out:
        assert isinstance(reason, str) and reason.startswith("fatal: HTTP 401 InvalidApiKey")
        assert ENV in reason and wrong not in reason
    assert client.engine.stats.retries == 0
    assert wrong not in caplog.text and wrong not in repr(client)


def test_a_missing_key_fails_when_the_client_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(MissingAPIKey, match=ENV):
        DashScopeClient("qwq-32b", api_key_env=ENV)


@pytest.mark.parametrize("json_mode", [False, True])
def test_structured_replies_through_the_service(key: str, json_mode: bool) -> None:
    with serve(api_key=key) as (_, state):
        svc = LLMService({"judge": RoleBinding(client=_client(state.dashscope_url, json_mode=json_mode))})
        (out,) = svc.structured("judge", [[ChatMessage(role="user", content="judge this")]], Verdict)
    assert out.value == Verdict(verdict="safe", reason="ok")
    p = state.bodies[0]["parameters"]
    assert ("response_format" in p) is json_mode
    if json_mode:
        assert p["response_format"] == {"type": "json_object"}
    prompt = state.bodies[0]["input"]["messages"][-1]["content"]
    assert prompt.startswith("judge this") and '"enum": ["safe", "unsafe"]' in prompt
    assert svc.usage.totals()["calls"] == 1


def test_fenced_json_is_cut_out_but_not_repaired() -> None:
    from oyster_exp.llm.reply_format import json_text

    assert json_text('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert json_text('Sure: {"a": 1}.') == '{"a": 1}'
    assert json_text("no json here") == "no json here"


# llm=hybrid: the actor in-process on the base model, the judges and the editor on DashScope.
HYBRID_KEY = "sk-" + "h" * 32


def test_each_role_talks_to_its_own_backend(compose_cfg, tiny_model_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from oyster_exp.csa.replies import UserJudgementReply
    from oyster_exp.llm.build import build_service

    monkeypatch.setenv("DASHSCOPE_API_KEY", HYBRID_KEY)
    with serve(api_key=HYBRID_KEY) as (_, state):
        cfg = compose_cfg("llm=hybrid", "model=tiny_random", f"llm.base_url={state.dashscope_url}",
                          "llm.roles.actor.temperature=1.0")
        svc = build_service(cfg, tmp_path)
        backends = {role: b.client.backend for role, b in svc.roles.items()}
        assert backends == {"actor": "local", "user_judge": "dashscope", "safety_judge": "dashscope",
                            "editor": "dashscope", "follower": "dashscope"}
        svc.stage = "test"
        (answer,) = svc.text("actor", [[ChatMessage(role="user", content="hello")]])
        assert state.requests == 0, "the actor must run in-process"
        assert answer.failure is None or "empty" in answer.failure
        (judged,) = svc.structured("user_judge", [[ChatMessage(role="user", content="rate this")]],
                                   UserJudgementReply)
        assert judged.value is not None and state.requests == 1
        body = state.bodies[0]
        assert body["model"] == "qwq-32b" and body["auth"] == f"Bearer {HYBRID_KEY}"
        assert body["parameters"]["enable_thinking"] is True and body["parameters"]["temperature"] == 0.4
        assert judged.reasoning == "thinking about it..."
        usage = svc.usage.as_dict()["by_stage_role"]
        assert usage["test/user_judge"]["calls"] == 1 and usage["test/actor"]["calls"] == 1


def test_a_missing_key_names_the_role_and_the_variable(compose_cfg, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from oyster_exp.core.errors import StageError
    from oyster_exp.llm.build import build_service

    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    cfg = compose_cfg("llm=dashscope_qwq", "model=tiny_random")
    with pytest.raises(StageError, match=r"llm\.roles\.actor\.client: .*DASHSCOPE_API_KEY"):
        build_service(cfg, tmp_path)


def test_progress_bar_shows_eta_rate_tokens_failures_and_retries(key: str, capsys: pytest.CaptureFixture) -> None:
    with serve(api_key=key, faults=Faults(script=("500", "ok", "401"))) as (_, state):
        client = _client(state.dashscope_url, concurrency=1, progress=True)
        out = client.chat_batch([_req("a"), _req("b")])
    assert isinstance(out[0], ChatResponse) and isinstance(out[1], str)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("dashscope qwq-32b: 100%") and "2/2" in last
    assert "<00:00" in last and "call/s" in last            # elapsed<ETA and the call rate
    assert "failures=1" in last and "retries=1" in last and "tok=" in last and "tok_s=" in last
