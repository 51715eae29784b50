"""Provider limits: one limiter per (endpoint, key), shared by every role and batch of the process.

A provider meters an account, not a role: the actor, the judges and the editor that share one key
and one base URL draw on one quota. So the limiter is looked up in a process-wide registry keyed by
(base URL, a hash of the key) — the key itself is never stored — and every client that talks to that
endpoint with that key gets the same object, for the life of the process.

What it holds:
- **Sliding-window limits.** Requests and (estimated) tokens per window (60 s by default) hold over
  *every* window, not on average: a call may start only when the starts (and tokens) of the last
  `window_s` seconds leave room for it. There is no initial burst allowance as with a token bucket, so
  a limit set to the account's quota draws no 429 from the first batch.
- **Adaptive rate (AIMD).** A throttled reply (429, DashScope `Throttling*`) pauses every queued call to
  the endpoint until its Retry-After, halves the in-flight cap, and sets a learned request limit to what
  the last window held when the provider said no (a measurement, not a guess). Successes raise the cap
  by 1/cap each (about one per round trip) and the learned limit by 3 % per full window, so the limiter
  keeps probing upward and finds the provider's limit even when none is configured. The learned limit is
  only set once a whole window has been seen (before that a 429 may come from a per-second burst limit).
  A configured limit is a ceiling the learned one never exceeds. Only the first throttle after a cut cuts:
  replies to calls sent before the cut describe the old rate.

Across processes (joblib sweep arms, data-parallel workers) each process has its own limiter. We
chose a share per process over a shared file-locked window: a lock file costs a filesystem round trip
per request, and does not span the nodes of a Slurm sweep anyway. Set `key_shared_by` (the client
factories' argument) to the number of processes that run at once with the key, and each one keeps
1/`key_shared_by` of the configured limits; whatever slack or overshoot remains, the adaptive part
absorbs on the provider's 429s.
"""
from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field


