"""Preference pairs as token tensors: chat template, prompt masking, truncation, length-bucketed batches.

The prompt and each completion are tokenised separately and concatenated, so training sees exactly
the token boundary that generation sees (prompt tokens, then sampled tokens). Every completion ends
with the tokenizer's eos token, which teaches the model to stop.
"""
from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler, SequentialSampler

from oyster_exp.training.losses import IGNORE
from oyster_exp.training.tokenize import PreferenceExample, Truncation, tokenize_example

_PAD_FIELDS = {"input_ids": None, "attention_mask": 0, "labels": IGNORE, "labels_full": IGNORE}


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad each side to its own longest sequence.

    Chosen and rejected of one pair often differ a lot in length; padding both to one width would
    grow the shorter side for nothing. The module stacks them itself only where a layout needs it.
    """
    out: dict[str, Any] = {"ids": [f["id"] for f in features]}
    for side in ("chosen", "rejected"):
        width = max(len(f[f"{side}_input_ids"]) for f in features)
        for field, pad in _PAD_FIELDS.items():
            value = pad_id if pad is None else pad
            rows = [f[f"{side}_{field}"] + [value] * (width - len(f[f"{side}_{field}"])) for f in features]
            out[f"{side}_{field}"] = torch.tensor(rows, dtype=torch.long)
    return out


class BucketBatchSampler(BatchSampler):
    """Batches of similar length (less padding) drawn from whatever indices `sampler` yields.

    Indices are read in windows of `batch_size * window_batches`, sorted by length within a window,
    cut into batches, and the batch order is shuffled with `seed` and the epoch. The epoch is the
    sampler's (`DistributedSampler.epoch`, which Lightning sets every epoch) or else the number of
    passes so far, so an epoch's batches are a pure function of (seed, epoch): that is what lets a
    resumed run see exactly the batches an uninterrupted one sees. `skip` drops the first batches
    of the first pass only (the ones a resumed run already trained on).
    """

    def __init__(self, sampler: Sampler[int] | Sequence[int], batch_size: int, drop_last: bool = False,
                 lengths: Sequence[int] = (), seed: int = 0, bucketing: bool = True,
                 shuffle_batches: bool = True, window_batches: int = 64, skip: int = 0):
        super().__init__(sampler, batch_size, drop_last)
        self.lengths, self.seed, self.bucketing = list(lengths), seed, bucketing
        self.shuffle_batches, self.window_batches, self.passes = shuffle_batches, window_batches, 0
        self.skip = skip

    def _window(self, n: int) -> int:
        return self.batch_size * self.window_batches if self.bucketing else max(n, 1)

    def _batches_in(self, size: int) -> int:
        return size // self.batch_size if self.drop_last else -(-size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = getattr(self.sampler, "epoch", self.passes)
        rng = random.Random(self.seed * 1_000_003 + epoch)
        self.passes += 1
        indices = list(self.sampler)
        window = self._window(len(indices))
        batches: list[list[int]] = []
        for start in range(0, len(indices), window):
            chunk = indices[start:start + window]
            if self.bucketing:
                chunk.sort(key=lambda i: self.lengths[i])
            cut = [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
            batches += cut[:self._batches_in(len(chunk))]
        if self.shuffle_batches:
            rng.shuffle(batches)
        skip, self.skip = self.skip, 0
        return iter(batches[skip:])

    def __len__(self) -> int:
        n = len(self.sampler) if isinstance(self.sampler, Sized) else len(self.lengths)
        window = self._window(n)
        full, rest = divmod(n, window)
        return full * self._batches_in(window) + self._batches_in(rest)


class PreferenceDataModule(L.LightningDataModule):
    """Tokenised preference pairs for ORPO (both sides) or SFT (the module reads `chosen` only).

    Tokenisation happens once in `setup` (through an Arrow cache in `cache_dir` when given);
    batches are right-padded to their own longest sequence. Training order is a seeded permutation
    per epoch; with `length_bucketing`, pairs of similar length share a batch and batch order is
    shuffled with `seed` and the epoch.

    The module shards training data itself (rank r of world w takes every w-th index of the epoch's
    permutation, `DistributedSampler` with explicit rank), so the trainer runs with
    `use_distributed_sampler: false`; without bucketing, the union of the ranks' batches at a step
    is exactly the single-process batch of size `batch_size * w`. Resuming from a checkpoint starts
    at the restored epoch and skips the batches it already trained on. Every rank validates on all
    validation pairs (metrics are identical and exact, at the cost of repeated work).
    """

    def __init__(self, train: list[PreferenceExample], val: list[PreferenceExample], tokenizer: Any,
                 max_length: int = 512, batch_size: int = 2, length_bucketing: bool = True, seed: int = 0,
                 truncation: Truncation = "keep_end", num_workers: int = 0, cache_dir: Path | None = None):
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.train_examples, self.val_examples = list(train), list(val)
        self.tokenizer = tokenizer
        self.max_length, self.batch_size, self.length_bucketing = max_length, batch_size, length_bucketing
        self.seed, self.truncation, self.num_workers = seed, truncation, num_workers
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.train_features: list[dict[str, Any]] = []
        self.val_features: list[dict[str, Any]] = []

    @property
    def pad_id(self) -> int:
        """Padding is masked everywhere, so any id works; eos stands in when there is no pad token."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _tokenize(self, examples: list[PreferenceExample]) -> list[dict[str, Any]]:
        if self.cache_dir is not None:
            from oyster_exp.training.token_cache import tokenize_cached

            return tokenize_cached(examples, self.tokenizer, self.max_length, self.truncation, self.cache_dir)
        return [tokenize_example(e, self.tokenizer, self.max_length, self.truncation) for e in examples]

    def _placement(self) -> tuple[int, int, int, int]:
        """(world size, rank, epoch, batches to skip) from the attached Trainer's (restored) progress."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0, 0, 0
        world, rank = int(trainer.world_size), int(trainer.global_rank)
        if world > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
            raise ValueError("PreferenceDataModule shards its data itself: set trainer.use_distributed_sampler=false "
                             "(every conf/trainer/*.yaml does)")
        loop = trainer.fit_loop
        return (world, rank, int(loop.epoch_progress.current.processed),
                int(loop.epoch_loop.batch_progress.current.processed))

    def setup(self, stage: str | None = None) -> None:
        if not self.train_features and self.train_examples:
            self.train_features = self._tokenize(self.train_examples)
        if not self.val_features and self.val_examples:
            self.val_features = self._tokenize(self.val_examples)

    def _loader(self, features: list[dict[str, Any]], train: bool) -> DataLoader:
        skip = 0
        if train:
            world, rank, epoch, skip = self._placement()
            sampler: Sampler[int] = DistributedSampler(features, num_replicas=world, rank=rank, shuffle=True,
                                                       seed=self.seed, drop_last=False)
            sampler.set_epoch(epoch)  # Lightning sets later epochs; the first (maybe resumed) one is set here
        else:
            sampler = SequentialSampler(features)
        batches = BucketBatchSampler(sampler, self.batch_size, drop_last=False,
                                     lengths=[f["length"] for f in features], seed=self.seed,
                                     bucketing=self.length_bucketing, shuffle_batches=train, skip=skip)
        if skip >= len(batches):  # the checkpoint closed the epoch: start the next one
            sampler.set_epoch(sampler.epoch + 1)  # type: ignore[attr-defined]
            batches.skip = 0
        return DataLoader(features, batch_sampler=batches, num_workers=self.num_workers,
                          collate_fn=functools.partial(collate, pad_id=self.pad_id))

    def train_dataloader(self) -> DataLoader:
        if not self.train_features:
            raise ValueError("no training examples")
        return self._loader(self.train_features, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Pairs in a fixed order; an empty list (Lightning skips validation) when there is no split."""
        return self._loader(self.val_features, train=False) if self.val_features else []
