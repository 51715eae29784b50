"""Lockstep batched decoding for the local backend: many replies over one KV cache, one forward a step.

Both local decoding paths run here: free text (`TextRow`) and grammar-constrained JSON
(`grammar_decoding.GrammarRow`). A row is one request's reply; it knows what it feeds next, how it
picks a token and when it is done. The loop knows the model and the cache:

- **Shared prefix.** The ids every row starts with (the chat template's system prompt, a role's
  instructions) are run once and their cache copied to every row.
- **Ragged feeding.** A step feeds each row the ids it has waiting: the prompt first, later its sampled token
  and whatever the row forces after it (a grammar's keys and separators), several ids in one forward. The rows
  are left-padded to the step's width; padding stays in the cache masked out, and position ids count real ids
  only, so a row sees what it would see alone. `step_width` picks the width that wastes least.
- **Shrinking batch.** A finished row leaves the batch (its cache rows are dropped), instead of being
  padded along until the longest reply ends as `model.generate` does.

Each row samples from its own seeded generator (`sampling.sampling_seed`), so a reply depends on its request
only, not on which other requests shared its batch.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from oyster_exp.llm.base import ChatRequest, ChatResponse, Usage
from oyster_exp.llm.constrained_decoding import TokenTables
from oyster_exp.llm.sampling import sample_token, sampling_seed

# the fixed cost of one forward in row-token forwards: SmolLM2-135M on 2 CPU cores spends ~30 ms a forward
# whatever its size against ~4 ms per row-token at batch 16; it sets how much padding a wide step may carry
STEP_OVERHEAD_TOKENS = 8


def step_width(pending: list[int], overhead: float = STEP_OVERHEAD_TOKENS) -> int:
    """How many positions a step feeds every row, given each row's count of ids waiting.

    A step costs about `rows x width + overhead` row-token forwards (a row with fewer ids is padded, and
    padding is computed too) and advances each row by min(waiting, width) ids. The width with the most real
    ids per unit of cost wins: wide when the rows' runs line up, narrow when a lone row has a long run (it
    catches up over the next steps while the others keep sampling). The best width is always one of the
    rows' counts: between two counts the rate only falls.
    """
    n = len(pending)
    best, best_rate = 1, -1.0
    for w in sorted(set(pending)):
        rate = sum(min(p, w) for p in pending) / (n * w + overhead)
        if rate > best_rate:
            best, best_rate = w, rate
    return best


class LockstepRow:
    """One reply being decoded: the ids waiting to be fed, the reply's ids, its sampling stream.

    Subclasses say how a token is picked from the row's scores (`choose`) and what follows it (`advance`).
    """

    def __init__(self, req: ChatRequest, prompt: list[int], device: torch.device):
        self.temperature, self.top_p = req.temperature, req.top_p
        self.gen = torch.Generator(device=device).manual_seed(sampling_seed(req)) if req.temperature > 0 else None
        self.prompt_tokens = len(prompt)
        self.pending: list[int] = list(prompt)    # ids the model has not seen yet
        self.ids: list[int] = []                  # the reply's ids
        self.done = False

    def choose(self, scores: torch.Tensor) -> int:
        return sample_token(scores, self.temperature, self.top_p, self.gen)

    def advance(self, tok: int) -> None:
        raise NotImplementedError

    def reply(self, tokenizer: Any) -> ChatResponse:
        raise NotImplementedError


class TextRow(LockstepRow):
    """A free-text reply: chat-control tokens banned, ends at a stop token or after `max_tokens`."""

    def __init__(self, req: ChatRequest, prompt: list[int], tables: TokenTables, device: torch.device):
        super().__init__(req, prompt, device)
        self.tables = tables
        self.max_tokens = req.max_tokens
        self.stopped = False
        self.done = self.max_tokens <= 0

    def choose(self, scores: torch.Tensor) -> int:
        return super().choose(scores + self.tables.text_ban[: scores.shape[-1]].to(scores.dtype))

    def advance(self, tok: int) -> None:
        self.ids.append(tok)
        self.stopped = tok in self.tables.stop_ids
        self.pending = [tok]
        self.done = self.stopped or len(self.ids) >= self.max_tokens

    def reply(self, tokenizer: Any) -> ChatResponse:
        content = self.ids[:-1] if self.stopped else self.ids
        return ChatResponse(content=tokenizer.decode(content, skip_special_tokens=True).strip(),
                            finish_reason="stop" if self.stopped else "length",
                            usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=len(self.ids)))


# constrain(rows, scores) -> scores: masks the ready rows' next-token scores (one row of `scores` per row)
Constrain = Callable[[list[Any], torch.Tensor], torch.Tensor]


class Lockstep:
    """The loop: feeds the live rows, samples the rows that are ready, drops the finished ones."""

    def __init__(self, model: Any, tables: TokenTables, device: torch.device):
        self.model = model
        self.pad_id = tables.pad_id
        self.device = device
        params = inspect.signature(model.forward).parameters
        # only the last position's logits are sampled from: skips the vocabulary projection of fed ids
        self.fwd_kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.forwards = 0          # forwards run and row-token positions computed (padding included), for tests
        self.positions = 0

    def run(self, rows: list[LockstepRow], constrain: Constrain | None = None) -> None:
        """Decode every row to its end; `constrain` masks the scores of the rows about to sample."""
        from transformers import DynamicCache

        live = [r for r in rows if not r.done]
        cache = DynamicCache(config=self.model.config)
        attn = self._shared_prefix(live, cache)
        while live:
            width = step_width([len(r.pending) for r in live])
            fed = [r.pending[:width] for r in live]
            for r in live:
                r.pending = r.pending[width:]
            ids = torch.tensor([[self.pad_id] * (width - len(f)) + f for f in fed], device=self.device)
            new = torch.tensor([[0] * (width - len(f)) + [1] * len(f) for f in fed], device=self.device)
            attn = torch.cat([attn, new], dim=1)
            positions = (attn.cumsum(-1) - 1).clamp(min=0)[:, -width:]
            out = self._forward(ids, attn, positions, cache)
            ready = [k for k, r in enumerate(live) if not r.pending]     # the others still have ids to feed
            if ready:
                scores = out.logits[ready, -1].float()
                if constrain is not None:
                    scores = constrain([live[k] for k in ready], scores)
                for j, k in enumerate(ready):
                    live[k].advance(live[k].choose(scores[j]))
            keep = [k for k, r in enumerate(live) if not r.done]
            if keep and len(keep) < len(live):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attn = attn[index]
            live = [live[k] for k in keep]

    def _forward(self, ids: torch.Tensor, attn: torch.Tensor | None, positions: torch.Tensor | None,
                 cache: Any) -> Any:
        self.forwards += 1
        self.positions += ids.numel()
        return self.model(input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache,
                          use_cache=True, **self.fwd_kwargs)

    def _shared_prefix(self, live: list[LockstepRow], cache: Any) -> torch.Tensor:
        """Run the ids every row starts with once, copy their cache to every row; the rows' attention mask.

        Requests of one role share the system prompt and the role's instructions, often most of the prompt.
        The prefix stops one id short of the shortest row so that every row still feeds an id of its own.
        """
        n = min((len(r.pending) for r in live), default=0) - 1
        first = live[0].pending if live else []
        for r in live[1:]:
            n = next((k for k in range(n) if r.pending[k] != first[k]), n)
        if len(live) < 2 or n < 2:
            return torch.zeros((len(live), 0), dtype=torch.long, device=self.device)
        self._forward(torch.tensor([first[:n]], device=self.device), None, None, cache)
        cache.batch_repeat_interleave(len(live))
        for r in live:
            r.pending = r.pending[n:]
        return torch.ones((len(live), n), dtype=torch.long, device=self.device)
