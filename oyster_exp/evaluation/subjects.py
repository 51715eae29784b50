"""The model under test (`eval.subject`): in-process weights or an OpenAI-compatible server.

One component per kind behind one small interface, chosen by the option (`eval/subject=local`, the
default, or `eval/subject=openai`): the evaluate stage asks the subject for the client that answers
as model `base` or `trained`, and the capability benchmark for lm-eval's model arguments. Neither
branches on the kind. The answers go through the LLM service as the role "subject" (generation.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from oyster_exp.config.components import ge, register_component, rng
from oyster_exp.llm.base import LLMClient

Weights = Callable[[], "tuple[Path, str] | None"]
"""(checkpoint dir, model id) of a model the run holds on disk, resolved only when a subject needs it."""


@dataclass
class Subject:
    """Base of the subject kinds."""

    def client(self, model: str, weights: Weights, dtype: str, batch_size: int) -> LLMClient | None:
        """The client that answers as `model` (base | trained); None when that model does not exist."""
        raise NotImplementedError

    def lm_eval_model(self, model: str, weights: Weights, dtype: str) -> tuple[str, str] | None:
        """(lm-eval model type, model_args string) to score `model`, or None when it does not exist."""
        raise NotImplementedError


@dataclass
class LocalSubject(Subject):
    """The model under test in-process: the `model` group's weights and the train stage's output."""

    def client(self, model: str, weights: Weights, dtype: str, batch_size: int) -> LLMClient | None:
        from oyster_exp.evaluation.generation import local_subject

        w = weights()
        return None if w is None else local_subject(w[0], w[1], dtype, batch_size)

    def lm_eval_model(self, model: str, weights: Weights, dtype: str) -> tuple[str, str] | None:
        w = weights()
        return None if w is None else ("hf", f"pretrained={w[0]},dtype={dtype}")


@dataclass
class ServerSubject(Subject):
    """The model under test behind a /v1/chat/completions server (vLLM, SGLang); the key from the environment."""
    base_url: str = MISSING                           # the server's /v1 root (required)
    models: dict[str, str | None] = field(default_factory=dict)   # served model name per evaluated model
    api_key_env: str | None = "OPENAI_API_KEY"        # environment variable holding the key, never the key
    thinking_param: str | None = "chat_template_kwargs"  # chat_template_kwargs | enable_thinking | None
    concurrency: int = field(default=16, metadata=ge(1))
    max_attempts: int = field(default=5, metadata=ge(1))
    timeout_s: float = field(default=300.0, metadata=rng(gt=0.0))

    def client(self, model: str, weights: Weights, dtype: str, batch_size: int) -> LLMClient | None:
        from oyster_exp.llm.factory import openai_client

        return openai_client(str(self.base_url), str(self.models[model]), api_key_env=self.api_key_env,
                             thinking_param=self.thinking_param, concurrency=int(self.concurrency),
                             max_attempts=int(self.max_attempts), timeout_s=float(self.timeout_s))

    def lm_eval_model(self, model: str, weights: Weights, dtype: str) -> tuple[str, str] | None:
        """lm-eval's `local-completions` (log-likelihood scoring: needs /v1/completions with prompt logprobs)."""
        return "local-completions", f"model={self.models[model]},base_url={str(self.base_url).rstrip('/')}/completions"



register_component("eval/subject", "local", LocalSubject)
register_component("eval/subject", "openai", ServerSubject)
