"""Provider limits: the shared sliding-window limiter, throttling that slows every role, Retry-After in every
form, the endpoint probe, and one attempt budget per call — against the real loopback HTTP server."""
from __future__ import annotations

import asyncio
import email.utils
import os
import threading
import time

import pytest
from pydantic import BaseModel

from oyster_exp.core.errors import EndpointError
from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse
from oyster_exp.llm.engine import CallEngine
from oyster_exp.llm.limits import _REGISTRY, PROBE_STEP_MAX, EndpointLimiter, Ticket, endpoint_limiter, retry_after_s
from oyster_exp.llm.openai_compat import OpenAICompatClient
from oyster_exp.llm.service import LLMService, RoleBinding
from oyster_exp.testing.loopback import Faults, serve

ENV = "OYSTER_TEST_LIMITS_KEY"


def _client(url: str, model: str = "m", **engine_kw) -> OpenAICompatClient:
    engine = CallEngine(**{"concurrency": 4, "max_attempts": 4, "backoff_base_s": 0.01, "timeout_s": 5.0,
                           **engine_kw})
    return OpenAICompatClient(url, model, api_key_env=ENV, engine=engine)


def _req(text: str) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], max_tokens=4)


def test_retry_after_reads_seconds_milliseconds_and_http_dates() -> None:
    assert retry_after_s({"Retry-After": "2.5"}) == 2.5
    assert retry_after_s({"retry-after-ms": "750", "Retry-After": "9"}) == 0.75   # the finer one wins
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_s({"retry-after": date}) <= 31  # type: ignore[operator]
    assert retry_after_s({"Retry-After": "soon"}) is None and retry_after_s({}) is None and retry_after_s(None) is None
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert retry_after_s({"Retry-After": past}) == 0.0


def test_the_window_holds_over_every_window_with_no_initial_burst() -> None:
    limiter = EndpointLimiter(window_s=0.5)
    limiter.configure(concurrency=50, requests_per_minute=4 * 120, tokens_per_minute=None)  # 4 per 0.5 s

    async def go() -> list[float]:
        out = []
        for _ in range(10):
            t = await limiter.acquire()
            out.append(t.start)
            limiter.release(t)
        return out

    starts = asyncio.run(go())
    assert max(sum(1 for s in starts if a <= s < a + 0.5) for a in starts) == 4   # never 5 in any 0.5 s
    assert starts[-1] - starts[0] >= 1.0                                        # 10 starts need 2 full windows


def test_tokens_per_window_hold_and_count_real_usage() -> None:
    limiter = EndpointLimiter(window_s=0.4)
    limiter.configure(concurrency=10, requests_per_minute=None, tokens_per_minute=100 * 150)   # 100 per 0.4 s

    async def go() -> float:
        t0 = time.monotonic()
        a = await limiter.acquire(60)
        limiter.release(a, tokens_used=10)     # it cost less than estimated: room for the next one now
        b = await limiter.acquire(60)
        limiter.release(b)
        c = await limiter.acquire(60)          # 70 + 60 > 100: waits for the first to leave the window
        limiter.release(c)
        return c.start - t0

    assert 0.35 <= asyncio.run(go()) < 1.0


def test_one_limiter_per_endpoint_and_key_never_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "sk-limits-secret-0001")
    a, b = _client("http://127.0.0.1:9/v1"), _client("http://127.0.0.1:9/v1/")
    assert a.engine.limiter is b.engine.limiter
    assert a.engine.limiter.max_in_flight >= 8            # both roles' concurrencies count
    monkeypatch.setenv(ENV, "sk-limits-other-0002")
    assert _client("http://127.0.0.1:9/v1").engine.limiter is not a.engine.limiter
    assert not any("sk-limits" in part for key in _REGISTRY for part in map(str, key))
    assert endpoint_limiter("http://127.0.0.1:9/v1", "sk-limits-secret-0001") is a.engine.limiter


