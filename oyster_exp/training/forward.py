"""Scored-token log-probs for a batch of sequences without building the (batch, length, vocab) logits.

Why: for a 135M model with a 49k vocabulary the LM head is the largest matmul, and its float32
logits (plus the log-softmax and gradient copies a plain loss keeps) dominate the activation memory.
Here the decoder runs once per layout, then only the scored positions (the response, or prompt and
response for the chosen NLL; never padding, never the rejected prompt) go through the LM head, in
chunks, via `losses.linear_token_logps`.

Three layouts for the decoder. `packed` concatenates every sequence into one padding-free row
(position ids restart per sequence) and runs one decoder call whose attention, registered with
transformers for that call only, stays inside each sequence. On CPU time is FLOPs, so padding is
pure waste, and one call matters too: each decoder call's backward writes a full-size gradient for
every weight matrix (106 MB for SmolLM2), which for a short continuation costs more than its FLOPs,
and the calls' gradients must then be summed; `packed` measured x1.37 over `unpadded` on the
benchmark batches. `unpadded` runs each sequence at its own length, for models whose attention the
packed path cannot reproduce (`packs` checks). `padded` runs one right-padded batch (on accelerators
one large launch beats many small ones). `auto` picks `packed` (else `unpadded`) on CPU, `padded`
elsewhere. The packed call also runs the gated MLPs through `fused.fused_mlps`, which keeps half the
MLP activations for backward.

Shared prefixes: chosen and rejected of a pair start with the same prompt tokens, and under causal
attention the hidden states of a common prefix do not depend on what follows. So the prefix runs
once and each side only its own continuation, attending to the prefix: in `packed` the prompt is a
parent segment of the row, in `unpadded` its keys and values are cached (with their autograd graph)
and each side continues from them in a call of its own. Exact up to float summation order.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from oyster_exp.training.fused import fused_mlps
from oyster_exp.training.losses import IGNORE, LM_HEAD_CHUNK, linear_token_logps

Layout = Literal["auto", "packed", "unpadded", "padded"]
LAYOUTS = ("auto", "packed", "unpadded", "padded")
PACKED_ATTENTION = "oyster_packed"
"""The attention implementation name `packed` registers with transformers for the length of one call."""


@dataclass
class ScoredTokens:
    """Flat per-token results over all scored positions of all sequences, in sequence order.

    `logps[k]` is log p(token) at scored position k, `seq[k]` the sequence it belongs to and
    `response[k]` whether that position is a response token (`labels != -100`).
    """

    logps: torch.Tensor
    seq: torch.Tensor
    response: torch.Tensor
    num_sequences: int

    def response_mean(self) -> torch.Tensor:
        """Mean response-token log-prob per sequence (0 for a sequence with no response token)."""
        zeros = self.logps.new_zeros(self.num_sequences)
        total = zeros.index_add(0, self.seq, self.logps * self.response)
        count = torch.bincount(self.seq[self.response], minlength=self.num_sequences)
        return total / count.clamp(min=1)

    def nll(self, sequences: int, response_only: bool) -> torch.Tensor:
        """Token-weighted mean NLL over the first `sequences` sequences (0 when nothing is scored)."""
        keep = self.seq < sequences
        if response_only:
            keep = keep & self.response
        return -(self.logps * keep).sum() / keep.sum().clamp(min=1)


def output_head(model: Any) -> torch.nn.Linear | None:
    """The model's LM head if logits are exactly `head(last_hidden_state)`, else None.

    Checked numerically on a few tokens rather than by architecture name: soft-capping, logit
    scaling, a bias or a PEFT-wrapped head all fail the check and send the caller to the plain
    logits path, which is slower but always right.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.dim() != 2 \
            or head.weight.shape[0] < 9:  # also catches weights sharded away (DeepSpeed ZeRO-3)
        return None
    ids = torch.arange(1, 9, device=head.weight.device)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits.float()
            hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            mine = head(hidden).float()
    except (AttributeError, TypeError, ValueError, NotImplementedError):  # no separable decoder: not this path
        return None
    finally:
        model.train(was_training)
    scale = float(logits.abs().max()) + 1.0
    return head if bool((logits - mine).abs().max() <= 1e-4 * scale) else None


