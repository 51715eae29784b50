"""The call engine: asyncio with bounded concurrency, the endpoint's shared limiter (sliding-window
requests and tokens per minute, adaptive on throttling: `limits.py`), retries with exponential backoff and
jitter (honouring Retry-After), per-call timeouts, and a progress bar.

A call that still fails after its attempts becomes a failure string with its reason; the engine never
raises for one bad call, so one provider hiccup cannot lose a batch of finished work. A call's attempts
come from one budget (`max_attempts`, or the caller's `budgets`): the service spends what transport
retries left on schema re-asks, so the two never multiply.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from oyster_exp.llm import limits
from oyster_exp.llm.base import ChatResponse, LLMError
from oyster_exp.llm.limits import EndpointLimiter


class RetryableError(LLMError):
    """Transport failure, timeout, 429 or 5xx: worth another attempt. `throttled`: the provider said "too
    fast" (429, DashScope `Throttling*`), which slows every call to the endpoint, not only this one."""

    def __init__(self, message: str, retry_after: float | None = None, throttled: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.throttled = throttled


class FatalError(LLMError):
    """Bad key, bad request: retrying cannot help."""


@dataclass
class EngineStats:
    calls: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class CallEngine:
    concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_attempts: int = 5
    timeout_s: float = 120.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    progress: bool = False
    label: str = ""                 # the progress bar's description (backend and model)
    seed: int = 0
    stats: EngineStats = field(default_factory=EngineStats)
    # the endpoint's shared limiter (clients attach the registry's, `attach`); None: a private one
    limiter: EndpointLimiter | None = None
    key_shared_by: int = 1          # processes that use the key at once; each keeps its share of the limits

    def attach(self, limiter: EndpointLimiter) -> None:
        """Use `limiter` (shared with every client of the same endpoint and key), folding in our limits."""
        limiter.configure(self.concurrency, self.requests_per_minute, self.tokens_per_minute, self.key_shared_by)
        self.limiter = limiter

    def _limiter(self) -> EndpointLimiter:
        if self.limiter is None:
            self.attach(EndpointLimiter(label=self.label))
        return self.limiter  # type: ignore[return-value]

    def _delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(self.backoff_max_s, retry_after) + rng.uniform(0, 0.1)
        base = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        return rng.uniform(base / 2, base)  # "equal jitter": spread retries, keep a floor

    async def run(self, calls: list[Callable[[], Awaitable[ChatResponse]]],
                  estimate_tokens: Callable[[int], int] | None = None,
                  on_reply: Callable[[int, ChatResponse], None] | None = None,
                  budgets: list[int] | None = None) -> list[ChatResponse | str]:
        """Every call's reply (or its failure reason), in order. `on_reply(i, reply)` runs as soon as call i
        succeeds, so a caller can keep each paid reply even if the batch never finishes (a killed job).
        `budgets[i]`: the attempts call i may use (default `max_attempts`); lowered in place by those used."""
        sem = asyncio.Semaphore(self.concurrency)
        limiter = self._limiter()
        rng = random.Random(self.seed)
        results: list[ChatResponse | str] = [""] * len(calls)
        bar = CallProgress(len(calls), self.label) if self.progress else None
        # the bar shows this batch (the stats accumulate over the engine's life)
        base_retries = self.stats.retries
        stats = self.stats

        async def one(i: int) -> None:
            async with sem:
                allowed = budgets[i] if budgets is not None else self.max_attempts
                tokens = estimate_tokens(i) if estimate_tokens else 1
                used = 0
                for attempt in range(allowed):
                    used += 1
                    ticket = await limiter.acquire(tokens)
                    current = limits.CURRENT.set((limiter, ticket))   # `limits.answered()` from the client
                    try:
                        async with asyncio.timeout(self.timeout_s):   # in this task: no task per call
                            resp = await calls[i]()
                    except FatalError as e:
                        limiter.release(ticket)
                        results[i] = f"fatal: {e}"
                        break
                    except (TimeoutError, RetryableError, OSError) as e:
                        throttled = bool(getattr(e, "throttled", False))
                        retry_after = getattr(e, "retry_after", None)
                        limiter.release(ticket, throttled=throttled, retry_after=retry_after)
                        reason = "timeout" if isinstance(e, asyncio.TimeoutError) else str(e) or type(e).__name__
                        results[i] = f"after {attempt + 1} attempts: {reason}"
                        if attempt + 1 < allowed:
                            stats.retries += 1
                            await asyncio.sleep(self._delay(attempt, retry_after, rng))
                        continue
                    except BaseException:
                        limiter.release(ticket)
                        raise
                    finally:
                        limits.CURRENT.reset(current)
                    limiter.release(ticket, tokens_used=(resp.usage.prompt_tokens + resp.usage.completion_tokens)
                                    if estimate_tokens else None)
                    results[i] = resp
                    if on_reply is not None:
                        on_reply(i, resp)
                    stats.prompt_tokens += resp.usage.prompt_tokens
                    stats.completion_tokens += resp.usage.completion_tokens
                    break
                if budgets is not None:
                    budgets[i] -= used
                stats.calls += 1
                if isinstance(results[i], str):
                    if not results[i]:
                        results[i] = "no attempt left in the call's budget"
                    stats.failures += 1
                    key = str(results[i]).split(":")[-1].strip()[:60]
                    stats.reasons[key] = stats.reasons.get(key, 0) + 1
                if bar is not None:
                    reply = results[i]
                    bar.advance([reply], retries=stats.retries - base_retries)

        try:
            await asyncio.gather(*(one(i) for i in range(len(calls))))
        finally:
            if bar is not None:
                bar.close()
        return results

    def run_sync(self, calls: list[Callable[[], Awaitable[ChatResponse]]]) -> list[ChatResponse | str]:
        """From synchronous code (the stages): a private event loop per batch."""
        return asyncio.run(self.run(calls))


class CallProgress:
    """The one progress bar of LLM calls, remote (this engine) and local (`LocalClient`) alike.

    tqdm's own fields give elapsed<ETA and calls/s; the postfix adds failures, retries, tokens and
    tokens/s of this batch. A failed call is a reason string instead of a `ChatResponse`.
    """

    def __init__(self, total: int, label: str = "") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label or None, unit="call", dynamic_ncols=True, smoothing=0.1)
        self.t0 = time.monotonic()
        self.failures = self.tokens = 0

    def advance(self, replies: list[ChatResponse | str], retries: int = 0) -> None:
        """Count finished calls (a micro-batch for a local model, one call for a remote one)."""
        for reply in replies:
            if isinstance(reply, str):
                self.failures += 1
            else:
                self.tokens += reply.usage.prompt_tokens + reply.usage.completion_tokens
        self.bar.set_postfix(failures=self.failures, retries=retries, tok=self.tokens,
                             tok_s=round(self.tokens / max(time.monotonic() - self.t0, 1e-6)), refresh=False)
        self.bar.update(len(replies))

    def close(self) -> None:
        self.bar.close()
