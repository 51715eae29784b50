"""Preference pairs as token tensors: chat template, prompt masking, truncation, bucketed batches."""
from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader, Sampler

from oyster_exp.training.losses import IGNORE


class PreferenceExample(BaseModel):
    id: str
    prompt: list[dict[str, str]]          # chat messages before the assistant turn
    chosen: str                           # assistant text (may start with <think>...</think>)
    rejected: str


def tokenize_example(ex: PreferenceExample, tokenizer: Any, max_length: int,
                     truncation: Literal["keep_start", "keep_end"] = "keep_end") -> dict[str, Any]:
    """Token ids and labels; the prompt is truncated first, completions only if still too long."""
    prompt_text = tokenizer.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=False)
    p = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token or ""
    c = tokenizer(ex.chosen + eos, add_special_tokens=False)["input_ids"]
    r = tokenizer(ex.rejected + eos, add_special_tokens=False)["input_ids"]
    longest = max(len(c), len(r))
    if len(p) + longest > max_length:
        keep = max(max_length - longest, min(len(p), max_length // 2))
        p = p[-keep:] if truncation == "keep_end" else p[:keep]
    room = max_length - len(p)
    c, r = c[:room], r[:room]
    return {
        "id": ex.id,
        "chosen_input_ids": p + c,
        "chosen_labels": [IGNORE] * len(p) + c,       # response-only
        "chosen_labels_full": p + c,                   # prompt and response (TRL's NLL span)
        "rejected_input_ids": p + r,
        "rejected_labels": [IGNORE] * len(p) + r,
        "prompt_len": len(p),
        "length": len(p) + max(len(c), len(r)),
    }


def _pad(rows: list[list[int]], value: int, width: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad chosen and rejected to one common width, so they share a single forward pass."""
    width = max(max(len(f["chosen_input_ids"]), len(f["rejected_input_ids"])) for f in features)
    out: dict[str, Any] = {"ids": [f["id"] for f in features]}
    for side in ("chosen", "rejected"):
        ids = [f[f"{side}_input_ids"] for f in features]
        out[f"{side}_input_ids"] = _pad(ids, pad_id, width)
        out[f"{side}_attention_mask"] = _pad([[1] * len(x) for x in ids], 0, width)
        out[f"{side}_labels"] = _pad([f[f"{side}_labels"] for f in features], IGNORE, width)
    out["chosen_labels_full"] = _pad([f["chosen_labels_full"] for f in features], IGNORE, width)
    return out


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length (less padding), in a seeded random order that changes per epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, bucketing: bool = True,
                 shuffle: bool = True):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.bucketing, self.shuffle, self.epoch = bucketing, shuffle, 0

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(idx)
        if self.bucketing:
            idx.sort(key=lambda i: self.lengths[i])
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class PreferenceDataModule(L.LightningDataModule):
    def __init__(self, train: list[PreferenceExample], val: list[PreferenceExample], tokenizer: Any,
                 max_length: int = 512, batch_size: int = 2, length_bucketing: bool = True, seed: int = 0,
                 truncation: Literal["keep_start", "keep_end"] = "keep_end"):
        super().__init__()
        self.train_examples, self.val_examples = train, val
        self.tokenizer = tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.length_bucketing, self.seed, self.truncation = length_bucketing, seed, truncation
        self.train_features: list[dict[str, Any]] = []
        self.val_features: list[dict[str, Any]] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.train_features:
            tok = lambda ex: tokenize_example(ex, self.tokenizer, self.max_length, self.truncation)  # noqa: E731
            self.train_features = [tok(e) for e in self.train_examples]
            self.val_features = [tok(e) for e in self.val_examples]

    def _loader(self, feats: list[dict[str, Any]], shuffle: bool) -> DataLoader:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        sampler = BucketBatchSampler([f["length"] for f in feats], self.batch_size, self.seed,
                                     self.length_bucketing, shuffle)
        return DataLoader(feats, batch_sampler=sampler, collate_fn=lambda b: collate(b, pad), num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_features, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_features, shuffle=False) if self.val_features else []
