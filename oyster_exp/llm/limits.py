"""Provider limits: one limiter per (endpoint, key), shared by every role and batch of the process.

A provider meters an account, not a role: the actor, the judges and the editor that share one key
and one base URL draw on one quota. So the limiter is looked up in a process-wide registry keyed by
(base URL, a hash of the key) — the key itself is never stored — and every client that talks to that
endpoint with that key gets the same object, for the life of the process.

What it holds:
- **Sliding-window limits.** Configured requests and (estimated) tokens per window (60 s by default) hold over
  *every* window of the provider's clock, not on average and not only of ours. A provider stamps a request when
  it arrives, which may be any time between our start and its reply (a busy event loop, a slow send), so an
  attempt holds its slot from its start until `window_s` after its reply began (`answered`: a stream's headers,
  else the reply's end): whatever the provider stamped lies inside that span, so no window of its stamps can
  hold more than the limit. The cost is one reply latency per slot, small against a 60-s window. There is no
  initial burst allowance as with a token bucket, so a limit set to the account's quota draws no 429.
- **Adaptive rate (AIMD).** A throttled reply (429, DashScope `Throttling*`) pauses every queued call to
  the endpoint until its Retry-After and halves the in-flight cap. It also teaches a request limit: what our
  window held when the provider said no (a measurement, not a guess; each later refusal of a call counted in it
  takes one off). That is only trusted once a whole window has been seen, or when the provider's wait runs to
  where our first start leaves a window (a window's limit, not a per-second burst limit, whose count of a part
  of a window would be far too low); otherwise only the pause and the in-flight cut act. Under a learned limit
  the starts are paced evenly (a provider that throttled us may meter its minute in seconds), and each full
  window that the limit holds us back raises it, by 1 % after a cut and doubling per window without one (up to
  8 %), so the limiter finds the limit without one configured and keeps probing for more. A configured limit
  is a ceiling the learned one never exceeds. Only the first throttle after a cut cuts: replies to calls sent
  before the cut describe the old rate.

Across processes (joblib sweep arms, data-parallel workers) each process has its own limiter. We
chose a share per process over a shared file-locked window: a lock file costs a filesystem round trip
per request, and does not span the nodes of a Slurm sweep anyway. Set `key_shared_by` (the client
factories' argument) to the number of processes that run at once with the key, and each one keeps
1/`key_shared_by` of the configured limits; whatever slack or overshoot remains, the adaptive part
absorbs on the provider's 429s.
"""
from __future__ import annotations

import asyncio
import contextvars
import email.utils
import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

CUT_FACTOR = 0.98        # a learned limit keeps this share of what the window held when the provider said no
PROBE_STEP = 0.01        # the learned limit's first rise after a cut, per full window ...
PROBE_STEP_MAX = 0.08    # ... doubling with each window that passes without a throttle, up to this


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


@dataclass(eq=False)
class Ticket:
    """One attempt's place in the window. `stamp` is the moment we know the provider has seen the request (its
    reply began, or ended); until then the attempt holds its slot however long ago it started, since a provider
    stamps a request when it arrives, which can be any time between our start and its reply."""

    start: float
    tokens: float
    stamp: float | None = None
    throttled: bool = False


@dataclass
class LimiterStats:
    requests: int = 0
    throttled: int = 0
    cuts: int = 0


CURRENT: contextvars.ContextVar[tuple[EndpointLimiter, Ticket] | None] = contextvars.ContextVar(
    "oyster_limiter_ticket", default=None)


def answered() -> None:
    """The reply to the current attempt has begun (a stream's headers came): its slot's window starts now.

    Clients call it where a reply arrives before it ends (streams); for the others the end of the call stamps
    it. The engine sets the attempt for each call's task, so a client needs no handle on it."""
    current = CURRENT.get()
    if current is not None:
        current[0].answered(current[1])


