"""The project's prompt templates (jinja2), one file per role and language.

`prompt_dir()` is where they are read from: this package folder, or the folder named by the environment
variable `OYSTER_EXP_PROMPTS_DIR` (same layout: `en/<name>.j2`, `cn/<name>.j2`), so a researcher can try
edited prompts without touching the installed package. Stages hash the templates they declare from that
same folder, so an edited prompt recomputes exactly the stages that render it.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import jinja2

from oyster_exp.core.contract import check_template

PROMPTS_DIR_ENV = "OYSTER_EXP_PROMPTS_DIR"
_DIR = Path(__file__).parent
LANGUAGES = ("en", "cn")


def prompt_dir() -> Path:
    """The template root: `$OYSTER_EXP_PROMPTS_DIR` when set, else the packaged templates."""
    override = os.environ.get(PROMPTS_DIR_ENV)
    return Path(override).expanduser() if override else _DIR


@lru_cache(maxsize=4)
def _env(root: str) -> jinja2.Environment:
    # StrictUndefined: a missing variable is an error, never an empty string in a prompt.
    # Values are inserted by the template engine, so a query containing "{response}" stays a query.
    # auto_reload (the default) re-reads a template whose file changed since it was compiled.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(root), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)


def render(name: str, lang: str, **variables: object) -> str:
    """Render `<lang>/<name>.j2`; Chinese falls back to English for templates not yet translated.

    Inside a running stage the name must be one the stage declares (`Stage.templates`): its cache key
    hashes exactly those files.
    """
    check_template(name)
    root = prompt_dir()
    env = _env(str(root))
    path = f"{lang}/{name}.j2"
    if not (root / path).exists():
        path = f"en/{name}.j2"
    text = env.get_template(path).render(**variables).strip()
    if not text:
        # the reference shipped an empty Chinese recombine template and sent no system prompt at all
        raise ValueError(f"prompt template {path} rendered an empty prompt")
    return text


def template_files(name: str) -> dict[str, Path]:
    """Every language's file of template `name` (what `render` may read), by `<lang>/<name>.j2`."""
    root = prompt_dir()
    out = {f"{lang}/{name}.j2": root / lang / f"{name}.j2" for lang in LANGUAGES}
    found = {k: p for k, p in out.items() if p.exists()}
    if not found:
        raise FileNotFoundError(f"prompt template {name!r}: no {root}/<lang>/{name}.j2")
    return found


def template_names() -> list[str]:
    return sorted(p.stem for p in (prompt_dir() / "en").glob("*.j2"))


def template_chars(name: str) -> int:
    """Characters of the longest language version of prompt template `name` (its share of a prompt)."""
    return max(len(p.read_text(encoding="utf-8")) for p in template_files(name).values())
