"""generate and extract send `llm.chunk_size` queries per service call; the records do not depend on it."""
from __future__ import annotations

from pathlib import Path
from typing import Any


class _BatchSpy:
    """An `LLMClient` in front of the real one that records the size of every batch it is sent."""

    def __init__(self, inner: Any, role: str, calls: list[tuple[str, int]]):
        self.inner, self.role, self.calls = inner, role, calls
        self.backend, self.model_id = inner.backend, inner.model_id

    def chat_batch(self, requests: list[Any]) -> list[Any]:
        self.calls.append((self.role, len(requests)))
        return self.inner.chat_batch(requests)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


def _run(compose_cfg, tmp: Path, chunk: int, calls: list[tuple[str, int]], journal_hook=None):
    from oyster_exp.pipeline.runner import RunContext, run_pipeline
    from oyster_exp.stages.extract import ExtractStage
    from oyster_exp.stages.generate import GenerateStage
    from oyster_exp.stages.queries import QueriesStage

    cfg = compose_cfg("debug=fast", "model=tiny_random", "data.limit=8", "data.heldout_fraction=0.1",
                      "llm.call_cache=false", f"llm.chunk_size={chunk}", "stage=[queries,generate,extract]",
                      *(f"llm.roles.{r}.temperature=1.0" for r in ("actor", "editor")))
    ctx = RunContext(cfg=cfg, run_dir=tmp / "run", cache_root=tmp / "cache")
    for role, binding in ctx.service.roles.items():   # the call cache is off: every request reaches the client
        binding.client = _BatchSpy(binding.client, role, calls)
    run_pipeline(ctx, [QueriesStage(), GenerateStage(), ExtractStage()])
    return ctx


def test_chunked_stages_match_one_at_a_time(compose_cfg, tiny_model_dir: Path, tmp_path: Path) -> None:
    one: list[tuple[str, int]] = []
    many: list[tuple[str, int]] = []
    a = _run(compose_cfg, tmp_path / "one", 1, one)
    b = _run(compose_cfg, tmp_path / "many", 8, many)
    n = len(a.outputs["generate"])
    assert n >= 5
    for stage in ("generate", "extract"):
        assert [r.model_dump() for r in a.outputs[stage]] == [r.model_dump() for r in b.outputs[stage]], stage
    assert max(size for _, size in one) == 1
    assert ("actor", n) in many and ("editor", sum(1 for g in b.outputs["generate"] if not g.failure)) in many
    assert len(many) < len(one)


def test_resume_skips_finished_ids_with_chunks(compose_cfg, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A journal left by a killed run: the rerun asks only for the missing queries and appends them."""
    first: list[tuple[str, int]] = []
    ctx = _run(compose_cfg, tmp_path, 4, first)
    gen = ctx.entries["generate"]
    records = gen.records_path.read_text().splitlines()
    keep = records[:3]
    gen.records_path.write_text("\n".join(keep) + "\n")   # as if killed after three records
    (gen.dir / "COMPLETE").unlink()
    ext = ctx.entries["extract"]
    ext.reset()
    again: list[tuple[str, int]] = []
    ctx2 = _run(compose_cfg, tmp_path, 4, again)
    assert ctx2.stats["generate"]["cache"] == "resumed"
    ids = [r.id for r in ctx2.outputs["generate"]]
    assert len(ids) == len(set(ids)) == len(records)
    assert [r.model_dump_json() for r in ctx2.outputs["generate"]][:3] == keep
    asked = sum(size for role, size in again if role == "actor")
    assert 0 < asked <= 2 * (len(records) - 3)  # answers (+ think) for the missing ones only
