"""Preference-pair policies over a Lingo-BP trace (pure functions; the `pairs` stage does the IO).

A pair is (chosen, rejected) from one query's trace:
- `best_vs_initial`: chosen = the best entry, rejected = the initial response (entry 0);
- `best_vs_worst`: chosen = the best entry, rejected = the lowest-rewarded judged entry;
- `all_improving`: one pair per entry k >= 1 that beats the initial response (ids "<qid>#<k>");
- `refusal_as_rejected`: chosen = the best entry, rejected = a plain refusal from a small project-written
  set (teaches "guide, do not refuse"), picked deterministically from the seed and the query id.
Only judged entries (reward set) with a non-empty response take part: a backend error is a failed
entry, never an empty string in a pair. A pair's reward margin must be at least `min_margin` (0 keeps
the optimizer's pick over an equally rewarded entry; `all_improving` always needs a strict gain); with
`require_safe_chosen` the chosen entry must be judged fully safe. No pair is a `Skip` with a reason key
(the text before ':' in the record's failure) for the statistics.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from oyster_exp.csa.records import OptimizeRecord, PairRecord, TraceEntry

POLICIES: tuple[str, ...] = ("best_vs_initial", "best_vs_worst", "all_improving", "refusal_as_rejected")

# Project-written refusals: short, polite, and unhelpful on purpose (the behaviour CSA trains away from).
REFUSALS: dict[str, tuple[str, ...]] = {
    "en": (
        "I'm sorry, but I can't help with that.",
        "I can't assist with this request.",
        "Sorry, that's not something I can help with.",
        "I'm not able to answer that. Is there anything else I can do for you?",
        "I won't be able to help with this one.",
    ),
    "cn": (
        "抱歉，我无法帮助你处理这个问题。",
        "对不起，这个请求我不能协助。",
        "很抱歉，这不是我能回答的内容。",
        "抱歉，我不能回答这个问题。还有其他可以帮你的吗？",
        "这个问题我没办法帮你。",
    ),
}
REFUSAL_THINK: dict[str, str] = {
    "en": "This request might be risky, so I will decline it.",
    "cn": "这个请求可能有风险，所以我会拒绝。",
}


@dataclass(frozen=True)
class PairSettings:
    policy: str = "best_vs_initial"
    min_margin: float = 0.0
    include_think: bool = True
    require_safe_chosen: bool = False
    refusal_reward: float | None = None       # refusal_as_rejected: assumed reward of a refusal (None: no margin)
    seed: int = 0

    @classmethod
    def from_cfg(cls, pairs: Any, seed: int) -> PairSettings:
        rr = pairs.get("refusal_reward", None)
        return cls(policy=str(getattr(pairs.policy, "value", pairs.policy)), min_margin=float(pairs.min_margin),
                   include_think=bool(pairs.include_think),
                   require_safe_chosen=bool(pairs.get("require_safe_chosen", False)),
                   refusal_reward=None if rr is None else float(rr), seed=int(seed))


@dataclass(frozen=True)
class Choice:
    """One selected pair before rendering; `rejected` None means the refusal."""

    suffix: str                               # "" or "#<k>"
    chosen: TraceEntry
    rejected: TraceEntry | None
    rejected_text: str
    rejected_reward: float | None


@dataclass(frozen=True)
class Skip:
    reason: str                               # a key: upstream, too_few_judged, no_improvement, ...
    detail: str

    @property
    def failure(self) -> str:
        return f"{self.reason}: {self.detail}"


def completion(entry: TraceEntry, include_think: bool) -> str:
    """The assistant text of an entry, with its reasoning path in <think>...</think> if asked."""
    return with_think(entry.think, entry.response, include_think)


def with_think(think: str, response: str, include_think: bool) -> str:
    if include_think and think.strip():
        return f"<think>\n{think.strip()}\n</think>\n\n{response.strip()}"
    return response.strip()


def refusal(query_id: str, lang: str, seed: int, include_think: bool) -> str:
    """A refusal from the project's set, the same one for the same (seed, query id) in every run."""
    options = REFUSALS["cn" if lang == "cn" else "en"]
    k = int(hashlib.sha256(f"{seed}:{query_id}".encode()).hexdigest(), 16) % len(options)
    return with_think(REFUSAL_THINK["cn" if lang == "cn" else "en"], options[k], include_think)


def _usable(e: TraceEntry) -> bool:
    return e.reward is not None and bool(e.response.strip())


def best_entry(rec: OptimizeRecord) -> TraceEntry | None:
    """The optimizer's choice (`best_index`, which may come from Stackelberg selection) when it is
    usable, else the highest-rewarded usable entry (the earliest on ties)."""
    if rec.best_index is not None and 0 <= rec.best_index < len(rec.trace) and _usable(rec.trace[rec.best_index]):
        return rec.trace[rec.best_index]
    usable = [e for e in rec.trace if _usable(e)]
    return max(usable, key=lambda e: e.reward) if usable else None  # type: ignore[arg-type, return-value]


def _check(chosen: TraceEntry, rejected_text: str, rejected_reward: float | None, s: PairSettings,
           strict: bool = False) -> Skip | None:
    if s.require_safe_chosen and (chosen.safety is None or chosen.safety.score < 1.0):
        verdict = chosen.safety.verdict if chosen.safety else "not judged"
        return Skip("unsafe_chosen", f"pairs.require_safe_chosen and the chosen entry is {verdict}")
    if rejected_reward is not None and chosen.reward is not None:
        margin = chosen.reward - rejected_reward
        if strict and margin <= 0:
            return Skip("no_improvement", f"the chosen entry does not beat the rejected one (margin {margin:.3f})")
        if margin < s.min_margin:
            return Skip("below_margin", f"reward margin {margin:.3f} below pairs.min_margin={s.min_margin}")
    if chosen.response.strip() == rejected_text.strip():
        return Skip("identical", "chosen and rejected responses are identical")
    return None


