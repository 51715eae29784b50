"""Preference pairs over a Lingo-BP trace: the policy base class and what every policy shares.

A pair is (chosen, rejected) from one query's trace. Each policy is a component: a frozen dataclass
subclassing `PairPolicy`, one module each under `csa/pair_policies/` (best_vs_initial, best_vs_worst,
all_improving, refusal_as_rejected), registered as `pairs/<name>_schema` and chosen with
`pairs=<name>`. The knobs every policy has live here, once: `min_margin`, `include_think`,
`require_safe_chosen`, `dedupe`, `sft_export`; a policy adds only its own (refusal_as_rejected:
`refusal_reward`) and implements `choose`.

Only judged entries (reward set) with a non-empty response take part: a backend error is a failed
entry, never an empty string in a pair. A pair's reward margin must be at least `min_margin` (0 keeps
the optimizer's pick over an equally rewarded entry; `all_improving` always needs a strict gain); with
`require_safe_chosen` the chosen entry must be judged fully safe. No pair is a `Skip` with a reason key
(the text before ':' in the record's failure) for the statistics. Pure functions and objects only: the
`pairs` stage does the IO.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from oyster_exp.config.components import ge
from oyster_exp.csa.records import OptimizeRecord, PairRecord, TraceEntry

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


def best_entry(rec: OptimizeRecord) -> TraceEntry | None:
    """The optimizer's choice (`best_index`, which may come from Stackelberg selection) when it is
    usable, else the highest-rewarded usable entry (the earliest on ties)."""
    if rec.best_index is not None and 0 <= rec.best_index < len(rec.trace) and usable(rec.trace[rec.best_index]):
        return rec.trace[rec.best_index]
    ok = [e for e in rec.trace if usable(e)]
    return max(ok, key=lambda e: e.reward) if ok else None  # type: ignore[arg-type, return-value]


def usable(e: TraceEntry) -> bool:
    """A judged entry with a response: the only kind that may be a side of a pair."""
    return e.reward is not None and bool(e.response.strip())


@dataclass(frozen=True)
class PairPolicy:
    """How one query's trace becomes preference pairs; subclasses implement `choose`.

    The fields are the knobs every policy shares (conf/pairs/*.yaml documents them); `name` is the
    policy's display name in `PairRecord.policy` and the statistics, not a config key.
    """

    name: ClassVar[str] = ""
    min_margin: float = field(default=0.0, metadata=ge(0.0))   # drop pairs whose reward margin is below this
    include_think: bool = True             # chosen/rejected carry the reasoning path in <think>...</think>
    require_safe_chosen: bool = False      # drop pairs whose chosen entry is not judged fully safe (score 1)
    dedupe: bool = True                    # the stage keeps identical (prompt, chosen, rejected) once
    sft_export: bool = True                # the stage writes files/sft.jsonl (prompt + chosen completion)

    def select(self, rec: OptimizeRecord, seed: int = 0) -> list[Choice] | Skip:
        """The pairs of one query, or why there is none (the checks every policy shares come first)."""
        if rec.failure:
            return Skip("upstream", rec.failure)
        best = best_entry(rec)
        if best is None:
            return Skip("too_few_judged", "no judged trace entry with a response")
        return self.choose(rec, best, seed)

    def choose(self, rec: OptimizeRecord, best: TraceEntry, seed: int) -> list[Choice] | Skip:
        """The policy itself: pairs from a trace whose best usable entry is `best`."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement choose()")

    def check(self, chosen: TraceEntry, rejected_text: str, rejected_reward: float | None,
              strict: bool = False) -> Skip | None:
        """Why (chosen, rejected) is no pair under the shared filters, or None when it is one."""
        if self.require_safe_chosen and (chosen.safety is None or chosen.safety.score < 1.0):
            verdict = chosen.safety.verdict if chosen.safety else "not judged"
            return Skip("unsafe_chosen", f"pairs.require_safe_chosen and the chosen entry is {verdict}")
        if rejected_reward is not None and chosen.reward is not None:
            margin = chosen.reward - rejected_reward
            if strict and margin <= 0:
                return Skip("no_improvement", f"the chosen entry does not beat the rejected one (margin {margin:.3f})")
            if margin < self.min_margin:
                return Skip("below_margin", f"reward margin {margin:.3f} below pairs.min_margin={self.min_margin}")
        if chosen.response.strip() == rejected_text.strip():
            return Skip("identical", "chosen and rejected responses are identical")
        return None

    def against(self, chosen: TraceEntry, rejected: TraceEntry, suffix: str = "", strict: bool = False
                ) -> list[Choice] | Skip:
        """One trace-vs-trace pair, or why the shared filters drop it."""
        skip = self.check(chosen, rejected.response, rejected.reward, strict)
        if skip:
            return skip
        return [Choice(suffix, chosen, rejected, completion(rejected, self.include_think), rejected.reward)]


def judged_entries(rec: OptimizeRecord) -> list[TraceEntry] | Skip:
    """The usable entries when there are at least two (a trace-vs-trace pair needs two)."""
    judged = [e for e in rec.trace if usable(e)]
    if len(judged) < 2:
        return Skip("too_few_judged", f"{len(judged)} judged trace entr{'y' if len(judged) == 1 else 'ies'}; "
                                      "a pair needs two")
    return judged


def judged_initial(rec: OptimizeRecord) -> TraceEntry | Skip:
    """The initial response, when it and at least one other entry were judged (the against-initial policies)."""
    judged = judged_entries(rec)
    if isinstance(judged, Skip):
        return judged
    if not usable(rec.trace[0]):
        return Skip("too_few_judged", "the initial response was not judged")
    return rec.trace[0]


def select_pairs(rec: OptimizeRecord, policy: PairPolicy, seed: int = 0) -> list[Choice] | Skip:
    """The pairs of one query under `policy`, or why there is none."""
    return policy.select(rec, seed)


def pair_records(rec: OptimizeRecord, prompt: list[dict[str, str]], policy: PairPolicy,
                 seed: int = 0) -> list[PairRecord]:
    """PairRecords of one query: its pairs, or one record whose failure says why there is none."""
    common = {"prompt": prompt, "query_id": rec.id, "policy": policy.name, "language": rec.language}
    out = policy.select(rec, seed)
    if isinstance(out, Skip):
        return [PairRecord(id=rec.id, chosen="", rejected="", failure=out.failure, **common)]
    return [PairRecord(id=rec.id + c.suffix, chosen=completion(c.chosen, policy.include_think),
                       rejected=c.rejected_text, chosen_reward=c.chosen.reward, rejected_reward=c.rejected_reward,
                       **common) for c in out]


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


def trl_rows(pairs: Sequence[PairRecord]) -> list[dict[str, Any]]:
    """The pairs in TRL's conversational preference format plus our metadata columns, one row per pair.

    `prompt` is the system/user turns; `chosen` and `rejected` are one assistant message each, which is
    what TRL's preference trainers (DPO, ORPO, CPO, KTO via unpairing) read as is. Skipped pairs are left out.
    """
    return [{"prompt": [{"role": m["role"], "content": m["content"]} for m in p.prompt],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}],
             "id": p.id, "query_id": p.query_id or p.id, "margin": p.margin, "chosen_reward": p.chosen_reward,
             "rejected_reward": p.rejected_reward, "language": p.language or "en", "policy": p.policy or ""}
            for p in pairs if p.failure is None and p.chosen.strip() and p.rejected.strip()]


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
