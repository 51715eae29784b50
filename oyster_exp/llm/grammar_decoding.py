"""Batched schema-constrained decoding for the local backend, through llguidance.

Every structured request of a micro-batch is decoded together by the lockstep loop (`llm.lockstep`: one
KV cache, one forward a step, a shared prompt prefix run once, finished rows dropped). Each row holds one
llguidance matcher (the request's JSON schema compiled to a grammar); the ready rows' token masks are computed
in parallel in Rust; after each sampled token the ids the grammar forces (keys, quotes, separators) are fed
with it in the next forward, not one step each. Each row samples from its own seeded generator (as free text
does), so a reply depends on its request only, not on its batch mates.

Why llguidance (measured on SmolLM2's 49k vocabulary, CPU, see the report in `benchmarks/local_generation.py`):
it installs from PyPI with no dependencies (xgrammar pulls in triton and apache-tvm-ffi; outlines-core needs a
4 s vocabulary build and 50-80 ms per schema to build its index, where llguidance compiles a schema in about
1 ms), handles arbitrary JSON schemas (nested objects, `$ref`, unions) and returns packed bitmasks.

The schema is bounded before compiling so that even a random model finishes a reply:

- every property is required and `additionalProperties` is false (the reply has exactly the schema's keys,
  in schema order, like the frame decoder's);
- an array without `maxItems` gets `json_frame.DEFAULT_MAX_ITEMS` (and `minItems` 1 when absent), as the frame
  decoder assumes;
- a string or number value longer than the request's `max_tokens_per_field` tokens is closed: from then on
  only tokens that end the value are allowed where the grammar permits one (the "squeeze").

Separators are those of `json.dumps` (`", "`, `": "`) with no other whitespace, and strings carry no escapes
(no backslash), so a quote inside a string value always closes it.
"""
from __future__ import annotations

import copy
import json
import logging
from typing import Any

import numpy as np
import torch

from oyster_exp.llm.base import ChatRequest, ChatResponse, Usage
from oyster_exp.llm.constrained_decoding import TokenTables
from oyster_exp.llm.json_frame import DEFAULT_MAX_ITEMS
from oyster_exp.llm.lockstep import Lockstep, LockstepRow

log = logging.getLogger(__name__)

_COMPILE_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ",
                    "json_allowed_escapes": ""}
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_MAX_DEPTH = 16


def bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` whose every reply is finite: all properties required, no extra keys, arrays capped."""
    out = copy.deepcopy(schema)

    def walk(node: Any, depth: int) -> None:
        if depth > _MAX_DEPTH or not isinstance(node, dict):
            return
        if node.get("type") == "object" or "properties" in node:
            props = node.get("properties", {})
            node["required"] = list(props)
            node.setdefault("additionalProperties", False)
            for sub in props.values():
                walk(sub, depth + 1)
        if node.get("type") == "array" or "items" in node:
            node.setdefault("minItems", 1)
            node.setdefault("maxItems", max(DEFAULT_MAX_ITEMS, int(node["minItems"])))
            walk(node.get("items"), depth + 1)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                walk(sub, depth + 1)
        for defs in ("$defs", "definitions"):
            for sub in node.get(defs, {}).values():
                walk(sub, depth + 1)

    walk(out, 0)
    return out


def token_bound(schema: dict[str, Any], per_field: int) -> int:
    """A generous upper bound on the tokens of a reply to the bounded `schema` (the `generate` length cap)."""
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def bound(node: Any, depth: int) -> int:
        if depth > _MAX_DEPTH or not isinstance(node, dict):
            return per_field + 4
        if "$ref" in node:
            return bound(defs.get(str(node["$ref"]).rsplit("/", 1)[-1], {}), depth + 1)
        for key in ("anyOf", "oneOf"):
            if key in node:
                return max(bound(b, depth + 1) for b in node[key]) if node[key] else 4
        if "allOf" in node:
            return sum(bound(b, depth + 1) for b in node["allOf"]) + 2
        if "enum" in node or "const" in node:
            opts = node.get("enum", [node.get("const")])
            return max((len(json.dumps(o, ensure_ascii=False)) for o in opts), default=1) + 2
        if "properties" in node:
            return 2 + sum(len(k) + 4 + bound(v, depth + 1) for k, v in node["properties"].items())
        if node.get("type") == "array":
            return 2 + int(node.get("maxItems", DEFAULT_MAX_ITEMS)) * (bound(node.get("items", {}), depth + 1) + 2)
        return per_field + 8      # a string or number: its token budget, then the squeeze closes it

    return bound(schema, 0) + 16


class _ValueTracker:
    """Where a row's reply stands in JSON terms: inside a string or number value, and for how many tokens.

    Reads the decoded pieces of the tokens the row emitted; escapes cannot occur (the grammar allows none).
    """

    def __init__(self) -> None:
        self.in_string = False
        self.in_number = False
        self.tokens = 0             # tokens emitted inside the current string/number value

    def feed(self, piece: str) -> None:
        content = False             # did this token add characters to an open value?
        for ch in piece:
            if self.in_string:
                if ch == '"':
                    self.in_string = False
                else:
                    content = True
            elif ch == '"':
                self.in_string, self.in_number, self.tokens, content = True, False, 0, False
            elif ch in _NUMBER_CHARS:
                if not self.in_number:
                    self.in_number, self.tokens = True, 0
                content = True
            else:
                self.in_number = False
        if content and (self.in_string or self.in_number):
            self.tokens += 1


class GrammarRow(LockstepRow):
    """A structured reply: its llguidance matcher and value tracker on top of the lockstep row.

    After each sampled token the ids the grammar forces next (keys, quotes, separators) are queued with it,
    so the loop feeds them in the same forward instead of one step each.
    """

    def __init__(self, decoder: GrammarDecoder, req: ChatRequest, prompt: list[int]):
        import llguidance

        super().__init__(req, prompt, decoder.device)
        self.d = decoder
        self.matcher = llguidance.LLMatcher(decoder.ll_tokenizer, decoder.grammar(req.response_schema or {}))
        if self.matcher.is_error():
            raise ValueError("response_schema cannot be compiled for constrained decoding: "
                             f"{self.matcher.get_error()}")
        self.budget = req.max_tokens_per_field
        self.cap = token_bound(bounded_schema(req.response_schema or {}), req.max_tokens_per_field)
        self.tracker = _ValueTracker()
        self.pending += self._forced()

    def _accept(self, ids: list[int]) -> None:
        for tok in ids:
            self.tracker.feed(self.d.tables.pieces[tok])
        self.ids.extend(ids)

    def _forced(self) -> list[int]:
        """The ids the grammar allows no alternative to from here, consumed and recorded."""
        ff = list(self.matcher.compute_ff_tokens())
        if ff and self.matcher.consume_tokens(ff):
            self._accept(ff)
            return ff
        return []

    def choose(self, scores: torch.Tensor) -> int:
        """The next token from grammar-masked `scores`: squeezed to a value's closers past its token budget."""
        t = self.tracker
        if (t.in_string or t.in_number) and t.tokens >= self.budget:
            closers = self.d.closes_string if t.in_string else self.d.closes_number
            squeezed = scores.masked_fill(~closers[: scores.shape[-1]], float("-inf"))
            if torch.isfinite(squeezed).any():
                scores = squeezed
        return super().choose(scores)

    def advance(self, tok: int) -> None:
        """Take the sampled token, queue it with what the grammar forces next; done at the end or the cap."""
        m = self.matcher
        if tok in self.d.tables.stop_ids or not m.consume_token(tok):
            self.done = True
            return
        self._accept([tok])
        self.pending = [tok] + ([] if m.is_stopped() else self._forced())
        self.done = m.is_stopped() or len(self.ids) >= self.cap

    def reply(self, tokenizer: Any) -> ChatResponse:
        text = tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        finished = self.matcher.is_accepting() and not self.matcher.is_error()
        if not finished:
            log.debug("structured reply cut at %d tokens: %s", len(self.ids), text)
        return ChatResponse(content=text, finish_reason="stop" if finished else "length",
                            usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=len(self.ids)))


class GrammarDecoder:
    """Decodes structured requests, a micro-batch at a time, into replies valid for their JSON schema."""

    name = "grammar"

    def __init__(self, model: Any, tokenizer: Any, tables: TokenTables, device: torch.device):
        import llguidance
        import llguidance.hf

        self.model = model
        self.tokenizer = tokenizer
        self.tables = tables
        self.device = device
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=tables.size,
                                                         eos_token=sorted(tables.stop_ids))
        self.executor = llguidance.LLExecutor(num_threads=max(1, min(4, torch.get_num_threads())))
        pieces = tables.pieces
        self.closes_string = torch.tensor(['"' in p for p in pieces], dtype=torch.bool, device=device)
        self.closes_number = torch.tensor([bool(p) and any(c not in _NUMBER_CHARS for c in p) for p in pieces],
                                          dtype=torch.bool, device=device)
        self._grammars: dict[str, str] = {}
        self.lockstep = Lockstep(model, tables, device)
        self._bitmask = torch.full((1, (tables.size + 31) // 32), -1, dtype=torch.int32)

    def grammar(self, schema: dict[str, Any]) -> str:
        """The llguidance grammar of a bounded schema (compiled once per distinct schema)."""
        import llguidance

        key = json.dumps(schema, sort_keys=True)
        g = self._grammars.get(key)
        if g is None:
            g = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(bounded_schema(schema)),
                                                              defaults=dict(_COMPILE_OPTIONS))
            msg = llguidance.LLMatcher.validate_grammar(g, self.ll_tokenizer)
            if msg and not msg.startswith("WARNING"):
                raise ValueError(f"response_schema is not supported by constrained decoding: {msg}")
            self._grammars[key] = g
        return g

    def decode_batch(self, reqs: list[ChatRequest], prompts: list[list[int]]) -> list[ChatResponse]:
        """Decode the batch in lockstep (`lockstep.Lockstep`); llguidance masks every ready row in parallel."""
        rows = [GrammarRow(self, r, p) for r, p in zip(reqs, prompts)]
        self.lockstep.run(rows, self._constrain)
        return [r.reply(self.tokenizer) for r in rows]

    def _constrain(self, rows: list[GrammarRow], scores: torch.Tensor) -> torch.Tensor:
        """The rows' grammar masks (computed together, in Rust threads) and the chat-control ban."""
        import llguidance.torch as llt

        if self._bitmask.shape[0] < len(rows):
            self._bitmask = torch.full((len(rows), self._bitmask.shape[1]), -1, dtype=torch.int32)
        mask = self._bitmask[: len(rows)]
        llt.fill_next_token_bitmask_par(self.executor, [(r.matcher, j) for j, r in enumerate(rows)], mask)
        v = scores.shape[-1]
        bits = np.unpackbits(mask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :v]
        allowed = torch.from_numpy(bits.astype(bool)).to(scores.device)
        return (scores + self.tables.text_ban[:v].to(scores.dtype)).masked_fill(~allowed, float("-inf"))
