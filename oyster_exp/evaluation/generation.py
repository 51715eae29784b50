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

A reasoning phase can use the whole token budget (a small budget, or a model trained on long `<think>`
paths): there is then no answer to judge. With `answer_after_think > 0` such a reply gets a second call
that continues the same assistant message after a closing `</think>` (an assistant prefill), so the
model must answer from the reasoning it has, within that many tokens, the way a thinking budget works.
The record notes it (`meta.think_closed_by_budget`). 0 keeps the reply a counted failure.
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
THINK_RAN_OUT = "the token budget ran out inside <think>"


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 32
    enable_thinking: bool = False
    think: str = "strip"              # strip | keep
    answer_after_think: int = 0       # >0: tokens for an answer forced after a reasoning phase that ran out

    @classmethod
    def from_cfg(cls, gen: Any) -> GenerationSettings:
        return cls(max_new_tokens=int(gen.max_new_tokens), temperature=float(gen.temperature),
                   top_p=float(gen.top_p), batch_size=int(gen.batch_size), enable_thinking=bool(gen.enable_thinking),
                   think=str(getattr(gen.think, "value", gen.think)),
                   answer_after_think=int(gen.get("answer_after_think", 0) or 0))


@dataclass
class Answer:
    text: str = ""                    # what the judge sees
    think: str = ""                   # the reasoning phase, split off (kept in the record)
    failure: str | None = None
    think_closed_by_budget: bool = False  # the answer was forced after the reasoning ran out of budget
    transient: bool = False           # the failure is a call that got no reply (retried on a rerun), not the
                                      # subject's own behaviour (an empty reply, or one that only reasoned, is
                                      # a measured failure of the model under test)


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
        return Answer(text="", think=think, failure=f"subject: {THINK_RAN_OUT if think else 'empty answer'}")
    text = f"<think>\n{think}\n</think>\n\n{answer}" if think_mode == "keep" and think else answer
    return Answer(text=text, think=think)


def local_subject(path: Path, model_id: str, dtype: str, batch_size: int) -> LLMClient:
    """The in-process model under test; shares the loaded weights with judge roles on the same model.

    The shared client's micro-batch size is set to the evaluation batch size: it shapes the subject's answers
    and the judges' structured batches on the same client (a reply does not depend on its batch, only the
    speed does).
    """
    from oyster_exp.llm.factory import local_client
    from oyster_exp.models.sources import LocalPathModel

    client = local_client(LocalPathModel(name="subject", path=str(path), model_id=model_id, dtype=dtype),
                          max_batch_size=batch_size)
    client.max_batch_size = max(1, int(batch_size))
    return client


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
            answers.append(Answer(failure=f"subject: {o.failure}", transient=o.no_reply))
        else:
            answers.append(make_answer(o.text, o.reasoning, settings.think))
    if settings.answer_after_think > 0:
        redo = [i for i, a in enumerate(answers) if a.failure == f"subject: {THINK_RAN_OUT}"]
        if redo:
            forced = answer_after_reasoning(service, [conversations[i] for i in redo], [answers[i] for i in redo],
                                            settings)
            for i, a in zip(redo, forced):
                answers[i] = a
    return answers


def closed_reasoning(think: str) -> str:
    """The assistant prefill that ends a reasoning phase: the model continues with its answer."""
    return f"<think>\n{think.strip()}\n</think>\n\n"


def answer_after_reasoning(service: LLMService, conversations: Sequence[list[ChatMessage]], ran_out: list[Answer],
                           settings: GenerationSettings) -> list[Answer]:
    """Answers continued after each reply's reasoning, closed by force; still a failure if none comes."""
    prefills = [closed_reasoning(a.think) for a in ran_out]
    outs = service.text(SUBJECT_ROLE, [[*c, ChatMessage(role="assistant", content=p)]
                                       for c, p in zip(conversations, prefills)],
                        max_tokens=settings.answer_after_think)
    answers = []
    for first, prefill, o in zip(ran_out, prefills, outs):
        if o.failure:
            answers.append(Answer(think=first.think,
                                  failure=f"subject: {THINK_RAN_OUT}; the forced answer: {o.failure}",
                                  think_closed_by_budget=True, transient=o.no_reply))
            continue
        a = make_answer(prefill + o.text, "", settings.think)
        a.think_closed_by_budget = True
        answers.append(a)
    return answers