def stack_padded(parts: list[torch.Tensor], value: int) -> torch.Tensor:
    """Right-pad (rows, width_i) tensors with `value` to the widest and stack them along rows."""
    width = max(t.shape[1] for t in parts)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in parts])


def resolve_layout(layout: str, device: torch.device, packable: bool = False) -> str:
    """`auto`: `packed` on CPU where the model passes `packs`, `unpadded` on other CPU models, else `padded`."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        return ("packed" if packable else "unpadded") if device.type == "cpu" else "padded"
    return layout


MIN_SHARED_PREFIX = 8
"""Shorter common prefixes are not worth a third decoder call."""


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D token tensors."""
    n = min(a.numel(), b.numel())
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if differ.numel() else n


def _continue_from(decoder: Any, ids: torch.Tensor,
                   prefix_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Hidden states of `ids` (1-D) placed after a prefix whose per-layer keys and values are `prefix_kv`."""
    from transformers import DynamicCache

    cache = DynamicCache(ddp_cache_data=prefix_kv)  # a fresh cache: update() concatenates, prefix_kv stays intact
    return decoder(input_ids=ids[None], past_key_values=cache, use_cache=True).last_hidden_state[0]


def _prefix_states(decoder: Any,
                   ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]] | None:
    """Hidden states and per-layer (keys, values) of a prefix, or None when the model's cache is not a
    plain full-attention DynamicCache (e.g. sliding windows)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    out = decoder(input_ids=ids[None], use_cache=True)
    cache = out.past_key_values
    if type(cache) is not DynamicCache or not cache.layers or not all(
            type(layer) is DynamicLayer and layer.is_initialized and layer.keys.shape[-2] == ids.numel()
            for layer in cache.layers):
        return None
    return out.last_hidden_state[0], [(layer.keys, layer.values) for layer in cache.layers]


def checkpointed(decoder: Any) -> bool:
    """Does any layer of `decoder` recompute its forward in backward (activation checkpointing)?

    Two ways in: transformers' own (`gradient_checkpointing` set on the layers it wraps) and a wrapper
    module around each layer, which is how FSDP's activation checkpointing (Lightning's
    `activation_checkpointing_policy`, `apply_activation_checkpointing`) does it and which sets no flag.
    """
    try:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    except ImportError:  # pragma: no cover - torch builds without distributed
        CheckpointWrapper = ()
    return any(bool(getattr(m, "gradient_checkpointing", False)) or isinstance(m, CheckpointWrapper)
               for m in decoder.modules())


def _pair_prefixes(input_ids: torch.Tensor, lengths: list[int], needed: list[bool],
                   pair_offset: int) -> Iterator[tuple[int, int, int]]:
    """(i, j, p) for each pair of needed sequences i and j = i + pair_offset (a chosen and its rejected): p is
    their common prefix, cut so that each side keeps at least one token of its own (never a pure cache read)."""
    for i in range(min(pair_offset, len(lengths) - pair_offset)):
        j = i + pair_offset
        if needed[i] and needed[j]:
            yield i, j, min(common_prefix_length(input_ids[i, :lengths[i]], input_ids[j, :lengths[j]]),
                            lengths[i] - 1, lengths[j] - 1)


def _unpadded_hidden(decoder: Any, input_ids: torch.Tensor, lengths: list[int], needed: list[bool],
                     pair_offset: int | None) -> dict[int, torch.Tensor]:
    """Last hidden states per needed sequence, each run at its own length; sequence i and i+pair_offset
    share the forward pass of their common prefix."""
    hidden: dict[int, torch.Tensor] = {}
    if pair_offset and checkpointed(decoder):
        pair_offset = None  # checkpointed layers drop the cache (a replayed write would double it)
    if pair_offset:
        for i, j, p in _pair_prefixes(input_ids, lengths, needed, pair_offset):
            if p < MIN_SHARED_PREFIX:
                continue
            prefix = _prefix_states(decoder, input_ids[i, :p])
            if prefix is None:
                break
            states, kv = prefix
            for k in (i, j):
                hidden[k] = torch.cat([states, _continue_from(decoder, input_ids[k, p:lengths[k]], kv)])
    for i, n in enumerate(lengths):
        if needed[i] and i not in hidden:
            hidden[i] = decoder(input_ids=input_ids[i:i + 1, :n], use_cache=False).last_hidden_state[0]
    return hidden


class PackedUnsupportedError(RuntimeError):
    """The model's attention needs something the packed layout's per-segment attention does not do."""


@dataclass(frozen=True)
class Segment:
    """Tokens `start:stop` of the packed row; a continuation also attends to all of its `parent`'s tokens."""

    start: int
    stop: int
    parent: tuple[int, int] | None = None


def _packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      oyster_segments: tuple[Segment, ...] | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention within each segment of a packed row (plus its parent's tokens), through SDPA.

    Registered with transformers' `AttentionInterface` and selected only inside `packed_attention`; the
    linear layers see one (1, tokens, hidden) row, so every weight gradient is one matmul per batch
    instead of one per sequence, while attention never spans two sequences (no (tokens, tokens) mask).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if oyster_segments is None:
        raise PackedUnsupportedError("packed attention called without segments")
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None \
            or kwargs.get("position_bias") is not None:
        raise PackedUnsupportedError("sliding-window, soft-capped or position-biased attention")
    outs = []
    for seg in oyster_segments:
        q = query[:, :, seg.start:seg.stop]
        k, v = key[:, :, seg.start:seg.stop], value[:, :, seg.start:seg.stop]
        mask = None
        if seg.parent is not None:
            p0, p1 = seg.parent
            k = torch.cat([key[:, :, p0:p1], k], dim=2)
            v = torch.cat([value[:, :, p0:p1], v], dim=2)
            # query i (at position p + i) sees the whole parent and its own segment up to itself
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(p1 - p0)[None, None]
        out, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling,
                                        is_causal=mask is None)
        outs.append(out)
    return torch.cat(outs, dim=1), None


def _register_packed_attention() -> None:
    from transformers import AttentionInterface

    if PACKED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED_ATTENTION, _packed_attention)


