"""Constrained JSON decoding for the local backend: a reply to a flat schema, decoded value by value.

The reply is the fixed JSON frame of `json_frame` (keys, quotes and separators fed to the model as given
text over a KV cache); only the values are generated: enums by trie-constrained decoding over the options'
tokenisations, strings as free text cut at a quote or newline, numbers constrained to digits. The content
is `json.dumps` of the decoded values, so even a random model returns a schema-valid object.

This module knows tokens, logits and the frame; batching, chat templates and model loading are the
client's (`llm.local`).
"""
from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import torch

from oyster_exp.llm.base import ChatRequest, ChatResponse, Usage
from oyster_exp.llm.json_frame import FieldSpec, key_text, render, text_after, value_opener
from oyster_exp.llm.sampling import sample_token, sampling_seed

log = logging.getLogger(__name__)

_STRING_END_CHARS = ('"', "\n", "\r")
_STOP_TOKEN_NAMES = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
_NUM_PREFIX = {True: re.compile(r" ?-?\d*"), False: re.compile(r" ?-?(\d+(\.\d*)?)?")}
_NUM_FULL = {True: re.compile(r" ?-?\d+"), False: re.compile(r" ?-?\d+(\.\d+)?")}
_NUMBER_MAX_TOKENS = 8


class TokenTables:
    """Token tables of one tokenizer: pieces, stop and control tokens, masks for free text, string and number
    values. Built once per model (decoding every vocabulary entry takes a while on a large vocabulary)."""

    def __init__(self, tokenizer: Any, model: Any, device: torch.device):
        n_tok = len(tokenizer)
        out_emb = model.get_output_embeddings()
        self.size = int(out_emb.weight.shape[0]) if out_emb is not None else n_tok
        backend = getattr(tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "decode_batch"):
            self.pieces = backend.decode_batch([[i] for i in range(n_tok)], skip_special_tokens=False)
        else:
            self.pieces = [tokenizer.decode([i]) for i in range(n_tok)]
        self.pieces += [""] * max(0, self.size - n_tok)

        special = set(tokenizer.all_special_ids)
        for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if getattr(added, "special", False):
                special.add(int(tid))
        stop: set[int] = set()
        eos = model.generation_config.eos_token_id
        for e in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
            if e is not None:
                stop.add(int(e))
        vocab = tokenizer.get_vocab()
        stop.update(vocab[name] for name in _STOP_TOKEN_NAMES if name in vocab and vocab[name] in special)
        self.stop_ids = stop
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(stop, default=None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

        inf = float("-inf")
        control = torch.zeros(self.size, dtype=torch.bool)
        control[sorted(i for i in special - stop if i < self.size)] = True
        control[n_tok:] = True
        # free text: no chat-control tokens other than the end of the turn
        self.text_ban = torch.zeros(self.size).masked_fill(control, inf).to(device)
        # string values: additionally no backslash (the value is plain text, escaped by json.dumps)
        backslash = torch.tensor(["\\" in p for p in self.pieces], dtype=torch.bool)
        self.string_ban = torch.zeros(self.size).masked_fill(control | backslash, inf).to(device)
        self.ends_string = {i for i, p in enumerate(self.pieces)
                            if i not in special and any(c in p for c in _STRING_END_CHARS)}
        ender = torch.zeros(self.size, dtype=torch.bool)
        ender[sorted(self.ends_string | {i for i in stop if i < self.size})] = True
        self.string_ban_no_end = torch.zeros(self.size).masked_fill(control | backslash | ender, inf).to(device)
        # below a minLength: only tokens that add visible text (no lone bytes of a character, no blanks)
        blank = torch.tensor([not p.strip() or "\ufffd" in p for p in self.pieces], dtype=torch.bool)
        self.string_ban_need_text = torch.zeros(self.size).masked_fill(
            control | backslash | ender | blank, inf).to(device)
        # numbers: candidate pieces made of digits, sign, point and one leading space
        self.numeric = [(i, p) for i, p in enumerate(self.pieces)
                        if i not in special and p.strip() and all(c in " -.0123456789" for c in p)]
        ends = {i for i, p in enumerate(self.pieces) if i not in special and p[:1] in (",", "}", "\n")}
        self.number_end = sorted(ends | {i for i in stop if i < self.size})


class _Sequence:
    """One structured reply being decoded: a KV cache, ids waiting to be fed, the next logits."""

    def __init__(self, decoder: ConstrainedDecoder, prompt_ids: list[int], req: ChatRequest):
        from transformers import DynamicCache

        self.c = decoder
        self.cache = DynamicCache(config=decoder.model.config)
        self.temperature = req.temperature
        self.top_p = req.top_p
        self.gen = torch.Generator(device=decoder.device).manual_seed(sampling_seed(req))
        self.pending: list[int] = list(prompt_ids)
        self.completion_tokens = 0      # ids after the prompt, given or generated
        self.forwards = 0
        self._logits: torch.Tensor | None = None

    # -- feeding ---------------------------------------------------------------------------------
    def push(self, ids: list[int]) -> None:
        """Queue ids for the model; they are run in one forward when the next logits are needed."""
        self.pending.extend(ids)
        self.completion_tokens += len(ids)

    def push_text(self, text: str) -> None:
        """Queue the tokens of frame text (keys, quotes, separators) the model is given, not asked for."""
        if text:
            self.push(self.c.encode(text))

    def logits(self) -> torch.Tensor:
        """Logits for the next token, running the queued ids through the model first (one forward)."""
        if self.pending:
            ids = torch.tensor([self.pending], device=self.c.device)
            out = self.c.model(input_ids=ids, past_key_values=self.cache, use_cache=True, **self.c.fwd_kwargs)
            self.cache = out.past_key_values
            self._logits = out.logits[0, -1].float()
            self.pending = []
            self.forwards += 1
        assert self._logits is not None, "no logits before the first forward"
        return self._logits

    # -- choosing --------------------------------------------------------------------------------
    def pick(self, mask: torch.Tensor | None = None, allowed: list[int] | None = None) -> int:
        """The next token: greedy or sampled, under an additive `mask` or among `allowed` ids."""
        logits = self.logits()
        if allowed is not None:
            sub = logits[torch.tensor(allowed, device=logits.device)]
            return allowed[sample_token(sub, self.temperature, self.top_p, self.gen)]
        if mask is not None:
            logits = logits + mask
        return sample_token(logits, self.temperature, self.top_p, self.gen)

    def choose(self, texts: list[str]) -> int:
        """Index of the text chosen token by token over the trie of the texts' tokenisations.

        Tokens shared by all texts still possible are fed without a decision; at a branch the
        model picks among the next tokens that keep the output a prefix of some text.
        """
        seqs = [self.c.encode(t) for t in texts]
        alive = list(range(len(texts)))
        depth = 0
        while True:
            if len(alive) == 1:
                self.push(seqs[alive[0]][depth:])
                return alive[0]
            finished = [i for i in alive if len(seqs[i]) == depth]
            if finished:                # one text is a token prefix of another: it ends here
                return finished[0]
            nxt = sorted({seqs[i][depth] for i in alive})
            tok = nxt[0] if len(nxt) == 1 else self.pick(allowed=nxt)
            self.push([tok])
            alive = [i for i in alive if seqs[i][depth] == tok]
            depth += 1

    def string(self, budget: int, min_length: int = 0, max_length: int | None = None) -> tuple[str, str, bool]:
        """Free text until a token with a quote or newline, the end of turn, or `budget` tokens.

        Returns (value, tail, truncated): `tail` is the text of the last token before its quote;
        it still has to be fed (the cut token itself is not).
        """
        v = self.c.tables
        ids: list[int] = []
        tail = ""
        truncated = True
        # past the budget, a string still short of minLength gets up to min_length more tokens,
        # each adding a visible character (string_ban_need_text), so the minimum is always reached
        step = 0
        while True:
            long_enough = min_length <= 0 or len(self._text(ids).strip()) >= min_length
            if step >= budget + (0 if long_enough else min_length):
                break
            step += 1
            tok = self.pick(v.string_ban if long_enough else v.string_ban_need_text)
            if tok in v.stop_ids:
                truncated = False
                break
            if tok in v.ends_string:
                piece = v.pieces[tok]
                tail = piece[: min(piece.index(c) for c in _STRING_END_CHARS if c in piece)]
                truncated = False
                break
            ids.append(tok)
            self.push([tok])
            if max_length is not None and len(self._text(ids).strip()) >= max_length:
                truncated = False
                break
        value = (self._text(ids) + tail).replace("\ufffd", "").strip()
        if max_length is not None:
            value = value[:max_length].strip() if len(value) > max_length else value
        return value, tail, truncated

    def number(self, integer: bool) -> int | float:
        """An integer or decimal; the first non-numeric choice (`,`, `}`) ends it."""
        v = self.c.tables
        text = ""
        for _ in range(_NUMBER_MAX_TOKENS):
            allowed = [i for i, p in v.numeric if _NUM_PREFIX[integer].fullmatch(text + p)]
            complete = _NUM_FULL[integer].fullmatch(text) is not None
            if complete:
                allowed += v.number_end
            if not allowed:
                break
            tok = self.pick(allowed=allowed)
            if complete and tok in v.number_end:
                break
            text += v.pieces[tok]
            self.push([tok])
        text = text.strip().rstrip(".")
        if not re.search(r"\d", text):
            text = "0"
        return int(text) if integer or "." not in text else float(text)

    def _text(self, ids: list[int]) -> str:
        return self.c.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


class ConstrainedDecoder:
    """Structured replies from one model: the frame fed as text, each value decoded under its constraint.

    `encode` is the client's tokenizer call (cached there); the decoder shares the client's model and
    token tables rather than loading its own.
    """

    def __init__(self, model: Any, tokenizer: Any, tables: TokenTables, device: torch.device,
                 encode: Callable[[str], list[int]]):
        self.model = model
        self.tokenizer = tokenizer
        self.tables = tables
        self.device = device
        self.encode = encode
        params = inspect.signature(model.forward).parameters
        # only the last position's logits are needed: skips the full-vocabulary projection of the prefill
        self.fwd_kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def decode(self, req: ChatRequest, prompt: list[int], specs: list[FieldSpec]) -> ChatResponse:
        """Decode the values of a flat schema into its JSON frame after the `prompt` ids, one request at a time."""
        seq = _Sequence(self, prompt, req)
        values: dict[str, Any] = {}
        truncated = False
        if specs:
            seq.push_text(key_text(0, specs[0].name) + value_opener(specs[0]))
        for k, spec in enumerate(specs):
            after = text_after(specs, k)
            values[spec.name], cut = self._value(seq, spec, after, req.max_tokens_per_field)
            truncated |= cut
        content = json.dumps(values, ensure_ascii=False)
        log.debug("structured reply in %d forwards: %s", seq.forwards, content)
        return ChatResponse(content=content, finish_reason="length" if truncated else "stop",
                            usage=Usage(prompt_tokens=len(prompt), completion_tokens=seq.completion_tokens))

    def _value(self, seq: _Sequence, spec: FieldSpec, after: str, budget: int) -> tuple[Any, bool]:
        """Decode one value and feed the frame up to the next value; also whether a budget cut it."""
        if spec.kind == "enum":
            return spec.options[seq.choose([" " + render(o) + after for o in spec.options])], False
        if spec.kind == "number":
            value = seq.number(spec.integer)
            seq.push_text(after)
            return value, False
        if spec.kind == "string":
            text, tail, cut = seq.string(budget, spec.min_length, spec.max_length)
            seq.push_text(tail + '"' + after)
            return text, cut
        return self._array(seq, spec, after, budget)

    def _array(self, seq: _Sequence, spec: FieldSpec, after: str, budget: int) -> tuple[list[Any], bool]:
        item = spec.item
        assert item is not None
        items: list[Any] = []
        cut = False
        if spec.max_items <= 0:
            seq.push_text(" []" + after)
            return items, cut
        if item.kind == "enum":
            # each choice is one item with what follows it: ", " (more) or "]" + frame (closed)
            prefix = " ["
            while True:
                n = len(items) + 1
                texts: list[str] = []
                ends: list[tuple[Any, bool]] = []
                if not items and spec.min_items <= 0:
                    texts.append(" []" + after)
                    ends.append((None, True))
                for o in item.options:
                    if n < spec.max_items:
                        texts.append(prefix + render(o) + ", ")
                        ends.append((o, False))
                    if n >= spec.min_items:
                        texts.append(prefix + render(o) + "]" + after)
                        ends.append((o, True))
                k = seq.choose(texts)
                value, closed = ends[k]
                if k == 0 and not items and spec.min_items <= 0:
                    return items, cut
                items.append(value)
                prefix = ""
                if closed:
                    return items, cut
        # strings
        if spec.min_items > 0:
            seq.push_text(' ["')
        elif seq.choose([" []" + after, ' ["']) == 0:
            return items, cut
        while True:
            text, tail, item_cut = seq.string(budget, item.min_length, item.max_length)
            cut |= item_cut
            items.append(text)
            more, close = tail + '", "', tail + '"]' + after
            if len(items) >= spec.max_items:
                seq.push_text(close)
                return items, cut
            if len(items) < spec.min_items:
                seq.push_text(more)
                continue
            if seq.choose([more, close]) == 1:
                return items, cut
