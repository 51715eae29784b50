"""Scored-token log-probs for a batch of sequences without building the (batch, length, vocab) logits.

Why: for a 135M model with a 49k vocabulary the LM head is the largest matmul, and its float32
logits (plus the log-softmax and gradient copies a plain loss keeps) dominate the activation memory.
Here the decoder runs once per layout, then only the scored positions (the response, or prompt and
response for the chosen NLL; never padding, never the rejected prompt) go through the LM head, in
chunks, via `losses.linear_token_logps`.

Two layouts for the decoder: `unpadded` runs each sequence at its own length (on CPU time is FLOPs,
so padding is pure waste, and chosen and rejected of one pair often differ a lot in length);
`padded` runs one right-padded batch (on accelerators one large launch beats many small ones).
`auto` picks `unpadded` on CPU and `padded` elsewhere.

Shared prefixes (unpadded only): chosen and rejected of a pair start with the same prompt tokens, and
under causal attention the hidden states of a common prefix do not depend on what follows. So the
prefix runs once, its keys and values are cached (with their autograd graph), and each side runs only
its own continuation on top. Exact up to float summation order; it saves the prompt's decoder FLOPs
once per pair, though at SmolLM2 size on CPU the third decoder call and the cache concatenation eat
most of that (measured x1.03 with prompts at a quarter of the tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from oyster_exp.training.losses import IGNORE, LM_HEAD_CHUNK, linear_token_logps

Layout = Literal["auto", "unpadded", "padded"]
LAYOUTS = ("auto", "unpadded", "padded")


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


def resolve_layout(layout: str, device: torch.device) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        return "unpadded" if device.type == "cpu" else "padded"
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


def _unpadded_hidden(decoder: Any, input_ids: torch.Tensor, lengths: list[int], needed: list[bool],
                     pair_offset: int | None) -> dict[int, torch.Tensor]:
    """Last hidden states per needed sequence, each run at its own length; sequence i and i+pair_offset
    share the forward pass of their common prefix."""
    hidden: dict[int, torch.Tensor] = {}
    if pair_offset and checkpointed(decoder):
        pair_offset = None  # checkpointed layers drop the cache (a replayed write would double it)
    if pair_offset:
        for i in range(min(pair_offset, len(lengths) - pair_offset)):
            j = i + pair_offset
            if not (needed[i] and needed[j]):
                continue
            # each side keeps at least one token of its own, so neither is a pure cache read
            p = min(common_prefix_length(input_ids[i, :lengths[i]], input_ids[j, :lengths[j]]),
                    lengths[i] - 1, lengths[j] - 1)
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


def scored_token_logps(model: Any, head: torch.nn.Linear, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       scored: torch.Tensor, response: torch.Tensor, layout: str = "auto",
                       chunk: int = LM_HEAD_CHUNK, pair_offset: int | None = None) -> ScoredTokens:
    """Log-probs of every position where `scored != -100` (next-token, causally shifted).

    `input_ids`, `attention_mask`, `scored` and `response` are right-padded (sequences, width);
    `scored` holds the labels the loss needs (e.g. prompt and response for the chosen NLL),
    `response` the response labels (a subset of `scored`'s positions), which decide `ScoredTokens.response`.
    `pair_offset=n` says sequences i and i+n (chosen and rejected) may share a prefix worth running once.
    """
    layout = resolve_layout(layout, input_ids.device)
    lengths = attention_mask.sum(-1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions[None] < lengths[:, None]):
        raise ValueError("attention_mask must be right-padded (ones, then zeros) in every row")
    input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
    target_mask = scored[:, 1:width] != IGNORE
    decoder = model.get_decoder()
    if layout == "padded":
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = hidden[:, :-1][target_mask]
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