def test_a_429_pauses_every_role_on_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, f"sk-pause-{os.getpid()}")
    faults = Faults(script=("429",), retry_after_s=0.6, retry_after_form="ms")
    with serve(faults=faults, latency_s=0.02) as (url, state):
        actor, judge = _client(url, concurrency=1), _client(url, concurrency=1)
        out: dict[str, list] = {}

        def run(name: str, client: OpenAICompatClient) -> None:
            out[name] = client.chat_batch([_req(f"{name}{i}") for i in range(3)])

        threads = [threading.Thread(target=run, args=("a", actor))]
        threads[0].start()
        time.sleep(0.01)
        threads.append(threading.Thread(target=run, args=("j", judge)))
        threads[1].start()
        for t in threads:
            t.join()
        arrivals = sorted(state.arrivals)
    assert all(isinstance(r, ChatResponse) for r in out["a"] + out["j"])
    # the judge's calls wait out the actor's 429 too: after the first one or two, nothing for ~0.6 s
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert max(gaps) >= 0.5, gaps
    assert actor.engine.limiter.stats.cuts == 1 and actor.engine.limiter.stats.throttled == 1


def test_an_undeclared_limit_is_found_and_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three roles, no configured limit, a server allowing 12 requests per 0.5 s: all succeed, few 429s."""
    monkeypatch.setenv(ENV, f"sk-find-{os.getpid()}")
    with serve(rate_limit=12, rate_window_s=0.5, latency_s=0.01) as (url, state):
        shared = EndpointLimiter(window_s=0.5)
        clients = [_client(url, concurrency=3, max_attempts=10) for _ in range(3)]
        for c in clients:
            c.engine.limiter = None
            c.engine.attach(shared)
        results: list = []
        threads = [threading.Thread(target=lambda c=c: results.extend(c.chat_batch([_req("x")] * 40)))
                   for c in clients]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
    assert all(isinstance(r, ChatResponse) for r in results) and len(results) == 120
    # learned from the refusals; it may stand one probe step above the limit until the next refusal cuts it
    assert shared.learned_requests is not None and shared.learned_requests <= 12 * (1 + PROBE_STEP_MAX)
    assert state.throttled <= 0.25 * state.requests, (state.throttled, state.requests)
    assert seconds < 120 / 12 * 0.5 * 1.6          # near the server's rate: 120 calls at 24/s is 5 s


class Reply(BaseModel):
    verdict: str
    note: str = "none"


def test_one_budget_per_call_transport_retries_and_reasks_share_it() -> None:
    with serve(faults=Faults(rate_500=1.0)) as (url, state):
        svc = LLMService({"judge": RoleBinding(client=_client(url, max_attempts=3))}, max_retries=2)
        out = svc.structured("judge", [[ChatMessage(role="user", content="q")]] * 2, Reply)
    assert all(o.failure and "HTTP 500" in o.failure for o in out)
    assert state.requests == 6, "3 attempts per call in all, not 3 transport x 3 re-asks"


def test_a_strict_null_for_an_optional_field_takes_its_default() -> None:
    class Scripted:
        backend, model_id = "scripted", "s"

        def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
            return [ChatResponse(content='{"verdict": "safe", "note": null}') for _ in requests]

    (out,) = LLMService({"judge": RoleBinding(client=Scripted())}).structured(
        "judge", [[ChatMessage(role="user", content="q")]], Reply)
    assert out.value == Reply(verdict="safe", note="none")


def test_probe_names_each_cause_and_costs_no_counted_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert _client(f"http://127.0.0.1:{port}/v1").probe().startswith("unreachable")   # type: ignore[union-attr]
    with serve(models=("served",)) as (url, state):
        assert _client(url, model="served").probe() is None
        assert "unknown model 'other'" in _client(url, model="other").probe()   # type: ignore[operator]
        assert state.requests == 0
    monkeypatch.setenv(ENV, "sk-wrong-key-000000000000")
    with serve(api_key="sk-right") as (url, state):
        assert "key was refused (HTTP 401)" in _client(url).probe()   # type: ignore[operator]


def test_the_service_probes_once_and_stops_on_a_dead_endpoint() -> None:
    with serve(models=("m",)) as (url, state):
        live = _client(url)
        svc = LLMService({"actor": RoleBinding(client=live), "judge": RoleBinding(client=_client(url))},
                         preflight=True)
        calls = []
        real = live.probe
        live.probe = lambda: calls.append(1) or real()  # type: ignore[method-assign]
        svc.text("actor", [[ChatMessage(role="user", content="a")]])
        svc.text("actor", [[ChatMessage(role="user", content="b")]])
        assert calls == [1] and state.requests == 2
        bad = LLMService({"actor": RoleBinding(client=live), "judge": RoleBinding(client=_client(url, model="x"))},
                         preflight=True)
        with pytest.raises(EndpointError, match=r"llm\.roles\.judge: openai_compat endpoint "
                                                r"http://127\.0\.0\.1:\d+/v1 \(model 'x'\): unknown model"):
            bad.text("actor", [[ChatMessage(role="user", content="c")]])
        assert state.requests == 2, "a dead judge endpoint stops the run before the actor's call is bought"


# --- the window rules on a simulated timeline: an injected clock, no sleeping, no timing luck ---------------------

class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _simulate(limiter: EndpointLimiter, clock: _Clock, calls: int, workers: int, seed: int,
              send_s: tuple[float, float], serve_s: tuple[float, float], server_limit: int | None = None,
              server_window: float = 1.0, stream: bool = False) -> dict:
    """`workers` callers share `limiter`; each request reaches the server `send_s` after it starts (drawn), the
    server stamps it on arrival (refusing it, 429 with the wait until a slot frees, when `server_limit` arrivals
    are in its last `server_window`), and the reply ends `serve_s` later (its first byte at arrival with
    `stream`). A throttled call is tried again. Returns the server's accepted arrivals and counts."""
    import heapq
    import random as _random

    rng = _random.Random(seed)
    events: list[tuple[float, int, str, object]] = []
    seq = iter(range(10**9))
    accepted: list[float] = []
    refused = 0
    left = calls
    waiting: list[int] = []

    def push(t: float, kind: str, data: object) -> None:
        heapq.heappush(events, (t, next(seq), kind, data))

    for w in range(workers):
        push(0.0, "ready", w)
    while events:
        t, _, kind, data = heapq.heappop(events)
        clock.t = t
        if kind == "ready":
            if left <= 0:
                continue
            got = limiter.try_acquire()
            if isinstance(got, float):
                if got == float("inf"):
                    waiting.append(data)           # type: ignore[arg-type]
                else:
                    push(t + got, "ready", data)
                continue
            left -= 1
            push(t + rng.uniform(*send_s), "arrive", (data, got))
        elif kind == "arrive":
            w, ticket = data                        # type: ignore[misc]
            recent = [a for a in accepted if a > t - server_window]
            if server_limit is not None and len(recent) >= server_limit:
                refused += 1
                push(t + rng.uniform(*serve_s) / 10, "reply", (w, ticket, recent[0] + server_window - t))
                continue
            accepted.append(t)
            if stream:
                push(t, "first_byte", ticket)
            push(t + rng.uniform(*serve_s), "reply", (w, ticket, None))
        elif kind == "first_byte":
            limiter.answered(data)                  # type: ignore[arg-type]
        else:
            w, ticket, retry_after = data           # type: ignore[misc]
            limiter.release(ticket, throttled=retry_after is not None, retry_after=retry_after)
            if retry_after is not None:
                left += 1                           # the call is tried again
            push(t, "ready", w)
            for other in waiting:
                push(t, "ready", other)
            waiting.clear()
    return {"accepted": accepted, "refused": refused, "end": clock.t}


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window) for i, t in enumerate(times)), default=0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_configured_limit_holds_in_every_window_of_the_servers_arrival_stamps(stream: bool) -> None:
    """The server stamps a request when it arrives, up to 0.3 s after we start it (a 1-s window): counting our
    starts would let 11+ arrivals into one of its windows. A slot is held until the reply, so none ever does."""
    for seed in range(3):
        clock = _Clock()
        limiter = EndpointLimiter(window_s=1.0, clock=clock)
        limiter.configure(concurrency=8, requests_per_minute=600, tokens_per_minute=None)   # 10 per 1 s
        out = _simulate(limiter, clock, calls=150, workers=8, seed=seed, send_s=(0.0, 0.3), serve_s=(0.05, 0.4),
                        stream=stream)
        assert len(out["accepted"]) == 150
        assert _max_in_window(out["accepted"], 1.0) == 10, seed   # reached (the limit binds), never passed
        starts_bound = 150 / 10 * (1.0 + 0.3 + 0.4)                # a slot is held at most W + send + serve
        assert out["end"] <= starts_bound, out["end"]


