"""Build LLM clients from config nodes (`_target_` in conf/llm/*.yaml).

Roles that name the same model share one in-process client, so a local model is loaded once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from oyster_exp.models.resolve import model_source

_LOCAL: dict[tuple[str, str, str, str], Any] = {}   # (checkpoint, dtype, model id, structured decoder)


def local_client(model: Any, max_batch_size: int = 8, structured_decoding: str = "grammar") -> Any:
    """An in-process client on the base model. `model` is a `ModelSource` (what Hydra builds from
    `model: ${model}`) or a `model` config node. `structured_decoding` picks the JSON decoder
    (`llm.local.STRUCTURED_DECODERS`): roles asking for different decoders get different clients.
    Its calls show on the remote clients' progress bar when stderr is a terminal (no config knob: a role's
    client node is part of the LLM stages' cache keys)."""
    from oyster_exp.llm.local import LocalClient

    source = model_source(model)
    path = source.checkpoint_dir()
    key = (str(path), str(source.dtype), str(source.model_id), str(structured_decoding))
    if key not in _LOCAL:
        _LOCAL[key] = LocalClient(Path(path), model_id=str(source.model_id), dtype=key[1],
                                  max_batch_size=max_batch_size, structured_decoding=key[3])
    return _LOCAL[key]


def clear_local_clients() -> None:
    """Free in-process models (between sweep jobs, or before training needs the memory)."""
    _LOCAL.clear()


def openai_client(base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", json_schema: bool = True,
                  thinking_param: str | None = "chat_template_kwargs", concurrency: int = 16,
                  requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                  max_attempts: int = 5, timeout_s: float = 120.0, progress: bool = False,
                  key_shared_by: int = 1) -> Any:
    """An OpenAI-compatible client; roles with the same base URL and key share one limiter (`llm.limits`)."""
    from oyster_exp.llm.engine import CallEngine
    from oyster_exp.llm.openai_compat import OpenAICompatClient

    engine = CallEngine(concurrency=concurrency, requests_per_minute=requests_per_minute,
                        tokens_per_minute=tokens_per_minute, max_attempts=max_attempts, timeout_s=timeout_s,
                        progress=progress, key_shared_by=key_shared_by)
    return OpenAICompatClient(base_url, model, api_key_env=api_key_env, json_schema=json_schema,
                              thinking_param=thinking_param, engine=engine)


def dashscope_client(model: str, api_key_env: str = "DASHSCOPE_API_KEY", base_url: str | None = None,
                     json_mode: bool = False, stream: bool | None = None, thinking_budget: int | None = None,
                     workspace: str | None = None, concurrency: int = 16, requests_per_minute: float | None = None,
                     tokens_per_minute: float | None = None, max_attempts: int = 5, timeout_s: float = 300.0,
                     progress: bool = False, key_shared_by: int = 1) -> Any:
    """DashScope's native SDK behind our engine; raises `MissingAPIKey` now if the key variable is unset."""
    from oyster_exp.llm.dashscope import DashScopeClient
    from oyster_exp.llm.engine import CallEngine

    engine = CallEngine(concurrency=concurrency, requests_per_minute=requests_per_minute,
                        tokens_per_minute=tokens_per_minute, max_attempts=max_attempts, timeout_s=timeout_s,
                        progress=progress, key_shared_by=key_shared_by)
    return DashScopeClient(model, api_key_env=api_key_env, base_url=base_url, json_mode=json_mode, stream=stream,
                           thinking_budget=thinking_budget, workspace=workspace, engine=engine)
