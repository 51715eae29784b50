"""Build the role service from the `llm` config group."""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from oyster_exp.llm.cache import CallCache
from oyster_exp.llm.service import LLMService, RoleBinding


def _client(name: str, node: DictConfig) -> object:
    """Instantiate one role's client; a missing API key is a one-line error naming the role and variable."""
    from oyster_exp.core.errors import StageError
    from oyster_exp.llm.dashscope import MissingAPIKey

    try:
        return instantiate(node)
    except Exception as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, MissingAPIKey):
            cause = cause.__cause__
        if cause is not None:
            raise StageError(f"llm.roles.{name}.client: {cause}") from None
        raise


def build_service(cfg: DictConfig, cache_root: Path) -> LLMService:
    roles = {}
    for name, role in cfg.llm.roles.items():
        roles[str(name)] = RoleBinding(
            client=_client(str(name), role.client),
            temperature=float(role.temperature),
            top_p=float(role.top_p),
            max_tokens=int(role.max_tokens),
            max_tokens_per_field=int(role.max_tokens_per_field),
            enable_thinking=bool(role.enable_thinking),
        )
    cache = CallCache(cache_root / "llm_calls.sqlite") if cfg.llm.call_cache else None
    # preflight: each remote endpoint is probed once before the first call the cache cannot answer
    return LLMService(roles, cache=cache, max_retries=int(cfg.llm.max_retries), seed=int(cfg.seed), preflight=True)
