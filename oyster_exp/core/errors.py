"""The errors a run reports as one line instead of a traceback.

`cli` maps them to exit codes: a `DataError` (a user file is malformed) and an `EndpointError` (an LLM
endpoint is down, refuses the key or lacks the model) exit 2 like a config error, a `StageError` (a stage
cannot run, or too many of its records failed) exits 1.
"""
from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot run (missing input, bad data); the message says what to do."""


class DataError(ValueError):
    """A user-supplied file (queries, benchmark, taxonomy workbook) is malformed: the message names the file,
    the line (or sheet and row) and the field."""


class EndpointError(RuntimeError):
    """A remote LLM endpoint cannot serve the run (unreachable, key refused, model unknown), found by the probe
    before the first call: the message names the role and the base URL, never the key."""