@dataclass
class EndpointLimiter:
    """The limits of one endpoint and key (see the module docstring). Thread-safe: each batch runs its own
    event loop (`asyncio.run`), and batches of different roles may run at once from different threads.

    `clock` is injectable so that tests can drive the window rules on a simulated timeline (`try_acquire`,
    `answered`, `release` are the synchronous core; `acquire` waits on it)."""

    label: str = ""
    window_s: float = 60.0
    requests_per_window: float | None = None   # configured ceilings (None: none configured)
    tokens_per_window: float | None = None
    max_in_flight: int = 1
    learned_requests: float | None = None       # what the provider's throttling taught us
    cap: float = 1.0                            # adaptive in-flight limit, 1 <= cap <= max_in_flight
    in_flight: int = 0
    paused_until: float = 0.0
    clock: Callable[[], float] = time.monotonic
    stats: LimiterStats = field(default_factory=LimiterStats)
    _open: set[Ticket] = field(default_factory=set)          # started, no reply seen: they never expire
    _done: deque[Ticket] = field(default_factory=deque)      # stamped, in stamp order: expire window_s later
    _tokens: float = 0.0                                     # tokens of both
    _next_start: float = -math.inf                           # pacing under a learned limit
    _last_cut: float = -math.inf
    _last_raise: float = 0.0
    _probe_step: float = PROBE_STEP
    _cut_ref: Ticket | None = None
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

    def in_window(self) -> int:
        """Attempts that count against the window now: every one in flight, and those answered in the last window."""
        with self._lock:
            self._expire(self.clock())
            return len(self._open) + len(self._done)

    def _expire(self, now: float) -> None:
        edge = now - self.window_s
        done = self._done
        while done and done[0].stamp <= edge:   # type: ignore[operator]
            self._tokens -= done.popleft().tokens

    def _wait_s(self, now: float, tokens: float) -> float:
        """How long until a call of `tokens` may start by the window, pacing and pause rules (0: now; inf: not
        before an attempt in flight is answered)."""
        wait = self.paused_until - now
        # the configured ceiling holds over every window (a slot counts until its reply began, and a window
        # after); a learned limit paces the starts instead (below), which also holds it over every window, and
        # does not lose the reply's latency per slot on a limit we only estimated
        limit = max(1, int(self.requests_per_window)) if self.requests_per_window is not None else None
        if limit is not None:
            over = len(self._open) + len(self._done) - limit   # answered attempts that must leave first, less one
            if over >= 0:
                wait = max(wait, self._done[over].stamp + self.window_s - now   # type: ignore[operator]
                           if over < len(self._done) else math.inf)
        if self.learned_requests is not None:
            wait = max(wait, self._next_start - now)
        tpw = self.tokens_per_window
        if tpw is not None and self._tokens + tokens > tpw:
            excess, leave = self._tokens + tokens - tpw, math.inf
            for t in self._done:                       # the first answered leave the window first
                excess -= t.tokens
                if excess <= 0:
                    leave = t.stamp + self.window_s - now   # type: ignore[operator]
                    break
            wait = max(wait, leave)
        return wait

    def _admit(self, tokens: float) -> Ticket | float:
        now = self.clock()
        self._expire(now)
        wait = self._wait_s(now, tokens)
        if wait > 0:
            return wait
        if self.in_flight >= max(1, int(self.cap)):
            return math.inf
        ticket = Ticket(start=now, tokens=tokens)
        self._first_start = min(self._first_start, now)
        self._open.add(ticket)
        self._tokens += tokens
        self.in_flight += 1
        self.stats.requests += 1
        if self.learned_requests is not None:
            # a provider that throttled us may meter at a finer grain than its window (providers quantise a
            # per-minute limit into seconds): spread the starts evenly, allowing one start of slack for jitter
            gap = self.window_s / self.learned_requests
            self._next_start = max(self._next_start + gap, now)
        return ticket

    def try_acquire(self, tokens: float = 1.0) -> Ticket | float:
        """Admit one call now (its Ticket, to `release`) or say how long until one may be admitted (seconds;
        inf: not before an attempt in flight ends). The synchronous core of `acquire`."""
        tokens = min(float(tokens), self.tokens_per_window or float(tokens))
        with self._lock:
            return self._admit(tokens)

    async def acquire(self, tokens: float = 1.0) -> Ticket:
        """Wait for the window, a pause and the in-flight cap to admit one call; the caller must `release` it."""
        tokens = min(float(tokens), self.tokens_per_window or float(tokens))
        while True:
            waiter: asyncio.Future[None] | None = None
            with self._lock:
                got = self._admit(tokens)
                if isinstance(got, Ticket):
                    return got
                if got == math.inf:
                    loop = asyncio.get_running_loop()
                    waiter = loop.create_future()
                    self._waiters.append((loop, waiter))
            if waiter is None:
                await asyncio.sleep(got)
            else:
                await waiter

    def _stamp(self, ticket: Ticket, now: float) -> None:
        if ticket.stamp is None:
            ticket.stamp = now
            self._open.discard(ticket)
            self._done.append(ticket)     # stamps come from one clock under one lock: the deque stays in order

    def answered(self, ticket: Ticket) -> None:
        """The provider has seen this attempt (its reply began): from now it leaves the window `window_s` later."""
        with self._lock:
            self._stamp(ticket, self.clock())

    def release(self, ticket: Ticket, throttled: bool = False, retry_after: float | None = None,
                tokens_used: float | None = None) -> None:
        """An attempt ended: free its slot and learn from how it ended (throttled or answered)."""
        with self._lock:
            now = self.clock()
            self._stamp(ticket, now)
            self.in_flight -= 1
            if tokens_used is not None:       # the estimate becomes the real count (while it is in the window)
                self._expire(now)             # after this, a stamp within the last window is still counted
                if ticket.stamp + self.window_s > now:   # type: ignore[operator]
                    self._tokens += tokens_used - ticket.tokens
                ticket.tokens = tokens_used
            if throttled:
                ticket.throttled = True
                self.stats.throttled += 1
                if ticket.start >= self._last_cut:   # sent under the current rate: this one tells us something
                    self._cut(ticket, now, retry_after)
                elif (self._cut_ref is not None and self.learned_requests is not None
                      and ticket.start <= self._cut_ref.start):
                    # counted as accepted when the limit was learned, but the provider refused it too
                    self.learned_requests = max(1.0, self.learned_requests - CUT_FACTOR)
            else:
                self._raise(now)
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_wake, fut)

    def _cut(self, ticket: Ticket, now: float, retry_after: float | None) -> None:
        self.stats.cuts += 1
        self._last_cut = self._last_raise = now
        self.cap = max(1.0, min(self.cap, self.in_flight + 1.0) / 2)   # halve what was really in flight
        whole_window = ticket.start - self._first_start >= self.window_s
        # the provider's wait runs to where our first start leaves a window: what stops us is a window's limit
        window_wall = retry_after is not None and now + retry_after >= self._first_start + 0.9 * self.window_s
        if whole_window or window_wall:
            # what the window held when the provider said no is its limit (a measurement, not a guess). Before a
            # whole window has passed, and without a wait that says so, a 429 may come from a burst limit
            # (providers also meter per second), and the count of a part of a window would be far too low: then
            # only the pause and the in-flight cut act.
            accepted = sum(1 for t in (*self._done, *self._open)
                           if not t.throttled and t.start <= ticket.start)
            self.learned_requests = max(1.0, CUT_FACTOR * accepted)
            self._cut_ref, self._probe_step = ticket, PROBE_STEP
        self.paused_until = max(self.paused_until, now + (retry_after if retry_after is not None else 1.0))

    def _raise(self, now: float) -> None:
        if self.in_flight + 1 >= int(self.cap):      # grow only a cap that is in use
            self.cap = min(float(self.max_in_flight), self.cap + 1.0 / self.cap)
        if self.learned_requests is not None and now - self._last_raise >= self.window_s:
            self._last_raise = now
            if len(self._open) + len(self._done) >= 0.9 * self.learned_requests:   # the limit holds us back
                self.learned_requests *= 1.0 + self._probe_step
                self._probe_step = min(PROBE_STEP_MAX, 2 * self._probe_step)
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