def retry_after_s(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds a provider asks us to wait: `retry-after-ms`, or `Retry-After` as seconds or an HTTP date.

    One helper for every client, so that each form is honoured the same way; None when absent or unreadable.
    """
    if not headers:
        return None
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Ticket:
    """One attempt's place in the window: its start, its token estimate, and whether it was throttled."""

    start: float
    tokens: float
    throttled: bool = False


@dataclass
class LimiterStats:
    requests: int = 0
    throttled: int = 0
    cuts: int = 0


@dataclass
class EndpointLimiter:
    """The limits of one endpoint and key (see the module docstring). Thread-safe: each batch runs its own
    event loop (`asyncio.run`), and batches of different roles may run at once from different threads."""

    label: str = ""
    window_s: float = 60.0
    requests_per_window: float | None = None   # configured ceilings (None: none configured)
    tokens_per_window: float | None = None
    max_in_flight: int = 1
    learned_requests: float | None = None       # what the provider's throttling taught us
    cap: float = 1.0                            # adaptive in-flight limit, 1 <= cap <= max_in_flight
    in_flight: int = 0
    paused_until: float = 0.0
    stats: LimiterStats = field(default_factory=LimiterStats)
    _window: deque[Ticket] = field(default_factory=deque)
    _window_tokens: float = 0.0
    _last_cut: float = -math.inf
    _last_raise: float = 0.0
    _first_start: float = math.inf
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _fresh: bool = True

    def configure(self, concurrency: int, requests_per_minute: float | None, tokens_per_minute: float | None,
                  shared_by: int = 1) -> None:
        """Fold one client's settings in: concurrencies add up (roles may run at once; each role's engine still
        holds its own), configured limits take the tightest (per process: 1/`shared_by` of them)."""
        scale = self.window_s / 60.0 / max(1, shared_by)
        with self._lock:
            self.max_in_flight = int(concurrency) if self._fresh else self.max_in_flight + int(concurrency)
            self.cap = float(self.max_in_flight) if self._fresh else self.cap + int(concurrency)
            self._fresh = False
            for name, per_minute in (("requests_per_window", requests_per_minute),
                                     ("tokens_per_window", tokens_per_minute)):
                if per_minute:
                    value = max(1.0, float(per_minute) * scale)
                    current = getattr(self, name)
                    setattr(self, name, value if current is None else min(current, value))

    def request_limit(self) -> int | None:
        """Starts allowed per window now: the configured ceiling or the learned limit, whichever is lower."""
        limits = [x for x in (self.requests_per_window, self.learned_requests) if x is not None]
        return max(1, int(min(limits))) if limits else None

    def _expire(self, now: float) -> None:
        edge = now - self.window_s
        while self._window and self._window[0].start <= edge:
            self._window_tokens -= self._window.popleft().tokens

    def _wait_s(self, now: float, tokens: float) -> float:
        """How long until a call of `tokens` may start by the window and pause rules (0: now)."""
        wait = self.paused_until - now
        limit = self.request_limit()
        if limit is not None and len(self._window) >= limit:
            wait = max(wait, self._window[len(self._window) - limit].start + self.window_s - now)
        tpw = self.tokens_per_window
        if tpw is not None and self._window_tokens + tokens > tpw:
            excess = self._window_tokens + tokens - tpw
            for t in self._window:                       # the oldest starts leave the window first
                excess -= t.tokens
                if excess <= 0:
                    wait = max(wait, t.start + self.window_s - now)
                    break
        return wait

    async def acquire(self, tokens: float = 1.0) -> Ticket:
        """Wait for the window, a pause and the in-flight cap to admit one call; the caller must `release` it."""
        tokens = min(float(tokens), self.tokens_per_window or float(tokens))
        while True:
            waiter: asyncio.Future[None] | None = None
            with self._lock:
                now = time.monotonic()
                self._expire(now)
                wait = self._wait_s(now, tokens)
                if wait <= 0:
                    if self.in_flight < max(1, int(self.cap)):
                        ticket = Ticket(start=now, tokens=tokens)
                        self._first_start = min(self._first_start, now)
                        self._window.append(ticket)
                        self._window_tokens += tokens
                        self.in_flight += 1
                        self.stats.requests += 1
                        return ticket
                    loop = asyncio.get_running_loop()
                    waiter = loop.create_future()
                    self._waiters.append((loop, waiter))
            if waiter is None:
                await asyncio.sleep(wait)
            else:
                await waiter

    def release(self, ticket: Ticket, throttled: bool = False, retry_after: float | None = None,
                tokens_used: float | None = None) -> None:
        """An attempt ended: free its slot and learn from how it ended (throttled or answered)."""
        with self._lock:
            now = time.monotonic()
            self.in_flight -= 1
            if tokens_used is not None and ticket in self._window:   # the estimate becomes the real count
                self._window_tokens += tokens_used - ticket.tokens
                ticket.tokens = tokens_used
            if throttled:
                ticket.throttled = True
                self.stats.throttled += 1
                if ticket.start >= self._last_cut:   # sent under the current rate: this one tells us something
                    self._cut(ticket, now, retry_after)
            else:
                self._raise(now)
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_wake, fut)

    def _cut(self, ticket: Ticket, now: float, retry_after: float | None) -> None:
        self.stats.cuts += 1
        self._last_cut = self._last_raise = now
        self.cap = max(1.0, min(self.cap, self.in_flight + 1.0) / 2)   # halve what was really in flight
        if ticket.start - self._first_start >= self.window_s:
            # a whole window seen: what it held when the provider said no is its limit. Earlier, a 429 may come
            # from a burst limit (providers also meter per second), and the count of a fraction of a window
            # would be far too low: then only the pause and the in-flight cut act.
            accepted = sum(1 for t in self._window if not t.throttled and t.start <= ticket.start)
            self.learned_requests = max(1.0, 0.97 * accepted)
        self.paused_until = max(self.paused_until, now + (retry_after if retry_after is not None else 1.0))

    def _raise(self, now: float) -> None:
        if self.in_flight + 1 >= int(self.cap):      # grow only a cap that is in use
            self.cap = min(float(self.max_in_flight), self.cap + 1.0 / self.cap)
        if self.learned_requests is not None and now - self._last_raise >= self.window_s:
            self._last_raise = now
            if len(self._window) >= 0.9 * self.learned_requests:   # only while the limit is what holds us back
                self.learned_requests *= 1.03
                if self.requests_per_window is not None and self.learned_requests >= self.requests_per_window:
                    self.learned_requests = None                  # back at the configured ceiling


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_REGISTRY: dict[tuple[str, str, float], EndpointLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def key_id(api_key: str | None) -> str:
    """A short hash naming a key without revealing it (the registry never holds the key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "-"


def endpoint_limiter(base_url: str, api_key: str | None, window_s: float = 60.0) -> EndpointLimiter:
    """The process-wide limiter of (base URL, key): every role and batch using that pair shares it."""
    key = (base_url.rstrip("/"), key_id(api_key), float(window_s))
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(key)
        if limiter is None:
            limiter = _REGISTRY[key] = EndpointLimiter(label=key[0], window_s=float(window_s))
        return limiter


def clear_limiters() -> None:
    """Forget every endpoint's limits (tests that want a fresh process)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
