"""In-process transformers backend: micro-batched free text, JSON-frame structured output.

Free text: requests with equal sampling parameters are generated together, one left-padded
`model.generate` call per micro-batch. Sampling is done per row by a logits processor with its
own `torch.Generator` seeded from the request (its seed mixed with its messages, see
`sampling_seed`), so a sampled reply depends on its request only, not on which other requests
shared its batch.

Structured output (`response_schema` set): the reply is decoded into a fixed JSON frame over a KV
cache (see `json_frame`): keys, quotes and separators are fed to the model as given text, only
values are generated: enums by trie-constrained decoding over the options' tokenisations, strings
as free text cut at a quote or newline, numbers constrained to digits. The content is then
`json.dumps` of the decoded values, so even a random model returns a schema-valid object.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from oyster_exp.llm.base import ChatRequest, ChatResponse, Usage, continues_assistant
from oyster_exp.llm.json_frame import FieldSpec, field_specs, key_text, render, text_after, value_opener

log = logging.getLogger(__name__)

_STRING_END_CHARS = ('"', "\n", "\r")
_STOP_TOKEN_NAMES = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
_NUM_PREFIX = {True: re.compile(r" ?-?\d*"), False: re.compile(r" ?-?(\d+(\.\d*)?)?")}
_NUM_FULL = {True: re.compile(r" ?-?\d+"), False: re.compile(r" ?-?\d+(\.\d+)?")}
_NUMBER_MAX_TOKENS = 8
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """Greedy when temperature is 0, else nucleus sampling from `gen`."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sorted_p, 0) - sorted_p) < top_p   # the top token is always kept
        probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def sampling_seed(req: ChatRequest) -> int:
    """The request's seed mixed with its messages.

    The service gives every conversation of a step the same seed; with that seed alone a weak model
    samples the same tokens whatever the prompt (the tiny test model then rates every response alike).
    Mixing in the text gives each conversation its own, still reproducible, stream.
    """
    h = hashlib.sha256(str(req.seed).encode())
    for m in req.messages:
        h.update(b"\x00" + m.role.encode() + b"\x00" + m.content.encode())
    return int.from_bytes(h.digest()[:8], "big") >> 1


class _RowSampler:
    """A `generate` logits processor: bans control tokens and samples each row with its own seed.

    `generate` runs greedy; a sampled row's scores are replaced by a one-hot of the token drawn
    from that row's generator, so greedy search picks it.
    """

    def __init__(self, ban: torch.Tensor, reqs: list[ChatRequest], device: torch.device):
        self.ban = ban
        self.rows = [(r.temperature, r.top_p,
                      torch.Generator(device=device).manual_seed(sampling_seed(r)) if r.temperature > 0 else None)
                     for r in reqs]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores + self.ban[: scores.shape[-1]].to(scores.dtype)
        for i, (temp, top_p, gen) in enumerate(self.rows):
            if gen is not None:
                tok = _sample(scores[i], temp, top_p, gen)
                row = torch.full_like(scores[i], float("-inf"))
                row[tok] = 0.0
                scores[i] = row
        return scores


class _Vocab:
    """Token tables of one tokenizer: pieces, control tokens, masks for string and number values."""

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

    def __init__(self, client: LocalClient, prompt_ids: list[int], req: ChatRequest):
        from transformers import DynamicCache

        self.c = client
        self.cache = DynamicCache(config=client.model.config)
        self.temperature = req.temperature
        self.top_p = req.top_p
        self.gen = torch.Generator(device=client.device).manual_seed(sampling_seed(req))
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
        if text:
            self.push(self.c.encode(text))

    def logits(self) -> torch.Tensor:
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
            return allowed[_sample(sub, self.temperature, self.top_p, self.gen)]
        if mask is not None:
            logits = logits + mask
        return _sample(logits, self.temperature, self.top_p, self.gen)

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
        v = self.c.vocab
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
        v = self.c.vocab
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


class LocalClient:
    """One local transformers model behind the `LLMClient` protocol."""

    backend = "local"

    def __init__(self, model_path: str | Path, model_id: str | None = None, dtype: str = "float32",
                 device: str = "cpu", max_batch_size: int = 8, torch_threads: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.model_path = Path(model_path)
        self.model_id = model_id or self.model_path.name
        self.device = torch.device(device)
        self.max_batch_size = max(1, int(max_batch_size))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        torch_dtype: Any = "auto" if dtype == "auto" else _DTYPES.get(dtype) or getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        params = inspect.signature(self.model.forward).parameters
        self.fwd_kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.vocab = _Vocab(self.tokenizer, self.model, self.device)
        self._encode_cache: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    # -- tokens ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids = self._encode_cache.get(text)
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._encode_cache) < 4096 and len(text) < 256:
                self._encode_cache[text] = ids
        return list(ids)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, req: ChatRequest) -> list[int]:
        """The chat-templated messages with the assistant turn opened, or, when the conversation ends in an
        assistant message, that message left open for the model to continue."""
        msgs = [m.model_dump() for m in req.messages]
        prefill = continues_assistant(req.messages)
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=not prefill,
                                                  continue_final_message=prefill, enable_thinking=req.enable_thinking)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- requests --------------------------------------------------------------------------------
    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse | str]:
        specs = {i: field_specs(r.response_schema) for i, r in enumerate(requests) if r.response_schema is not None}
        out: list[ChatResponse | str | None] = [None] * len(requests)
        with self._lock, torch.inference_mode():
            groups: dict[tuple[Any, ...], list[tuple[int, list[int]]]] = defaultdict(list)
            for i, r in enumerate(requests):
                if i not in specs:
                    groups[(r.max_tokens, r.temperature, r.top_p)].append((i, self.prompt_ids(r)))
            for members in groups.values():
                members.sort(key=lambda m: len(m[1]))      # similar lengths together: less padding
                for s in range(0, len(members), self.max_batch_size):
                    chunk = members[s: s + self.max_batch_size]
                    replies = self._generate([requests[i] for i, _ in chunk], [ids for _, ids in chunk])
                    for (i, _), reply in zip(chunk, replies):
                        out[i] = reply
            for i, fields in specs.items():
                out[i] = self._structured(requests[i], fields)
        return out  # type: ignore[return-value]

    def _generate(self, reqs: list[ChatRequest], prompts: list[list[int]]) -> list[ChatResponse]:
        """One left-padded `generate` call for requests with equal max_tokens/temperature/top_p."""
        from transformers import LogitsProcessorList

        v = self.vocab
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[v.pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        gen = self.model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=reqs[0].max_tokens,
            do_sample=False, num_beams=1, repetition_penalty=1.0, use_cache=True,
            pad_token_id=v.pad_id, eos_token_id=sorted(v.stop_ids),
            logits_processor=LogitsProcessorList([_RowSampler(v.text_ban, reqs, self.device)]),
        )
        results = []
        for row, prompt in zip(gen[:, width:].tolist(), prompts):
            end = next((k for k, t in enumerate(row) if t in v.stop_ids), None)
            content_ids = row if end is None else row[:end]
            text = self.tokenizer.decode(content_ids, skip_special_tokens=True).strip()
            results.append(ChatResponse(
                content=text, finish_reason="length" if end is None else "stop",
                usage=Usage(prompt_tokens=len(prompt), completion_tokens=len(row) if end is None else end + 1)))
        return results

    def _structured(self, req: ChatRequest, specs: list[FieldSpec]) -> ChatResponse:
        """Decode the values of a flat schema into its JSON frame, one request at a time."""
        prompt = self.prompt_ids(req)
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
