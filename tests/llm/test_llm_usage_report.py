"""LLM usage per stage and role lands in a real (offline) W&B run: summary keys and a table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from wandb_records import run_file, summary

from oyster_exp.llm.service import Usage


def test_usage_goes_into_the_wandb_summary_and_a_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from oyster_exp.llm.usage_report import log_usage

    monkeypatch.setenv("WANDB_MODE", "offline")
    usage = Usage()
    usage.add("generate", "actor", "calls", 5)
    usage.add("generate", "actor", "prompt_tokens", 120)
    usage.add("optimize", "user_judge", "calls", 7)
    usage.add("optimize", "user_judge", "failures", 2)
    usage.add("optimize", "user_judge", "transport_retries", 3)
    wandb.init(dir=str(tmp_path), mode="offline", project="oyster-exp-test")
    try:
        assert log_usage(usage.as_dict()) is True
    finally:
        wandb.finish()
    s = summary(run_file(tmp_path))
    assert s["llm/total/calls"] == 12 and s["llm/total/failures"] == 2 and s["llm/total/prompt_tokens"] == 120
    assert s["llm/optimize/user_judge/transport_retries"] == 3 and s["llm/generate/actor/calls"] == 5
    (table_file,) = tmp_path.rglob("usage_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:3] == ["stage", "role", "calls"]
    rows = {(r[0], r[1]): dict(zip(table["columns"], r)) for r in table["data"]}
    assert rows[("optimize", "user_judge")]["failures"] == 2 and rows[("generate", "actor")]["calls"] == 5


def test_no_active_run_is_not_an_error() -> None:
    from oyster_exp.llm.usage_report import log_usage

    assert log_usage({"total": {"calls": 1}, "by_stage_role": {}}, run=None) is False
