"""Minimal strategy edits: accept at most k changes from a proposed strategy list.

Fixes over the reference implementation: the current list is the base and the proposal the
candidate (not swapped), items are counted (not characters), order is kept (no sets), and the
result is always a list (no separator mix-ups). The similarity is a component
(`lingo_bp/similarity=<name>`, conf/lingo_bp/similarity/*.yaml): exact, jaccard, simhash, or a sentence
embedding from the base model, each carrying the replace threshold that suits its scale.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from oyster_exp.config.components import register_component, rng

Similarity = Callable[[str, str], float]

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def _units(text: str) -> list[str]:
    """Words for space-separated text; character bigrams for CJK (no spaces to split on)."""
    text = text.lower().strip()
    if _CJK.search(text):
        chars = [c for c in text if not c.isspace()]
        return [a + b for a, b in zip(chars, chars[1:])] or chars
    return re.findall(r"\w+", text) or ([text] if text else [])


def exact(a: str, b: str) -> float:
    """1 for the same strategy (case and surrounding space ignored), else 0: no replacements."""
    return 1.0 if a.strip().lower() == b.strip().lower() else 0.0


def jaccard(a: str, b: str) -> float:
    ua, ub = set(_units(a)), set(_units(b))
    if not ua and not ub:
        return 1.0
    return len(ua & ub) / len(ua | ub)


def simhash(text: str, bits: int = 64) -> int:
    """Charikar's simhash over word units (CJK: character bigrams), as the paper's code uses."""
    acc = [0] * bits
    for unit in _units(text):
        h = int.from_bytes(hashlib.blake2b(unit.encode(), digest_size=8).digest(), "big")
        for i in range(bits):
            acc[i] += 1 if h >> i & 1 else -1
    return sum(1 << i for i in range(bits) if acc[i] > 0)


def simhash_similarity(a: str, b: str) -> float:
    """1 - Hamming distance / 64 between the two simhashes (the reference's measure)."""
    return 1.0 - bin(simhash(a) ^ simhash(b)).count("1") / 64.0


class EmbeddingMatrix:
    """Mean-pooled input embeddings of a local checkpoint: a sentence embedding, no downloads.

    Reads only the embedding matrix (safetensors) and the tokenizer, so it costs one small tensor in
    memory and no forward pass; good enough to tell a rewording from a new idea, which is all the
    minimal update needs.
    """

    def __init__(self, model_dir: str | Path):
        from safetensors import safe_open
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "tokenizer.json").exists():
            raise ValueError(f"{model_dir}: no tokenizer.json (lingo_bp/similarity=embedding needs a fast tokenizer)")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        weight = None
        for f in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(f), framework="numpy") as st:   # numpy: no torch import for one matrix
                name = next((k for k in st.keys() if k.endswith("embed_tokens.weight")), None)  # noqa: SIM118
                if name is not None:
                    weight = st.get_tensor(name).astype("float32")
                    break
        if weight is None:
            raise ValueError(f"{model_dir}: no '*embed_tokens.weight' tensor in its safetensors files")
        self.weight = weight

    @lru_cache(maxsize=4096)  # noqa: B019 - strategies repeat across steps; the object lives for a stage
    def embed(self, text: str) -> Any:
        import numpy as np

        ids = self.tokenizer.encode(text.strip().lower() or " ", add_special_tokens=False).ids
        vec = self.weight[ids or [0]].mean(0)
        return vec / (np.linalg.norm(vec) + 1e-8)

    def __call__(self, a: str, b: str) -> float:
        return max(0.0, float(self.embed(a) @ self.embed(b)))


@dataclass(frozen=True)
class StrategySimilarity:
    """How alike two strategies are, in [0, 1], and from what value a proposal replaces a dropped item.

    The threshold belongs to the measure: a Jaccard of 0.3 and a simhash of 0.75 both mean "a
    rewording", so each subclass carries its own default (`minimal_update` uses it).
    """

    replace_threshold: float = field(default=0.5, metadata=rng(ge=0.0, le=1.0))

    def __call__(self, a: str, b: str) -> float:
        raise NotImplementedError(f"{type(self).__qualname__} must implement __call__")

    @property
    def reads_base_model(self) -> bool:
        """True when the run's base model decides the scores (the optimize stage then declares `model`)."""
        return False

    def with_base_model(self, model_dir: Callable[[], str | Path]) -> StrategySimilarity:
        """This similarity once the run's base model is known (`model_dir` is called only if needed)."""
        return self


@dataclass(frozen=True)
class ExactSimilarity(StrategySimilarity):
    """Only identical strategies match: every edit is an add or a delete."""

    replace_threshold: float = field(default=1.0, metadata=rng(ge=0.0, le=1.0))

    def __call__(self, a: str, b: str) -> float:
        return exact(a, b)