@contextmanager
def packed_attention(config: Any) -> Iterator[None]:
    """Within the block, `config`'s models use `_packed_attention` (restored on exit, also on errors)."""
    _register_packed_attention()
    saved = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = saved


def _packed_hidden(decoder: Any, input_ids: torch.Tensor, lengths: list[int], needed: list[bool],
                   pair_offset: int | None) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """All needed sequences in one decoder call over one packed row, without padding.

    Sequences i and i+pair_offset that share a prompt put it in the row once, as a parent segment
    both continuations attend to. Returns the row's last hidden states (tokens, hidden) and, per
    sequence, the row index of each of its positions (None for sequences not needed).
    """
    ids, positions, segments = [], [], []
    where: list[torch.Tensor | None] = [None] * len(lengths)
    size = 0

    def put(tokens: torch.Tensor, first_position: int, parent: tuple[int, int] | None) -> tuple[int, int]:
        nonlocal size
        ids.append(tokens)
        positions.append(torch.arange(first_position, first_position + tokens.numel(), device=tokens.device))
        segments.append(Segment(size, size + tokens.numel(), parent))
        size += tokens.numel()
        return size - tokens.numel(), size

    device = input_ids.device
    if pair_offset:
        for i, j, p in _pair_prefixes(input_ids, lengths, needed, pair_offset):
            if p < 1:
                continue
            parent = put(input_ids[i, :p], 0, None)
            for k in (i, j):
                own = put(input_ids[k, p:lengths[k]], p, parent)
                where[k] = torch.cat([torch.arange(*parent, device=device), torch.arange(*own, device=device)])
    for i, n in enumerate(lengths):
        if needed[i] and where[i] is None:
            where[i] = torch.arange(*put(input_ids[i, :n], 0, None), device=device)
    with packed_attention(decoder.config), fused_mlps(decoder):
        hidden = decoder(input_ids=torch.cat(ids)[None], position_ids=torch.cat(positions)[None], use_cache=False,
                         oyster_segments=tuple(segments)).last_hidden_state[0]
    return hidden, where


