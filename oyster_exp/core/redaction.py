"""Keep secrets out of config dumps, logs, artifacts and W&B: they come from the environment only."""
from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.IGNORECASE)
SECRET_VALUE = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")
REDACTED = "***"


def strip_secrets(obj: Any) -> Any:
    """A copy with secret-looking keys and values redacted (token budgets are not secrets)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            secret_name = SECRET_KEY.search(str(k)) and not str(k).lower().endswith(("tokens", "_tokens_per_field"))
            out[k] = REDACTED if secret_name and isinstance(v, str) and v else strip_secrets(v)
        return out
    if isinstance(obj, list):
        return [strip_secrets(v) for v in obj]
    if isinstance(obj, str):
        return SECRET_VALUE.sub(REDACTED, obj)
    return obj