@dataclass(frozen=True)
class JaccardSimilarity(StrategySimilarity):
    """Word overlap (CJK: character bigrams)."""

    replace_threshold: float = field(default=0.3, metadata=rng(ge=0.0, le=1.0))

    def __call__(self, a: str, b: str) -> float:
        return jaccard(a, b)


@dataclass(frozen=True)
class SimHashSimilarity(StrategySimilarity):
    """1 - Hamming distance / 64 between 64-bit simhashes: the measure of the paper's public code."""

    replace_threshold: float = field(default=0.75, metadata=rng(ge=0.0, le=1.0))

    def __call__(self, a: str, b: str) -> float:
        return simhash_similarity(a, b)


@dataclass(frozen=True)
class EmbeddingSimilarity(StrategySimilarity):
    """Cosine of mean-pooled input embeddings (`EmbeddingMatrix`) of the base model or of `model_dir`.

    The matrix is read on first use, so building the component (a dry run, a test of the config)
    costs nothing.
    """

    replace_threshold: float = field(default=0.7, metadata=rng(ge=0.0, le=1.0))
    model_dir: str | None = None          # a local checkpoint; None: the run's base model (cfg.model)

    @property
    def reads_base_model(self) -> bool:
        return self.model_dir is None

    def with_base_model(self, model_dir: Callable[[], str | Path]) -> StrategySimilarity:
        return self if self.model_dir is not None else dataclasses.replace(self, model_dir=str(model_dir()))

    @cached_property
    def matrix(self) -> EmbeddingMatrix:
        if self.model_dir is None:
            raise ValueError("lingo_bp/similarity=embedding needs a local model directory (the base model's, "
                             "given by the optimize stage, or lingo_bp.similarity.model_dir)")
        return EmbeddingMatrix(self.model_dir)

    def __call__(self, a: str, b: str) -> float:
        return self.matrix(a, b)


register_component("lingo_bp/similarity", "exact", ExactSimilarity)
register_component("lingo_bp/similarity", "jaccard", JaccardSimilarity)
register_component("lingo_bp/similarity", "simhash", SimHashSimilarity)
register_component("lingo_bp/similarity", "embedding", EmbeddingSimilarity)


def clean(items: list[str]) -> list[str]:
    """Strip, drop empties and duplicates, keep the first occurrence's position."""
    out: list[str] = []
    for item in items:
        s = str(item).strip()
        if s and s not in out:
            out.append(s)
    return out


def minimal_update(current: list[str], proposed: list[str], max_changes: int = 2,
                   similarity: Similarity | None = None, replace_threshold: float | None = None) -> list[str]:
    """The current list with at most `max_changes` of the proposal's edits applied.

    Argument order matters: `current` is the chain's list, `proposed` the editor's. An edit is one
    item replaced in place (a proposed item at least `replace_threshold` similar to a dropped one),
    one item added (at the end) or one item deleted; kept items keep their positions. Replacements
    go first (the most similar first: the smallest change of meaning), then the additions least
    like what is already there (they add the most), then deletions. When the whole proposal fits the
    budget it is taken as is. An empty proposal means "no opinion" and changes nothing. `similarity`
    defaults to `JaccardSimilarity()`, `replace_threshold` to the similarity's own `replace_threshold`.
    """
    similarity = JaccardSimilarity() if similarity is None else similarity
    if replace_threshold is None:
        replace_threshold = getattr(similarity, "replace_threshold", None)
        if replace_threshold is None:
            raise ValueError("minimal_update: a plain similarity function needs an explicit replace_threshold")
    current, proposed = clean(current), clean(proposed)
    if not proposed:
        return current
    added = [p for p in proposed if p not in current]
    removed = [c for c in current if c not in proposed]
    pairs = sorted(((similarity(a, r), -ia, -ir, a, r) for ia, a in enumerate(added) for ir, r in enumerate(removed)),
                   reverse=True)
    replace: dict[str, str] = {}                       # removed item -> its replacement
    for sim, _, _, a, r in pairs:
        if sim >= replace_threshold and a not in replace.values() and r not in replace:
            replace[r] = a
    full_cost = len(replace) + (len(added) - len(replace)) + (len(removed) - len(replace))
    if full_cost <= max_changes:
        return proposed
    result = list(current)
    budget = max_changes
    used: set[str] = set()
    for _, _, _, a, r in pairs:                        # most similar first
        if budget == 0:
            break
        if replace.get(r) == a:
            result[result.index(r)] = a
            used.update((a, r))
            budget -= 1
    rest = [a for a in added if a not in used]
    rest.sort(key=lambda a: max((similarity(a, c) for c in result), default=0.0))  # stable: ties keep proposal order
    for a in rest[:budget]:
        result.append(a)
        budget -= 1
    for r in removed:
        if budget == 0:
            break
        if r not in used and r in result and len(result) > 1:
            result.remove(r)
            budget -= 1
    return result
