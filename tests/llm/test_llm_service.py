"""The role service: validation, retries with new seeds, failures recorded with reasons, call cache.

A scripted client stands in for a model that answers malformed JSON; it tests our handling of bad
replies, not any backend.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse, Usage
from oyster_exp.llm.cache import CallCache
from oyster_exp.llm.service import LLMService, RoleBinding


class Verdict(BaseModel):
    verdict: str
    score: int


class ScriptedClient:
    backend = "scripted"
    model_id = "script-v1"

    def __init__(self, replies: list[str]):
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []

    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        out = []
        for r in requests:
            self.requests.append(r)
            out.append(ChatResponse(content=self.replies.pop(0), usage=Usage(prompt_tokens=3, completion_tokens=2)))
        return out


class BrokenClient:
    backend = "broken"
    model_id = "x"

    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        raise ConnectionError("server unreachable")


def _conv(text: str = "hi") -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def test_malformed_reply_is_retried_with_a_new_seed() -> None:
    client = ScriptedClient(['{"verdict": "safe"', '{"verdict": "safe", "score": 1}'])
    svc = LLMService({"judge": RoleBinding(client=client)}, max_retries=2, seed=7)
    out = svc.structured("judge", [_conv()], Verdict)[0]
    assert out.value == Verdict(verdict="safe", score=1) and out.failure is None
    assert [r.seed for r in client.requests] == [7, 8]
    assert client.requests[1].temperature > 0
    totals = svc.usage.totals()
    assert totals["calls"] == 2 and totals["retries"] == 1 and totals["structured_valid"] == 0


def test_after_last_attempt_the_failure_is_recorded_with_its_reason() -> None:
    client = ScriptedClient(["not json", '{"verdict": "safe", "score": "high"}'])
    svc = LLMService({"judge": RoleBinding(client=client)}, max_retries=1)
    out = svc.structured("judge", [_conv()], Verdict)[0]
    assert out.value is None
    assert "score" in (out.failure or "")
    assert svc.usage.totals()["failures"] == 1


def test_backend_exception_becomes_a_failure_not_a_crash() -> None:
    svc = LLMService({"actor": RoleBinding(client=BrokenClient())}, max_retries=1)
    out = svc.text("actor", [_conv()])[0]
    assert out.text == "" and "server unreachable" in (out.failure or "")


def test_call_cache_makes_reruns_free(tmp_path: Path) -> None:
    cache = CallCache(tmp_path / "calls.sqlite")
    c1 = ScriptedClient(["hello"])
    svc = LLMService({"actor": RoleBinding(client=c1)}, cache=cache)
    assert svc.text("actor", [_conv()])[0].text == "hello"
    c2 = ScriptedClient([])  # would raise IndexError if asked
    svc2 = LLMService({"actor": RoleBinding(client=c2)}, cache=CallCache(tmp_path / "calls.sqlite"))
    assert svc2.text("actor", [_conv()])[0].text == "hello"
    assert svc2.usage.totals()["calls"] == 0 and svc2.usage.totals()["cache_hits"] == 1
    assert c2.requests == []


def test_replies_that_stayed_invalid_leave_the_call_cache_so_a_rerun_asks_again(tmp_path: Path) -> None:
    """A failed outcome is not an answer: the rerun that retries its record must reach the backend."""
    cache = CallCache(tmp_path / "calls.sqlite")
    good = '{"verdict": "safe", "score": 1}'
    client = ScriptedClient([good, "not json", '{"verdict": "safe"'])   # a: valid; b: invalid twice
    svc = LLMService({"judge": RoleBinding(client=client)}, cache=cache, max_retries=1)
    a, b = svc.structured("judge", [_conv("a"), _conv("b")], Verdict)
    assert a.value is not None and b.failure is not None and not b.no_reply
    assert len(cache) == 1, "only the valid reply stays cached"
    again = ScriptedClient([good])
    svc2 = LLMService({"judge": RoleBinding(client=again)}, cache=CallCache(tmp_path / "calls.sqlite"), max_retries=1)
    a2, b2 = svc2.structured("judge", [_conv("a"), _conv("b")], Verdict)
    assert a2.value == a.value and b2.value == Verdict(verdict="safe", score=1)
    assert [r.messages[0].content for r in again.requests] == ["b"], "the success came from the cache"
    assert svc2.usage.totals()["cache_hits"] == 1 and svc2.usage.totals()["calls"] == 1


def test_a_transport_failure_is_marked_as_no_reply() -> None:
    out = LLMService({"actor": RoleBinding(client=BrokenClient())}, max_retries=0).text("actor", [_conv()])[0]
    assert out.no_reply and out.failure
    blank = ScriptedClient(["  "])
    empty = LLMService({"actor": RoleBinding(client=blank)}, max_retries=0).text("actor", [_conv()])[0]
    assert empty.failure == "empty reply" and not empty.no_reply
