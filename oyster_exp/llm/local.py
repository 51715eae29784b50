"""In-process transformers backend: the `LLMClient` for a local model (loading, chat templates, batching).

Free text: the requests of a micro-batch (similar prompt lengths together, any sampling parameters) are
decoded together by the lockstep loop (`llm.lockstep`: one KV cache, a shared prompt prefix run once,
finished rows dropped). Each row samples from its own `torch.Generator` seeded from the request (its seed
mixed with its messages, see `sampling.sampling_seed`), so a sampled reply depends on its request only, not
on which other requests shared its batch.

Structured output (`response_schema` set) goes to the client's structured decoder, chosen by the
`structured_decoding` knob (`conf/llm/local.yaml`):

- `grammar` (default): `grammar_decoding.GrammarDecoder`, llguidance token masks over a whole micro-batch
  decoded in lockstep, forced ids fed in multi-token forwards, for any JSON schema;
- `frame`: `constrained_decoding.ConstrainedDecoder`, the per-request decoder that feeds the fixed JSON frame
  of a flat schema and generates only the values. Kept as the measured baseline: on the judges' schemas it
  reaches 0.29x the grammar decoder's calls/s on 2 CPU cores (`benchmarks/local_generation.py`).

The decoder's name is part of the client's `cache_backend`, so the call cache never serves one decoder's
reply to the other.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from oyster_exp.llm.base import ChatRequest, ChatResponse, continues_assistant
from oyster_exp.llm.constrained_decoding import ConstrainedDecoder, TokenTables
from oyster_exp.llm.engine import CallProgress
from oyster_exp.llm.grammar_decoding import GrammarDecoder
from oyster_exp.llm.json_frame import field_specs
from oyster_exp.llm.lockstep import Lockstep, TextRow

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def _stderr_is_terminal() -> bool:
    """tqdm draws on stderr: a bar only where someone watches it (not a log file, a pipe or a test)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class LocalClient:
    """One local transformers model behind the `LLMClient` protocol."""

    backend = "local"

    def __init__(self, model_path: str | Path, model_id: str | None = None, dtype: str = "float32",
                 device: str = "cpu", max_batch_size: int = 8, torch_threads: int | None = None,
                 progress: bool | None = None, structured_decoding: str = "grammar"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.model_path = Path(model_path)
        self.model_id = model_id or self.model_path.name
        self.device = torch.device(device)
        self.max_batch_size = max(1, int(max_batch_size))
        # the calls' progress bar (`engine.CallProgress`, the remote clients' bar); None: on a terminal only
        self.progress = _stderr_is_terminal() if progress is None else bool(progress)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        torch_dtype: Any = "auto" if dtype == "auto" else _DTYPES.get(dtype) or getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self.vocab = TokenTables(self.tokenizer, self.model, self.device)
        self.lockstep = Lockstep(self.model, self.vocab, self.device)
        self._encode_cache: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        if structured_decoding not in STRUCTURED_DECODERS:
            raise ValueError(f"structured_decoding={structured_decoding!r}: expected one of "
                             f"{sorted(STRUCTURED_DECODERS)}")
        self.structured_decoding = structured_decoding
        self.decoder = STRUCTURED_DECODERS[structured_decoding](self)
        # the call cache's backend label: the same request decoded by the other decoder is another reply
        self.cache_backend = f"{self.backend}/{structured_decoding}"

    # -- tokens ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens; short texts (frame pieces, enum options) are cached."""
        ids = self._encode_cache.get(text)
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._encode_cache) < 4096 and len(text) < 256:
                self._encode_cache[text] = ids
        return list(ids)

    def count_tokens(self, text: str) -> int:
        """Token count of `text` (the `LLMClient` protocol's budget check)."""
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
        """Free-text requests micro-batched by sampling parameters; structured ones through the decoder."""
        structured = [i for i, r in enumerate(requests) if r.response_schema is not None]
        for i in structured:
            self.decoder.check(requests[i].response_schema)   # an unsupported schema raises before any work
        out: list[ChatResponse | str | None] = [None] * len(requests)
        bar = CallProgress(len(requests), f"local {self.model_id}") if self.progress and requests else None
        with self._lock, torch.inference_mode(), contextlib.ExitStack() as stack:
            if bar is not None:
                stack.callback(bar.close)
            free = [(i, self.prompt_ids(r)) for i, r in enumerate(requests) if r.response_schema is None]
            if free:
                self._in_chunks(free, requests, out, self._generate, bar)
            if structured:
                self._in_chunks([(i, self.prompt_ids(requests[i])) for i in structured], requests, out,
                                self.decoder.decode_batch, bar)
        return out  # type: ignore[return-value]

    def _in_chunks(self, members: list[tuple[int, list[int]]], requests: list[ChatRequest],
                   out: list[ChatResponse | str | None], run: Any, bar: CallProgress | None = None) -> None:
        """`run(reqs, prompts)` over micro-batches of at most `max_batch_size`, similar prompt lengths together
        (less padding); replies land at their request's index in `out`."""
        members = sorted(members, key=lambda m: len(m[1]))
        for s in range(0, len(members), self.max_batch_size):
            chunk = members[s: s + self.max_batch_size]
            replies = run([requests[i] for i, _ in chunk], [ids for _, ids in chunk])
            for (i, _), reply in zip(chunk, replies):
                out[i] = reply
            if bar is not None:
                bar.advance(replies)

    def _generate(self, reqs: list[ChatRequest], prompts: list[list[int]]) -> list[ChatResponse]:
        """Free-text replies of one micro-batch, decoded together by the lockstep loop (`llm.lockstep`)."""
        rows = [TextRow(r, p, self.vocab, self.device) for r, p in zip(reqs, prompts)]
        self.lockstep.run(rows)
        return [r.reply(self.tokenizer) for r in rows]


class _FrameDecoder:
    """The frame decoder behind the batch interface: flat schemas only, one request at a time."""

    def __init__(self, client: LocalClient):
        self.inner = ConstrainedDecoder(client.model, client.tokenizer, client.vocab, client.device, client.encode)

    def check(self, schema: dict[str, Any] | None) -> None:
        field_specs(schema or {})

    def decode_batch(self, reqs: list[ChatRequest], prompts: list[list[int]]) -> list[ChatResponse]:
        return [self.inner.decode(r, p, field_specs(r.response_schema or {})) for r, p in zip(reqs, prompts)]


class _BatchedGrammarDecoder(GrammarDecoder):
    """llguidance masks over a micro-batch (`grammar_decoding`), built from the client's model and tables."""

    def __init__(self, client: LocalClient):
        super().__init__(client.model, client.tokenizer, client.vocab, client.device)
        self.lockstep = client.lockstep     # one loop per client: free text and JSON share it

    def check(self, schema: dict[str, Any] | None) -> None:
        self.grammar(schema or {})


# `structured_decoding` knob -> decoder; each takes the client and offers check(schema) and decode_batch()
STRUCTURED_DECODERS: dict[str, Any] = {"grammar": _BatchedGrammarDecoder, "frame": _FrameDecoder}
