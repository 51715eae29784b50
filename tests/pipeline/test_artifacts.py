"""Journal (resume after a crash, no duplicates), stage cache keys, secrets."""
from __future__ import annotations

from pathlib import Path

import pytest

from oyster_exp.core.hashing import stable_hash
from oyster_exp.core.redaction import strip_secrets
from oyster_exp.csa.records import GenerationRecord
from oyster_exp.pipeline.artifacts import CacheEntry, Journal, JournalError, read_records


def _rec(i: int) -> GenerationRecord:
    return GenerationRecord(id=f"q{i}", query=f"question {i}", response=f"answer {i}")


def test_journal_appends_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    j = Journal(path, GenerationRecord)
    for i in range(3):
        j.append(_rec(i))
    j.close()
    j2 = Journal(path, GenerationRecord)
    assert [r.id for r in j2.records()] == ["q0", "q1", "q2"]
    assert "q1" in j2 and "q9" not in j2


def test_journal_refuses_duplicates(tmp_path: Path) -> None:
    j = Journal(tmp_path / "a.jsonl", GenerationRecord)
    j.append(_rec(0))
    with pytest.raises(JournalError):
        j.append(_rec(0))


def test_torn_tail_from_a_crash_is_dropped_and_resume_continues(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    j = Journal(path, GenerationRecord)
    j.append(_rec(0))
    j.append(_rec(1))
    j.close()
    with open(path, "a") as f:  # the process died halfway through writing record 2
        f.write(_rec(2).model_dump_json()[:25])
    j2 = Journal(path, GenerationRecord)
    assert [r.id for r in j2.records()] == ["q0", "q1"]
    j2.append(_rec(2))
    j2.close()
    assert [r.id for r in read_records(path, GenerationRecord)] == ["q0", "q1", "q2"]


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(_rec(0).model_dump_json() + "\n" + _rec(1).model_dump_json())
    j = Journal(path, GenerationRecord)
    j.append(_rec(2))
    j.close()
    assert [r.id for r in read_records(path, GenerationRecord)] == ["q0", "q1", "q2"]


def test_corruption_in_the_middle_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(_rec(0).model_dump_json() + "\n{broken\n" + _rec(1).model_dump_json() + "\n")
    with pytest.raises(JournalError, match=r"a\.jsonl:2"):
        Journal(path, GenerationRecord)


def test_stable_hash_ignores_key_order_and_sees_values() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_cache_entry_completion_marker(tmp_path: Path) -> None:
    e = CacheEntry(tmp_path, "generate", "ab" * 32)
    with e.lock():
        assert not e.complete
        e.mark_complete({"records": 0})
    assert e.complete
    e.reset()
    assert not e.complete


def test_strip_secrets() -> None:
    data = {"llm": {"api_key": "sk-abcdefghijklmnop1234", "max_tokens": 5, "note": "key sk-abcdefghijklmnopqrst"},
            "token": "xyz"}
    out = strip_secrets(data)
    assert out["llm"]["api_key"] == "***" and out["token"] == "***"
    assert out["llm"]["max_tokens"] == 5
    assert "sk-" not in str(out)
