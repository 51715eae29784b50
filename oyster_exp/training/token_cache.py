"""Tokenised preference pairs cached on disk with `datasets` (Arrow), so a rerun or a sweep arm skips tokenising.

The cache file name is a hash of everything the token ids depend on: the tokenizer (its vocabulary,
merges and special tokens, via the serialised fast tokenizer), the chat template, `max_length`, the
truncation policy, the tokeniser code version and the examples themselves. Any change gives a new
file; the same inputs reuse the old one (`Dataset.map(cache_file_name=..., load_from_cache_file=True)`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

TOKENIZE_VERSION = 1
"""Bump when `data.tokenize_example` changes what it produces, so old cache files are not reused."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer's full state and chat template (not its path: a moved copy is the same)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None
             else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps({"template": tokenizer.chat_template, "eos": tokenizer.eos_token,
                         "specials": sorted(map(str, tokenizer.all_special_tokens))}, sort_keys=True).encode())
    return h.hexdigest()


def cache_key(examples: list[Any], tokenizer: Any, max_length: int, truncation: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": TOKENIZE_VERSION, "tok": tokenizer_fingerprint(tokenizer), "max_length": max_length,
                         "truncation": truncation}, sort_keys=True).encode())
    for ex in examples:
        h.update(ex.model_dump_json().encode())
        h.update(b"\n")
    return h.hexdigest()[:32]


def tokenize_cached(examples: list[Any], tokenizer: Any, max_length: int, truncation: str,
                    cache_dir: Path) -> list[dict[str, Any]]:
    """`data.tokenize_example` over `examples` through an Arrow cache file in `cache_dir`."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    from oyster_exp.training.tokenize import PreferenceExample, tokenize_example

    if not examples:
        return []
    disable_progress_bar()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"pairs-{cache_key(examples, tokenizer, max_length, truncation)}.arrow"
    rows = Dataset.from_list([{"example": ex.model_dump_json()} for ex in examples])

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        return tokenize_example(PreferenceExample.model_validate_json(row["example"]), tokenizer, max_length,
                                truncation)

    mapped = rows.map(tokenize, remove_columns=["example"], cache_file_name=str(path), load_from_cache_file=True,
                      new_fingerprint=path.stem)
    return mapped.to_list()
