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


def scored_token_logps(model: Any, head: torch.nn.Linear, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       scored: torch.Tensor, response: torch.Tensor, layout: str = "auto",
                       chunk: int = LM_HEAD_CHUNK) -> ScoredTokens:
    """Log-probs of every position where `scored != -100` (next-token, causally shifted).

    `input_ids`, `attention_mask`, `scored` and `response` are right-padded (sequences, width);
    `scored` holds the labels the loss needs (e.g. prompt and response for the chosen NLL),
    `response` the response labels (a subset of `scored`'s positions), which decide `ScoredTokens.response`.
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
        parts = []
        for i, n in enumerate(lengths.tolist()):
            if n < 2 or not bool(target_mask[i, :n - 1].any()):
                continue
            hidden = decoder(input_ids=input_ids[i:i + 1, :n], use_cache=False).last_hidden_state[0]
            parts.append(hidden[:n - 1][target_mask[i, :n - 1]])
        rows = torch.cat(parts) if parts else head.weight.new_zeros(0, head.weight.shape[1])
    targets = input_ids[:, 1:][target_mask]
    seq = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(target_mask)[target_mask]
    logps = linear_token_logps(rows, head.weight, targets, chunk)
    return ScoredTokens(logps=logps, seq=seq, response=(response[:, 1:width] != IGNORE)[target_mask],
                        num_sequences=input_ids.shape[0])