def test_a_slot_leaves_the_window_a_window_after_its_reply_began_and_never_while_unanswered() -> None:
    clock = _Clock()
    limiter = EndpointLimiter(window_s=10.0, clock=clock)
    limiter.configure(concurrency=5, requests_per_minute=12, tokens_per_minute=None)   # 2 per 10 s
    a, b = limiter.try_acquire(), limiter.try_acquire()
    assert isinstance(a, Ticket) and isinstance(b, Ticket)
    clock.t = 50.0
    assert limiter.try_acquire() == float("inf"), "two in flight, unanswered: they hold the window however old"
    limiter.answered(a)                       # a's reply began at 50: its slot frees at 60
    clock.t = 55.0
    limiter.release(a)                        # ending later does not move it
    assert limiter.try_acquire() == pytest.approx(5.0)
    clock.t = 60.0
    assert isinstance(limiter.try_acquire(), Ticket)
    assert limiter.in_window() == 2


def test_an_undeclared_limit_is_found_paced_and_held_on_a_simulated_timeline() -> None:
    """No limit configured; the server allows 20 per 1-s window and answers 429 with the wait until a slot frees.
    The limiter learns the limit from the first refusal (the wait runs to the end of its first window), paces its
    starts under it, and probes upward slowly: >= 0.9 of the server's rate, few refusals."""
    clock = _Clock()
    limiter = EndpointLimiter(window_s=1.0, clock=clock)
    limiter.configure(concurrency=6, requests_per_minute=None, tokens_per_minute=None)
    out = _simulate(limiter, clock, calls=400, workers=6, seed=0, send_s=(0.002, 0.01), serve_s=(0.03, 0.06),
                    server_limit=20, server_window=1.0)
    assert len(out["accepted"]) == 400
    rate = 400 / out["end"]
    assert rate >= 0.9 * 20, rate
    assert out["refused"] <= 0.03 * (400 + out["refused"]), out["refused"]
    assert limiter.learned_requests is not None and 17 <= limiter.learned_requests <= 21
    assert _max_in_window(out["accepted"], 1.0) == 20


