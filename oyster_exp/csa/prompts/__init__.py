"""The project's prompt templates (jinja2), one file per role and language."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

_DIR = Path(__file__).parent


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    # StrictUndefined: a missing variable is an error, never an empty string in a prompt.
    # Values are inserted by the template engine, so a query containing "{response}" stays a query.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(_DIR)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)


def render(name: str, lang: str, **variables: object) -> str:
    """Render `<lang>/<name>.j2`; Chinese falls back to English for templates not yet translated."""
    env = _env()
    path = f"{lang}/{name}.j2"
    if not (_DIR / path).exists():
        path = f"en/{name}.j2"
    text = env.get_template(path).render(**variables).strip()
    if not text:
        # the reference shipped an empty Chinese recombine template and sent no system prompt at all
        raise ValueError(f"prompt template {path} rendered an empty prompt")
    return text


def template_names() -> list[str]:
    return sorted(p.stem for p in (_DIR / "en").glob("*.j2"))
