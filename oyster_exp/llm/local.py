"""In-process transformers backend: micro-batched free text, JSON-frame structured output.

Free-text requests that arrive together are generated as one left-padded batch. Structured
requests are decoded into a fixed JSON frame over a KV cache (see `json_frame`), so even a 135M
or a random model returns a schema-valid object: the frame is written by us, enum values are
chosen by trie-constrained decoding, strings are free text cut at a quote or newline.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from oyster_exp.llm.base import ChatRequest, ChatResponse, Usage
from oyster_exp.llm.json_frame import FieldSpec, field_specs

log = logging.getLogger(__name__)
_STOP_CHARS = ('"', "\n", "\\")


class _Decoder:
    """One sequence's incremental decoding state: a KV cache and the next-token logits."""

    def __init__(self, client: LocalClient, prompt_ids: list[int], temperature: float, top_p: float, seed: int):
        from transformers import DynamicCache

        self.c = client
        self.cache = DynamicCache()
        self.temperature = temperature
        self.top_p = top_p
        self.gen = torch.Generator().manual_seed(seed)
        self.completion_tokens = 0
        self.logits = self._forward(prompt_ids)

    def _forward(self, ids: list[int]) -> torch.Tensor:
        out = self.c.model(input_ids=torch.tensor([ids], device=self.c.device), past_key_values=self.cache,
                           use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0, -1].float()

    def feed_ids(self, ids: list[int]) -> None:
        if ids:
            self.logits = self._forward(ids)
            self.completion_tokens += len(ids)

    def feed(self, text: str) -> None:
        self.feed_ids(self.c.encode(text))

    def pick(self, allowed: list[int] | None = None) -> int:
        logits = self.logits
        if allowed is not None:
            mask = torch.full_like(logits, float("-inf"))
            mask[allowed] = 0.0
            logits = logits + mask
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < self.top_p
            probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=self.gen))

    def choose(self, options: list[str]) -> int:
        """Index of the option chosen token by token among the options still matching."""
        seqs = [self.c.encode(o) for o in options]
        alive = list(range(len(options)))
        pos = 0
        while True:
            done = [i for i in alive if len(seqs[i]) == pos]
            pending = [i for i in alive if len(seqs[i]) > pos]
            if not pending:
                return done[0]
            if done:  # an option is complete and others are longer: keep the shortest complete one
                return done[0]
            allowed = sorted({seqs[i][pos] for i in pending})
            tok = allowed[0] if len(allowed) == 1 else self.pick(allowed)
            self.feed_ids([tok])
            alive = [i for i in pending if seqs[i][pos] == tok]
            pos += 1

    def string(self, max_tokens: int, max_chars: int | None) -> str:
        ids: list[int] = []
        tail = ""
        for step in range(max_tokens):
            # the first token may not end the string: a field is never empty
            tok = self.pick(self.c.plain_text_ids if step == 0 else self.c.text_token_ids)
            if tok in self.c.special_ids:
                break
            piece = self.c.piece(tok)
            cut = min((piece.index(ch) for ch in _STOP_CHARS if ch in piece), default=-1)
            if cut >= 0:
                tail = piece[:cut]
                break
            ids.append(tok)
            self.feed_ids([tok])
        text = self.c.tokenizer.decode(ids, skip_special_tokens=True) + tail
        if tail:
            self.feed(tail)
        text = text.replace("\ufffd", "").strip()
        return text[:max_chars] if max_chars else text

    def number(self, integer: bool) -> int | float:
        digits: list[int] = []
        for _ in range(8):
            allowed = self.c.digit_ids if not digits else self.c.digit_ids + self.c.number_stop_ids
            tok = self.pick(allowed)
            if tok in self.c.number_stop_ids:
                break
            digits.append(tok)
            self.feed_ids([tok])
        text = self.c.tokenizer.decode(digits).strip()
        cleaned = text if integer else text
        try:
            return int(cleaned) if integer else float(cleaned)
        except ValueError:
            return 0