def test_a_later_refusal_of_a_call_counted_as_accepted_lowers_the_learned_limit() -> None:
    clock = _Clock()
    limiter = EndpointLimiter(window_s=1.0, clock=clock)
    limiter.configure(concurrency=10, requests_per_minute=None, tokens_per_minute=None)
    tickets = [limiter.try_acquire() for _ in range(10)]
    assert all(isinstance(t, Ticket) for t in tickets)
    for t in tickets[:6]:
        limiter.release(t)                                     # type: ignore[arg-type]
    clock.t = 0.1
    limiter.release(tickets[9], throttled=True, retry_after=0.9)   # the wait runs to the window's end: learn
    learned = limiter.learned_requests
    assert learned == pytest.approx(0.98 * 9)                      # 6 answered + 3 in flight, counted as accepted
    limiter.release(tickets[8], throttled=True, retry_after=0.9)   # one of those was refused too
    assert limiter.learned_requests == pytest.approx(learned - 0.98)
    assert limiter.stats.cuts == 1


def test_real_token_usage_replaces_the_estimate_once_and_leaves_with_its_slot() -> None:
    clock = _Clock()
    limiter = EndpointLimiter(window_s=10.0, clock=clock)
    limiter.configure(concurrency=4, requests_per_minute=None, tokens_per_minute=600)   # 100 per 10 s
    a = limiter.try_acquire(80)
    assert isinstance(a, Ticket) and limiter.try_acquire(30) == float("inf"), "80 + 30 > 100, 80 unanswered"
    limiter.answered(a)
    clock.t = 12.0                       # a long stream: its slot left the window before the call ended
    limiter.release(a, tokens_used=500)
    assert limiter._tokens == 0          # nothing left behind, nothing subtracted twice
    b = limiter.try_acquire(90)
    assert isinstance(b, Ticket)
    limiter.release(b, tokens_used=20)   # it cost less than estimated: room for more at once
    assert isinstance(limiter.try_acquire(70), Ticket)
