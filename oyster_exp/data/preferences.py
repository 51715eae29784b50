"""Preference pairs made elsewhere, in TRL's dataset formats, checked row by row.

A researcher who already has pairs (from another pipeline, a hub dataset, an earlier run's
`pairs/preference.jsonl`) trains on them without the data engine. Each row is one of TRL's preference
shapes:

- standard: `prompt`, `chosen`, `rejected` strings;
- conversational: `prompt` a list of messages (system/user/assistant turns ending on a user turn),
  `chosen` and `rejected` one assistant message each (a list of one, or a single message object);
- implicit prompt: no `prompt` column, `chosen` and `rejected` whole conversations that share every turn
  but their last, assistant one.

Optional metadata is kept when present: `id`, `query_id`, `language` (en or cn), `policy`,
`chosen_reward` / `rejected_reward` (or `score_chosen` / `score_rejected`, the UltraFeedback names).
A bad row raises `DataError` naming the file, the row and the field.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oyster_exp.core.errors import DataError

ROLES = ("system", "user", "assistant")
LANGUAGES = ("en", "cn")


def _fail(where: str, field: str, msg: str) -> DataError:
    return DataError(f"{where}: field {field!r}: {msg}")


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """A message list checked for shape: dicts with a known role and string content."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(where, field, f"expected a non-empty list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise _fail(where, field, f"message {i} must be {{'role': one of {list(ROLES)}, 'content': a string}}, "
                                      f"got {str(m)[:80]}")
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    return out


def _completion(value: Any, where: str, field: str) -> str:
    """The assistant text of a completion: a string, or exactly one assistant message."""
    if isinstance(value, str):
        text = value
    else:
        msgs = _messages(value, where, field)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise _fail(where, field, f"expected one assistant message, got {[m['role'] for m in msgs]}")
        text = msgs[0]["content"]
    if not text.strip():
        raise _fail(where, field, "empty completion")
    return text


def _prompt(row: dict[str, Any], where: str, system_prompt: str) -> tuple[list[dict[str, str]], Any, Any]:
    """(prompt messages, chosen value, rejected value); splits an implicit prompt off the conversations."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if value is None:
            raise _fail(where, field, "missing (a preference row needs chosen and rejected)")
    prompt = row.get("prompt")
    if prompt is None:                                            # implicit prompt: a shared conversation prefix
        c, r = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
        if len(c) < 2 or c[:-1] != r[:-1]:
            raise _fail(where, "prompt", "missing, and chosen/rejected are not conversations that differ only in "
                                         "their last turn (TRL's implicit-prompt format)")
        msgs, chosen, rejected = c[:-1], c[-1:], r[-1:]
    elif isinstance(prompt, str):
        if not prompt.strip():
            raise _fail(where, "prompt", "empty")
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = _messages(prompt, where, "prompt")
    if msgs[-1]["role"] != "user":
        raise _fail(where, "prompt", f"the last prompt turn must be the user's, got {msgs[-1]['role']!r}")
    if system_prompt and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    return msgs, chosen, rejected


def _reward(row: dict[str, Any], where: str, *names: str) -> float | None:
    for name in names:
        value = row.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, name, f"must be a number, got {value!r}")
        return float(value)
    return None


def preference_row(row: dict[str, Any], where: str, index: int, system_prompt: str = "",
                   default_language: str = "en") -> dict[str, Any]:
    """One checked pair: id, prompt (messages), chosen/rejected (assistant text), query_id, language, policy,
    rewards. `index` (1-based) names a row that has no id."""
    prompt, chosen, rejected = _prompt(row, where, system_prompt)
    chosen_text, rejected_text = _completion(chosen, where, "chosen"), _completion(rejected, where, "rejected")
    rid = row.get("id")
    if rid is None or rid == "":
        rid = f"pair-{index:05d}"
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise _fail(where, "id", f"must be a string or an integer, got {rid!r}")
    lang = row.get("language") or default_language
    if lang not in LANGUAGES:
        raise _fail(where, "language", f"must be one of {list(LANGUAGES)}, got {lang!r}")
    qid = row.get("query_id")
    policy = row.get("policy")
    return {"id": str(rid), "prompt": prompt, "chosen": chosen_text, "rejected": rejected_text,
            "query_id": str(qid) if qid not in (None, "") else None, "language": str(lang),
            "policy": str(policy) if policy not in (None, "") else None,
            "chosen_reward": _reward(row, where, "chosen_reward", "score_chosen"),
            "rejected_reward": _reward(row, where, "rejected_reward", "score_rejected")}


def preference_rows(rows: Sequence[tuple[str, dict[str, Any]]], system_prompt: str = "",
                    default_language: str = "en") -> list[dict[str, Any]]:
    """Every row checked (`preference_row`), ids unique; an empty table is an error too."""
    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for i, (where, row) in enumerate(rows, 1):
        pair = preference_row(row, where, i, system_prompt, default_language)
        if pair["id"] in seen:
            raise _fail(where, "id", f"{pair['id']!r} is a duplicate of {seen[pair['id']]}")
        seen[pair["id"]] = where
        out.append(pair)
    if not out:
        raise DataError("the preference table has no rows")
    return out


def query_of(pair: dict[str, Any]) -> str:
    """The query a pair answers: its last user turn (the prompt may carry earlier turns as context)."""
    return str(pair["prompt"][-1]["content"])