class LocalClient:
    backend = "local"

    def __init__(self, model_path: str | Path, model_id: str | None = None, dtype: str = "float32",
                 device: str = "cpu", max_batch_size: int = 8, torch_threads: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_path = Path(model_path)
        self.model_id = model_id or self.model_path.name
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self._lock = threading.Lock()
        self._vocab_tables()

    # --- token tables -------------------------------------------------------------------------
    def _vocab_tables(self) -> None:
        tok = self.tokenizer
        self.special_ids = set(tok.all_special_ids)
        if tok.eos_token_id is not None:
            self.special_ids.add(tok.eos_token_id)
        self._pieces: dict[int, str] = {}
        n = len(tok)
        self.text_token_ids = [i for i in range(n) if i not in self.special_ids]
        self.plain_text_ids = [i for i in self.text_token_ids if self.piece(i).strip() and
                               not any(ch in self.piece(i) for ch in _STOP_CHARS)]
        self.suppress_ids = sorted(self.special_ids - {tok.eos_token_id})
        self.digit_ids = [i for i in self.text_token_ids if self.piece(i).strip() and
                          all(ch in "0123456789-." for ch in self.piece(i).strip()) and
                          not self.piece(i).startswith(" ")]
        self.number_stop_ids = sorted({*self.encode(","), *self.encode("}")} | {tok.eos_token_id} - {None})

    def piece(self, token_id: int) -> str:
        p = self._pieces.get(token_id)
        if p is None:
            p = self.tokenizer.decode([token_id])
            self._pieces[token_id] = p
        return p

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def _prompt(self, req: ChatRequest) -> str:
        msgs = [m.model_dump() for m in req.messages]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    # --- requests -----------------------------------------------------------------------------
    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        out: list[ChatResponse | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        with self._lock, torch.inference_mode():
            for i, r in enumerate(requests):
                if r.response_schema is not None:
                    out[i] = self._structured(r)
                else:
                    groups[(r.temperature, r.top_p, r.seed, r.max_tokens)].append(i)
            for idxs in groups.values():
                for s in range(0, len(idxs), self.max_batch_size):
                    chunk = idxs[s:s + self.max_batch_size]
                    for i, resp in zip(chunk, self._generate([requests[i] for i in chunk])):
                        out[i] = resp
        return out  # type: ignore[return-value]

    def _generate(self, reqs: list[ChatRequest]) -> list[ChatResponse]:
        tok = self.tokenizer
        r0 = reqs[0]
        tok.padding_side = "left"
        enc = tok([self._prompt(r) for r in reqs], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": r0.max_tokens, "pad_token_id": tok.pad_token_id,
                                  "eos_token_id": tok.eos_token_id}
        if self.suppress_ids:  # a reply never contains chat-control tokens other than its end
            kwargs["suppress_tokens"] = self.suppress_ids
        if r0.temperature > 0:
            torch.manual_seed(r0.seed)
            kwargs.update(do_sample=True, temperature=r0.temperature, top_p=r0.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        gen = self.model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:]
        results = []
        for row, mask in zip(new.tolist(), enc["attention_mask"]):
            n = len(row)
            finish = "length"
            if tok.eos_token_id in row:
                n = row.index(tok.eos_token_id)
                finish = "stop"
            text = tok.decode(row[:n], skip_special_tokens=True).strip()
            results.append(ChatResponse(content=text, finish_reason=finish,
                                        usage=Usage(prompt_tokens=int(mask.sum()), completion_tokens=n)))
        return results

    def _structured(self, req: ChatRequest) -> ChatResponse:
        specs = field_specs(req.response_schema or {})
        prompt_ids = self.encode(self._prompt(req))
        d = _Decoder(self, prompt_ids, req.temperature, req.top_p, req.seed)
        values: dict[str, Any] = {}
        for k, spec in enumerate(specs):
            d.feed(("{" if k == 0 else ", ") + json.dumps(spec.name) + ": ")
            values[spec.name] = self._value(d, spec, req.max_tokens_per_field)
        content = json.dumps(values, ensure_ascii=False)
        return ChatResponse(content=content, usage=Usage(prompt_tokens=len(prompt_ids),
                                                         completion_tokens=d.completion_tokens))

    def _value(self, d: _Decoder, spec: FieldSpec, budget: int) -> Any:
        if spec.kind == "enum":
            rendered = [json.dumps(o, ensure_ascii=False) for o in spec.options]
            return spec.options[d.choose(rendered)]
        if spec.kind == "string":
            d.feed('"')
            text = d.string(budget, spec.max_length)
            d.feed('"')
            return text
        if spec.kind == "number":
            return d.number(spec.integer)
        items: list[str] = []
        d.feed('["')
        while True:
            items.append(d.string(budget, None))
            if len(items) >= spec.max_items:
                d.feed('"]')
                break
            if len(items) >= spec.min_items and d.choose(['", "', '"]']) == 1:
                break
            if len(items) < spec.min_items:
                d.feed('", "')
        return items
