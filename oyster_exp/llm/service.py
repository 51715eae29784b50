"""The roles of the method (actor, user judge, safety judge, editor) bound to clients.

The service is where replies become data: it consults the call cache, counts calls, tokens and
failures per stage and role, validates structured replies against their pydantic model, re-asks
(with a new seed, so the retry is a different request) and, after the last attempt, returns a
failure with its reason instead of raising or inventing a value.

Before the first call that the cache cannot answer, every distinct remote endpoint of the configured
roles is probed once (`preflight`, set by `build_service`): a dead server, a refused key or an unknown model
stops the run with an `EndpointError` naming the role and URL, instead of every call failing slowly. A
conversation's attempts come from one budget (its client engine's `max_attempts`): transport retries spend
it, and a schema re-ask happens only while some is left, so the two never multiply.

A failed outcome leaves nothing in the call cache: transport failures are never stored, and the replies
of a conversation that stayed invalid through every attempt are removed again, so the rerun that retries
the failed record (see `csa.records`) asks the backend anew instead of replaying the same bad replies.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from oyster_exp.llm.base import ChatMessage, ChatRequest, ChatResponse, LLMClient
from oyster_exp.llm.cache import CallCache
from oyster_exp.llm.strict_schema import drop_null_optionals

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)
COUNTER_KEYS = ("calls", "cache_hits", "failures", "retries", "transport_retries", "prompt_tokens",
                "completion_tokens", "structured_requests", "structured_valid")


@dataclass
class Outcome(Generic[T]):
    value: T | None = None
    text: str = ""
    reasoning: str = ""
    failure: str | None = None
    completion_tokens: int = 0
    no_reply: bool = False          # the failure is that no reply came (transport, timeout, refused request),
                                    # not a reply that failed its check


@dataclass
class RoleBinding:
    client: LLMClient
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 128
    max_tokens_per_field: int = 32
    enable_thinking: bool = False


@dataclass
class Usage:
    by_stage_role: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: dict.fromkeys(COUNTER_KEYS, 0)))

    def add(self, stage: str, role: str, key: str, n: int = 1) -> None:
        self.by_stage_role[f"{stage}/{role}"][key] += n

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(COUNTER_KEYS, 0)
        for counts in self.by_stage_role.values():
            for k, v in counts.items():
                out[k] += v
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.totals(), "by_stage_role": {k: dict(v) for k, v in sorted(self.by_stage_role.items())}}


def _takes(client: Any, name: str) -> bool:
    """Does the client's `chat_batch` take `name`? Remote backends report each reply as it lands (`on_reply`,
    `base.OnReply`) and spend per-call attempt budgets (`budgets`); the local one answers whole batches."""
    import inspect

    try:
        return name in inspect.signature(client.chat_batch).parameters
    except (TypeError, ValueError):
        return False


class LLMService:
    def __init__(self, roles: dict[str, RoleBinding], cache: CallCache | None = None, max_retries: int = 2,
                 seed: int = 0, preflight: bool = False):
        self.roles = roles
        self.preflight = preflight
        self._probed: set[Any] = set()     # endpoints already probed (client.endpoint + model)
        self.cache = cache
        self.max_retries = max_retries
        self.seed = seed
        self.stage = "-"
        self.usage = Usage()
        # the configured roles the running stage declared (`llm.roles.<role>`); None: any. Set by the
        # pipeline's RunContext; roles bound at run time (the model under test) are the stage's own.
        self.declared_roles: frozenset[str] | None = None
        self.configured_roles: frozenset[str] = frozenset(roles)

    def _check_role(self, role: str) -> None:
        """A configured role's settings decide the stage's output, so calling one the stage did not declare
        would let a change of that role reuse a stale cache entry."""
        from oyster_exp.core.contract import ContractError

        if self.declared_roles is not None and role in self.configured_roles and role not in self.declared_roles:
            raise ContractError(f"stage {self.stage!r} calls LLM role {role!r}, which it does not declare "
                                f"(add llm.roles.{role} to the stage's config_keys)")

    def _request(self, role: str, messages: list[ChatMessage], schema: dict[str, Any] | None, attempt: int,
                 max_tokens: int | None, seed_offset: int = 0, temperature: float | None = None) -> ChatRequest:
        b = self.roles[role]
        temp = b.temperature if temperature is None else temperature
        return ChatRequest(
            messages=messages,
            max_tokens=max_tokens or b.max_tokens,
            # a retry must not repeat the same greedy reply: sample, with a new seed
            temperature=temp if attempt == 0 else max(temp, 0.7),
            top_p=b.top_p,
            seed=self.seed + seed_offset + attempt,
            response_schema=schema,
            max_tokens_per_field=b.max_tokens_per_field,
            enable_thinking=b.enable_thinking,
        )

    def _probe_endpoints(self) -> None:
        """Probe each distinct remote endpoint of the roles once (clients with a `probe`), before paying for calls.

        All of them, not only the calling role's: a dead judge endpoint should stop the run before the actor's
        replies are bought."""
        from oyster_exp.core.errors import EndpointError

        for name, binding in self.roles.items():
            client = binding.client
            probe = getattr(client, "probe", None)
            if probe is None:
                continue
            ident = (getattr(client, "endpoint", None) or id(client), client.model_id)
            if ident in self._probed:
                continue
            problem = probe()
            if problem is not None:
                url = getattr(client, "base_url", "?")
                raise EndpointError(f"llm.roles.{name}: {client.backend} endpoint {url} (model {client.model_id!r}): "
                                    f"{problem}; no call was made")
            self._probed.add(ident)

    def _keys(self, role: str, requests: list[ChatRequest]) -> list[str]:
        client = self.roles[role].client
        # a backend whose replies also depend on a client setting (the local structured decoder) labels it
        backend = getattr(client, "cache_backend", client.backend)
        return [r.cache_key(backend, client.model_id) for r in requests]

    def _complete(self, role: str, requests: list[ChatRequest],
                  budgets: list[int] | None = None) -> list[ChatResponse | str]:
        """Replies in order; a transport failure becomes its message (a string), never an exception.
        `budgets[i]`: attempts request i may still use, lowered by what its transport attempts spent."""
        client = self.roles[role].client
        out: list[ChatResponse | str | None] = [None] * len(requests)
        misses: list[int] = []
        keys = self._keys(role, requests)
        for i, key in enumerate(keys):
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[i] = hit
                self.usage.add(self.stage, role, "cache_hits")
            else:
                misses.append(i)
        if misses and self.preflight:
            self._probe_endpoints()
        if misses:
            engine = getattr(client, "engine", None)  # remote backends: count the engine's transport retries
            retries_before = engine.stats.retries if engine is not None else 0
            batch = [requests[i] for i in misses]
            extra: dict[str, Any] = {}
            if budgets is not None and _takes(client, "budgets"):
                extra["budgets"] = left = [budgets[i] for i in misses]
            try:
                if self.cache is not None and _takes(client, "on_reply"):
                    def keep(j: int, reply: ChatResponse) -> None:  # paid for: stored even if the batch dies
                        self.cache.put(keys[misses[j]], reply)
                    replies: list[ChatResponse | str] = list(client.chat_batch(batch, on_reply=keep, **extra))
                else:
                    replies = list(client.chat_batch(batch, **extra))
            except Exception as e:
                log.warning("%s/%s: backend error: %s", self.stage, role, e)
                replies = [f"backend error: {type(e).__name__}: {e}"] * len(misses)
            if engine is not None:
                self.usage.add(self.stage, role, "transport_retries", engine.stats.retries - retries_before)
            if "budgets" in extra:
                for i, b in zip(misses, left):
                    budgets[i] = b  # type: ignore[index]
            for i, reply in zip(misses, replies):
                self.usage.add(self.stage, role, "calls")
                out[i] = reply
                if isinstance(reply, ChatResponse):
                    self.usage.add(self.stage, role, "prompt_tokens", reply.usage.prompt_tokens)
                    self.usage.add(self.stage, role, "completion_tokens", reply.usage.completion_tokens)
                    if self.cache is not None:  # another process may have stored it first: use that one
                        out[i] = self.cache.put(keys[i], reply)
        return out  # type: ignore[return-value]

    def _attempts(self, role: str, conversations: list[list[ChatMessage]], schema: type[BaseModel] | None,
                  parse: Any, max_tokens: int | None = None, seed_offsets: list[int] | None = None,
                  temperatures: list[float | None] | None = None) -> list[Outcome[Any]]:
        """Ask, check each reply with `parse` (returns an Outcome or a failure reason), re-ask the rest."""
        results: list[Outcome[Any]] = [Outcome() for _ in conversations]
        pending = list(range(len(conversations)))
        asked: dict[int, list[str]] = {}     # cache keys of every attempt per conversation
        json_schema = schema.model_json_schema() if schema is not None else None  # once per batch, not per request
        engine = getattr(self.roles[role].client, "engine", None)
        # one attempt budget per conversation, shared by transport retries and re-asks (remote clients)
        budgets = [int(engine.max_attempts)] * len(conversations) if engine is not None else None
        for attempt in range(self.max_retries + 1):
            if budgets is not None:
                pending = [i for i in pending if budgets[i] > 0]
            if not pending:
                break
            if attempt:
                self.usage.add(self.stage, role, "retries", len(pending))
            reqs = [self._request(role, conversations[i], json_schema, attempt, max_tokens,
                                  seed_offsets[i] if seed_offsets else 0,
                                  temperatures[i] if temperatures else None) for i in pending]
            if self.cache is not None:
                for i, key in zip(pending, self._keys(role, reqs)):
                    asked.setdefault(i, []).append(key)
            still = []
            sub = [budgets[i] for i in pending] if budgets is not None else None
            replies = self._complete(role, reqs, sub)
            if budgets is not None and sub is not None:
                for i, b in zip(pending, sub):
                    budgets[i] = b
            for i, reply in zip(pending, replies):
                out = Outcome(failure=reply, no_reply=True) if isinstance(reply, str) else parse(reply)
                results[i] = out
                if out.failure is not None:
                    still.append(i)
                elif attempt == 0 and schema is not None:
                    self.usage.add(self.stage, role, "structured_valid")
            pending = still
        pending = [i for i in range(len(conversations)) if results[i].failure is not None]
        for i in pending:
            self.usage.add(self.stage, role, "failures")
            log.warning("%s/%s: gave up after %d attempts: %s", self.stage, role, self.max_retries + 1,
                        results[i].failure)
        if pending and self.cache is not None:
            self.cache.discard([k for i in pending for k in asked.get(i, [])])
        return results

    def text(self, role: str, conversations: list[list[ChatMessage]], max_tokens: int | None = None,
             seed_offsets: list[int] | None = None,
             temperatures: list[float | None] | None = None) -> list[Outcome[Any]]:
        """Free-text replies; `seed_offsets`/`temperatures` (per conversation) make sampled alternatives."""
        self._check_role(role)
        def parse(reply: ChatResponse) -> Outcome[Any]:
            if not reply.content.strip():
                return Outcome(failure="empty reply")
            return Outcome(text=reply.content.strip(), reasoning=reply.reasoning,
                           completion_tokens=reply.usage.completion_tokens)

        return self._attempts(role, conversations, None, parse, max_tokens, seed_offsets, temperatures)

    def structured(self, role: str, conversations: list[list[ChatMessage]], schema: type[T]) -> list[Outcome[T]]:
        self._check_role(role)
        self.usage.add(self.stage, role, "structured_requests", len(conversations))

        original = schema.model_json_schema()

        def parse(reply: ChatResponse) -> Outcome[T]:
            try:
                try:   # a strict server says null for an optional field it leaves out: the default applies
                    data = drop_null_optionals(json.loads(reply.content), original)
                except ValueError:
                    data = None
                value = (schema.model_validate(data) if data is not None and isinstance(data, dict)
                         else schema.model_validate_json(reply.content))
            except ValidationError as e:
                first = e.errors()[0]
                loc = ".".join(str(x) for x in first["loc"]) or "<root>"
                return Outcome(text=reply.content, failure=f"invalid {schema.__name__} reply at {loc}: {first['msg']}")
            return Outcome(value=value, text=reply.content, reasoning=reply.reasoning)

        return self._attempts(role, conversations, schema, parse)
