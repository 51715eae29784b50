"""One preference pair as token ids: chat template, prompt masking, truncation.

The prompt and each completion are tokenised separately and concatenated, so training sees exactly
the token boundary that generation sees (prompt tokens, then sampled tokens). Every completion ends
with the tokenizer's eos token, which teaches the model to stop.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from oyster_exp.training.losses import IGNORE

Truncation = Literal["keep_start", "keep_end"]


class PreferenceExample(BaseModel):
    """One preference pair; SFT uses `chosen` only.

    `prompt` is the chat before the assistant turn (optional system message, then user);
    `chosen`/`rejected` are final assistant texts, with any `<think>...</think>` already in them.
    """

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    id: str


def _generation_header(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    """Tokens the chat template appends for `add_generation_prompt` (e.g. `<|im_start|>assistant\\n`)."""
    with_header = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    without = tokenizer.apply_chat_template(prompt, add_generation_prompt=False, tokenize=False)
    if not with_header.startswith(without) or with_header == without:
        return []
    return tokenizer(with_header[len(without):], add_special_tokens=False)["input_ids"]


def _truncate_prompt(prompt_ids: list[int], keep: int, truncation: Truncation, header: list[int]) -> list[int]:
    """Shorten the prompt to `keep` tokens; keep_start still ends with the assistant header."""
    if len(prompt_ids) <= keep:
        return prompt_ids
    if truncation == "keep_end":
        return prompt_ids[len(prompt_ids) - keep:]
    if header and prompt_ids[-len(header):] == header and keep > len(header):
        return prompt_ids[:keep - len(header)] + header
    return prompt_ids[:keep]


def tokenize_example(ex: PreferenceExample, tokenizer: Any, max_length: int,
                     truncation: Truncation = "keep_end") -> dict[str, Any]:
    """Token ids and labels for one pair, at most `max_length` tokens per side.

    Truncation shortens the prompt first (from the start for keep_end, from the end for keep_start)
    down to `max_length - longest completion`, but never below `min(prompt, max_length // 2)` tokens,
    so a very long completion cannot erase the question; completions are cut only after that.
    Returns per side `input_ids`, `attention_mask`, `labels` (-100 on the prompt) and `labels_full`
    (prompt and response, TRL's NLL span), plus `prompt_len` and `length` for bucketing.
    """
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no eos token; completions must end with one")
    prompt_text = tokenizer.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completions = {side: tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
                   for side, text in (("chosen", ex.chosen), ("rejected", ex.rejected))}
    longest = max(len(c) for c in completions.values())
    if len(prompt_ids) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt_ids), max_length // 2))
        header = _generation_header(tokenizer, ex.prompt) if truncation == "keep_start" else []
        prompt_ids = _truncate_prompt(prompt_ids, keep, truncation, header)
    room = max_length - len(prompt_ids)
    out: dict[str, Any] = {"id": ex.id, "prompt_len": len(prompt_ids)}
    for side, completion in completions.items():
        ids = prompt_ids + completion[:room]
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = [1] * len(ids)
        out[f"{side}_labels"] = [IGNORE] * len(prompt_ids) + ids[len(prompt_ids):]
        out[f"{side}_labels_full"] = list(ids)
    out["length"] = max(len(out["chosen_input_ids"]), len(out["rejected_input_ids"]))
    return out
