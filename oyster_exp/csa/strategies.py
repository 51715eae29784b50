"""Minimal strategy edits: accept at most k changes from a proposed strategy list.

Fixes over the reference implementation: the current list is the base and the proposal the
candidate (not swapped), items are counted (not characters), order is kept (no sets), and the
result is always a list (no separator mix-ups). The similarity function is pluggable.
"""
from __future__ import annotations

from collections.abc import Callable

Similarity = Callable[[str, str], float]


def _units(text: str) -> set[str]:
    """Words for space-separated text; character bigrams for CJK (no spaces to split on)."""
    text = text.lower().strip()
    words = text.split()
    if len(words) > 1:
        return set(words)
    return {text[i:i + 2] for i in range(max(1, len(text) - 1))}


def jaccard(a: str, b: str) -> float:
    ua, ub = _units(a), _units(b)
    if not ua and not ub:
        return 1.0
    return len(ua & ub) / len(ua | ub)


def _clean(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        s = item.strip()
        if s and s not in out:
            out.append(s)
    return out


def minimal_update(current: list[str], proposed: list[str], max_changes: int = 2,
                   similarity: Similarity = jaccard, replace_threshold: float = 0.3) -> list[str]:
    """Apply the proposal's edits, most similar replacements first, then the most novel additions.

    A proposal at least `replace_threshold` similar to a removed item replaces it in place;
    one replacement, one addition or one deletion each costs one change. With a budget at least
    as large as the full edit, the proposal is returned as is.
    """
    current, proposed = _clean(current), _clean(proposed)
    added = [p for p in proposed if p not in current]
    removed = [c for c in current if c not in proposed]
    if len(added) + len(removed) <= max_changes:
        return proposed or current
    result = list(current)
    budget = max_changes
    # replacements: the new item closest to something removed is the most "minimal" edit
    pairs = sorted(((similarity(a, r), a, r) for a in added for r in removed), reverse=True)
    used_a: set[str] = set()
    used_r: set[str] = set()
    for _, a, r in pairs:
        if budget == 0:
            break
        if a in used_a or r in used_r or _ < replace_threshold:
            continue
        result[result.index(r)] = a
        used_a.add(a)
        used_r.add(r)
        budget -= 1
    rest = [a for a in added if a not in used_a]
    # additions: the proposal least like what is already there adds the most
    rest.sort(key=lambda a: max((similarity(a, c) for c in result), default=0.0))
    for a in rest[:budget]:
        result.append(a)
        budget -= 1
    for r in removed:
        if budget == 0:
            break
        if r not in used_r and r in result and len(result) > 1:
            result.remove(r)
            budget -= 1
    return result