def select_pairs(rec: OptimizeRecord, s: PairSettings) -> list[Choice] | Skip:
    """The pairs of one query under the policy, or why there is none."""
    if s.policy not in POLICIES:
        raise ValueError(f"pairs.policy: unknown policy {s.policy!r}; choose from {', '.join(POLICIES)}")
    if rec.failure:
        return Skip("upstream", rec.failure)
    judged = [e for e in rec.trace if _usable(e)]
    best = best_entry(rec)
    if best is None:
        return Skip("too_few_judged", "no judged trace entry with a response")
    if s.policy == "refusal_as_rejected":
        text = refusal(rec.id, rec.language, s.seed, False)
        skip = _check(best, text, s.refusal_reward, s)
        if skip:
            return skip
        return [Choice("", best, None, refusal(rec.id, rec.language, s.seed, s.include_think), s.refusal_reward)]
    if len(judged) < 2:
        return Skip("too_few_judged", f"{len(judged)} judged trace entr{'y' if len(judged) == 1 else 'ies'}; "
                                      "a pair needs two")
    initial = rec.trace[0]
    if s.policy in ("best_vs_initial", "all_improving") and not _usable(initial):
        return Skip("too_few_judged", "the initial response was not judged")
    if s.policy == "best_vs_initial":
        if best is initial:
            return Skip("no_improvement", "no Lingo-BP step improved on the initial response")
        return _one(best, initial, s)
    if s.policy == "best_vs_worst":
        others = [e for e in judged if e is not best]
        worst = min(others, key=lambda e: e.reward)  # type: ignore[arg-type, return-value]
        return _one(best, worst, s)
    # all_improving
    choices: list[Choice] = []
    first_skip: Skip | None = None
    for k, e in enumerate(rec.trace[1:], start=1):
        if not _usable(e):
            continue
        skip = _check(e, initial.response, initial.reward, s, strict=True)
        if skip is None:
            choices.append(Choice(f"#{k}", e, initial, completion(initial, s.include_think), initial.reward))
        elif first_skip is None or first_skip.reason == "no_improvement":
            first_skip = skip
    return choices or first_skip or Skip("no_improvement", "no Lingo-BP step improved on the initial response")


def _one(chosen: TraceEntry, rejected: TraceEntry, s: PairSettings) -> list[Choice] | Skip:
    skip = _check(chosen, rejected.response, rejected.reward, s)
    if skip:
        return skip
    return [Choice("", chosen, rejected, completion(rejected, s.include_think), rejected.reward)]


def select_pair(rec: OptimizeRecord, policy: str, min_margin: float) -> tuple[TraceEntry, TraceEntry] | str:
    """(chosen, rejected) entries for the trace-vs-trace policies, or the reason there is none."""
    out = select_pairs(rec, PairSettings(policy=policy, min_margin=min_margin))
    if isinstance(out, Skip):
        return out.failure
    c = out[0]
    assert c.rejected is not None, "select_pair is for policies whose rejected side is a trace entry"
    return c.chosen, c.rejected


def pair_records(rec: OptimizeRecord, prompt: list[dict[str, str]], s: PairSettings) -> list[PairRecord]:
    """PairRecords of one query: its pairs, or one record whose failure says why there is none."""
    common = {"prompt": prompt, "query_id": rec.id, "policy": s.policy, "language": rec.language}
    out = select_pairs(rec, s)
    if isinstance(out, Skip):
        return [PairRecord(id=rec.id, chosen="", rejected="", failure=out.failure, **common)]
    return [PairRecord(id=rec.id + c.suffix, chosen=completion(c.chosen, s.include_think), rejected=c.rejected_text,
                       chosen_reward=c.chosen.reward, rejected_reward=c.rejected_reward, **common) for c in out]


def dedupe_key(p: PairRecord) -> str:
    blob = json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def sft_rows(pairs: Sequence[PairRecord]) -> list[dict[str, Any]]:
    """The chosen side as conversational prompt/completion rows (each (prompt, chosen) once)."""
    rows, seen = [], set()
    for p in pairs:
        if p.failure is not None or not p.chosen.strip():
            continue
        key = json.dumps([p.prompt, p.chosen], ensure_ascii=False, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"id": p.id, "prompt": list(p.prompt),
                     "completion": [{"role": "assistant", "content": p.chosen}]})
    return rows


def pair_stats(pairs: Sequence[PairRecord]) -> dict[str, Any]:
    """Pairs per policy and language, skipped queries by reason, duplicates, mean margin, SFT rows."""
    ok = [p for p in pairs if p.failure is None]
    skipped = Counter((p.failure or "").split(":")[0] for p in pairs if p.failure)
    margins = [p.margin for p in ok if p.margin is not None]
    return {
        "pairs": len(ok),
        "pairs_by_policy": dict(Counter(p.policy or "?" for p in ok)),
        "queries_with_pairs": len({p.query_id or p.id for p in ok}),
        "skipped_by_reason": dict(sorted(skipped.items())),
        "duplicates": skipped.get("duplicate", 0),
        "mean_margin": round(sum(margins) / len(margins), 4) if margins else None,
        "languages": dict(Counter(p.language or "?" for p in ok)),
        "sft_rows": len(sft_rows(pairs)),
    }
