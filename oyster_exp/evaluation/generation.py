"""Answers of the model under test, in batches: in-process transformers or an OpenAI-compatible server.

Both paths go through the LLM service as the role "subject", so answers are cached like every other
call (a rerun or a resumed evaluation costs nothing) and counted per stage. The local backend
generates left-padded, length-sorted batches of `eval.generation.batch_size` through the model's chat
template; the server backend sends them concurrently through the call engine.

Thinking models put a reasoning phase before the answer, either inline (`<think>...</think>` in the
content, or only the closing tag when the chat template opened the block in the prompt) or in the
server's `reasoning_content`. Judges should normally see the answer a user reads (`think: strip`); the
reasoning is always kept in the record, and `think: keep` judges both, for studies of leaks in the
reasoning itself.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oyster_exp.llm.base import ChatMessage, LLMClient
from oyster_exp.llm.service import LLMService, RoleBinding

SUBJECT_ROLE = "subject"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.S)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    enable_thinking: bool = False
    think: str = "strip"              # strip | keep

    @classmethod
    def from_cfg(cls, gen: Any) -> GenerationSettings:
        return cls(max_new_tokens=int(gen.max_new_tokens), temperature=float(gen.temperature),
                   top_p=float(gen.top_p), batch_size=int(gen.batch_size), enable_thinking=bool(gen.enable_thinking),
                   think=str(getattr(gen.think, "value", gen.think)))


@dataclass
class Answer:
    text: str = ""                    # what the judge sees
    think: str = ""                   # the reasoning phase, split off (kept in the record)
    failure: str | None = None


def split_think(content: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply that may carry `<think>` blocks.

    A reply that starts inside the block (the template opened `<think>` in the prompt) has a closing tag
    only; a reply whose budget ran out while thinking has an opening tag only and no answer.
    """
    head, sep, tail = content.partition("</think>")
    if sep and "<think>" not in head:
        more, rest = split_think(tail)
        return "\n".join(x for x in (head.strip(), more) if x), rest
    thinks = [m.strip() for m in _THINK_BLOCK.findall(content)]
    rest = _THINK_BLOCK.sub("", content)
    if "<think>" in rest:
        rest, _, dangling = rest.partition("<think>")
        thinks.append(dangling.strip())
    return "\n".join(t for t in thinks if t), rest.strip()


def make_answer(content: str, reasoning: str, think_mode: str) -> Answer:
    """The judged text and the kept reasoning of one reply, by `eval.generation.think`."""
    inline, answer = split_think(content)
    think = "\n".join(x for x in (reasoning.strip(), inline) if x)
    if not answer:
        why = "the token budget ran out inside <think>" if think else "empty answer"
        return Answer(text="", think=think, failure=f"subject: {why}")
    text = f"<think>\n{think}\n</think>\n\n{answer}" if think_mode == "keep" and think else answer
    return Answer(text=text, think=think)


def local_subject(path: Path, model_id: str, dtype: str, batch_size: int) -> LLMClient:
    """The in-process model under test; shares the loaded weights with judge roles on the same model.

    The shared client's micro-batch size is set to the evaluation batch size (it only shapes free-text
    batches, which in the evaluate stage are the subject's answers).
    """
    from oyster_exp.llm.factory import local_client

    client = local_client({"source": "local_path", "path": str(path), "model_id": model_id, "dtype": dtype},
                          max_batch_size=batch_size)
    client.max_batch_size = max(1, int(batch_size))
    return client


def server_subject(subject: Any, served_model: str) -> LLMClient:
    """The model under test behind an OpenAI-compatible server (`eval.subject`); key from the environment."""
    from oyster_exp.llm.factory import openai_client

    return openai_client(str(subject.base_url), served_model, api_key_env=subject.api_key_env,
                         thinking_param=subject.thinking_param, concurrency=int(subject.concurrency),
                         max_attempts=int(subject.max_attempts), timeout_s=float(subject.timeout_s))


def bind_subject(service: LLMService, client: LLMClient, settings: GenerationSettings) -> None:
    service.roles[SUBJECT_ROLE] = RoleBinding(client=client, temperature=settings.temperature, top_p=settings.top_p,
                                              max_tokens=settings.max_new_tokens,
                                              enable_thinking=settings.enable_thinking)


def conversation(prompt: str, system_prompt: str = "") -> list[ChatMessage]:
    msgs = [ChatMessage(role="system", content=system_prompt)] if system_prompt else []
    return msgs + [ChatMessage(role="user", content=prompt)]


def generate(service: LLMService, conversations: Sequence[list[ChatMessage]], settings: GenerationSettings
             ) -> list[Answer]:
    """One answer per conversation from the bound subject, in order; failures carry their reason."""
    outs = service.text(SUBJECT_ROLE, list(conversations))
    answers = []
    for o in outs:
        if o.failure:
            answers.append(Answer(failure=f"subject: {o.failure}"))
        else:
            answers.append(make_answer(o.text, o.reasoning, settings.think))
    return answers