def packs(model: Any) -> bool:
    """Does the `packed` layout give this model's decoder the hidden states of separate calls?

    Checked numerically on two short sequences sharing a prefix (so a parent segment, a continuation
    and a lone sequence are all exercised), like `output_head`: an attention our per-segment SDPA does
    not reproduce (sliding windows, soft-capping, ALiBi-style biases, a model that ignores
    `position_ids`) fails here and the caller keeps the unpadded layout.
    """
    try:
        decoder = model.get_decoder()
        device = next(model.parameters()).device
        ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 12, 0]], device=device)
        lengths, was_training = [6, 5], model.training
        model.eval()
        try:
            with torch.no_grad():
                row, where = _packed_hidden(decoder, ids, lengths, [True, True], pair_offset=1)
                ref = [decoder(input_ids=ids[i:i + 1, :n], use_cache=False).last_hidden_state[0]
                       for i, n in enumerate(lengths)]
        finally:
            model.train(was_training)
    except (PackedUnsupportedError, AttributeError, TypeError, ValueError, NotImplementedError, StopIteration,
            IndexError, RuntimeError):  # e.g. parameters flattened away by FSDP: not this path
        return False
    scale = max(float(r.abs().max()) for r in ref) + 1.0
    return all(w is not None and bool((row[w] - r).abs().max() <= 1e-4 * scale) for w, r in zip(where, ref))


def scored_token_logps(model: Any, head: torch.nn.Linear, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       scored: torch.Tensor, response: torch.Tensor, layout: str = "auto",
                       chunk: int = LM_HEAD_CHUNK, pair_offset: int | None = None,
                       packable: bool = False) -> ScoredTokens:
    """Log-probs of every position where `scored != -100` (next-token, causally shifted).

    `input_ids`, `attention_mask`, `scored` and `response` are right-padded (sequences, width);
    `scored` holds the labels the loss needs (e.g. prompt and response for the chosen NLL),
    `response` the response labels (a subset of `scored`'s positions), which decide `ScoredTokens.response`.
    `pair_offset=n` says sequences i and i+n (chosen and rejected) may share a prefix worth running once.
    `packable` (the model passed `packs`) lets `auto` pick the packed layout on CPU. Not under activation
    checkpointing: backward replays each layer after the packed attention is switched off again.
    """
    decoder = model.get_decoder()
    replayed = checkpointed(decoder)
    if layout == "packed" and replayed:
        raise ValueError("the packed layout cannot run under activation checkpointing (its backward replays "
                         "the layers without the packed attention); use layout auto or unpadded")
    layout = resolve_layout(layout, input_ids.device, packable and not replayed)
    lengths = attention_mask.sum(-1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions[None] < lengths[:, None]):
        raise ValueError("attention_mask must be right-padded (ones, then zeros) in every row")
    input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
    target_mask = scored[:, 1:width] != IGNORE
    if layout == "padded":
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = hidden[:, :-1][target_mask]
    elif layout == "packed":
        sizes = lengths.tolist()
        needed = [n >= 2 and bool(target_mask[i, :n - 1].any()) for i, n in enumerate(sizes)]
        if any(needed):
            row, where = _packed_hidden(decoder, input_ids, sizes, needed, pair_offset)
            index = torch.cat([w[:n - 1][target_mask[i, :n - 1]] for i, (w, n) in enumerate(zip(where, sizes))
                               if w is not None])
            rows = row.index_select(0, index)
        else:
            rows = head.weight.new_zeros(0, head.weight.shape[1])
    else:
        sizes = lengths.tolist()
        needed = [n >= 2 and bool(target_mask[i, :n - 1].any()) for i, n in enumerate(sizes)]
        hidden = _unpadded_hidden(decoder, input_ids, sizes, needed, pair_offset)
        parts = [hidden[i][:n - 1][target_mask[i, :n - 1]] for i, n in enumerate(sizes) if needed[i]]
        rows = torch.cat(parts) if parts else head.weight.new_zeros(0, head.weight.shape[1])
    targets = input_ids[:, 1:][target_mask]
    seq = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(target_mask)[target_mask]
    logps = linear_token_logps(rows, head.weight, targets, chunk)
    return ScoredTokens(logps=logps, seq=seq, response=(response[:, 1:width] != IGNORE)[target_mask],
                        num_sequences=input_ids.shape[0])
