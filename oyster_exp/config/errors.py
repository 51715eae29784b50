"""Turn Hydra/OmegaConf composition errors into one readable line that names the key."""
from __future__ import annotations

import re


class ConfigError(ValueError):
    """A config value is invalid; `key` is the dotted path of the offending value."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


def one_line(exc: BaseException) -> str:
    from hydra.errors import MissingConfigException

    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in chain:
        if isinstance(err, MissingConfigException):
            msg = str(err)
            m = re.search(r"Could not find '([^']+)'", msg)
            opts = getattr(err, "options", None) or []
            if m and "/" in m.group(1):
                group, _, option = m.group(1).rpartition("/")
                avail = f"; available: {', '.join(sorted(opts))}" if opts else ""
                return f"{group}={option}: no such option in config group '{group}'{avail}"
            return msg.splitlines()[0]
    for err in reversed(chain):  # the innermost OmegaConf error carries the key
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0].strip() if str(err) else type(err).__name__
        if key:
            return f"{key}: {msg}"
    msg = str(exc).strip().splitlines()
    return " ".join(m.strip() for m in msg[:2]) if msg else type(exc).__name__
