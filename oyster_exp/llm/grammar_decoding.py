"""Batched schema-constrained decoding for the local backend, through llguidance.

Every structured request of a micro-batch is decoded in one left-padded `model.generate` call. A logits
processor holds one llguidance matcher per row (the request's JSON schema compiled to a grammar), computes
all rows' token masks in parallel in Rust, applies them and then samples each row from its own seeded
generator (as free text does), so a reply depends on its request only, not on its batch mates.

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
from oyster_exp.llm.sampling import pinned_row, sampling_seed

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


class GrammarLogitsProcessor:
    """A `generate` logits processor: per-row llguidance masks, the value-length squeeze, per-row sampling."""

    def __init__(self, decoder: GrammarDecoder, reqs: list[ChatRequest], prompt_width: int):
        import llguidance

        self.d = decoder
        self.width = prompt_width
        self.matchers = []
        for r in reqs:
            m = llguidance.LLMatcher(decoder.ll_tokenizer, decoder.grammar(r.response_schema or {}))
            if m.is_error():
                raise ValueError(f"response_schema cannot be compiled for constrained decoding: {m.get_error()}")
            self.matchers.append(m)
        self.budgets = [r.max_tokens_per_field for r in reqs]
        self.trackers = [_ValueTracker() for _ in reqs]
        self.done = [False] * len(reqs)
        self.rows = [(r.temperature, r.top_p, torch.Generator(device=decoder.device).manual_seed(sampling_seed(r))
                      if r.temperature > 0 else None) for r in reqs]
        self.bitmask = torch.full((len(reqs), (decoder.tables.size + 31) // 32), -1, dtype=torch.int32)

    def _consume(self, input_ids: torch.LongTensor) -> None:
        if input_ids.shape[1] <= self.width:
            return
        last = input_ids[:, -1].tolist()
        for i, tok in enumerate(last):
            if self.done[i]:
                continue
            m = self.matchers[i]
            if tok in self.d.tables.stop_ids or not m.consume_token(tok):
                self.done[i] = True
                continue
            self.trackers[i].feed(self.d.tables.pieces[tok])
            if m.is_stopped():
                self.done[i] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import llguidance.torch as llt

        self._consume(input_ids)
        live = [(m, i) for i, m in enumerate(self.matchers) if not self.done[i]]
        if live:
            llt.fill_next_token_bitmask_par(self.d.executor, live, self.bitmask)
        v = scores.shape[-1]
        bits = np.unpackbits(self.bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :v]
        allowed = torch.from_numpy(bits.astype(bool)).to(scores.device)
        scores = (scores + self.d.tables.text_ban[:v].to(scores.dtype)).masked_fill(~allowed, float("-inf"))
        eos = self.d.tables.eos_id
        for i, (temp, top_p, gen) in enumerate(self.rows):
            if self.done[i]:                # finished: generate pads it; keep the row finite
                scores[i] = float("-inf")
                scores[i, eos] = 0.0
                continue
            t = self.trackers[i]
            if (t.in_string or t.in_number) and t.tokens >= self.budgets[i]:
                closers = self.d.closes_string if t.in_string else self.d.closes_number
                squeezed = scores[i].masked_fill(~closers[:v], float("-inf"))
                if torch.isfinite(squeezed).any():
                    scores[i] = squeezed
            if gen is not None:
                scores[i] = pinned_row(scores[i], temp, top_p, gen)
        return scores


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
        """One left-padded `generate` for the batch; each reply is its row's tokens up to the end of the JSON."""
        from transformers import LogitsProcessorList

        v = self.tables
        width = max(len(p) for p in prompts)
        cap = max(token_bound(bounded_schema(r.response_schema or {}), r.max_tokens_per_field) for r in reqs)
        proc = GrammarLogitsProcessor(self, reqs, width)
        input_ids = torch.tensor([[v.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        gen = self.model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=cap, do_sample=False, num_beams=1,
            repetition_penalty=1.0, use_cache=True, pad_token_id=v.pad_id, eos_token_id=sorted(v.stop_ids),
            logits_processor=LogitsProcessorList([proc]))
        out = []
        for i, (row, prompt) in enumerate(zip(gen[:, width:].tolist(), prompts)):
            end = next((k for k, t in enumerate(row) if t in v.stop_ids), None)
            ids = row if end is None else row[:end]
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            finished = proc.matchers[i].is_accepting()
            if not finished:
                log.debug("structured reply cut at %d tokens: %s", len(ids), text)
            out.append(ChatResponse(content=text, finish_reason="stop" if finished else "length",
                                    usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(ids))))
        return out
