"""generate and extract send `llm.chunk_size` queries per service call; the records do not depend on it."""
from __future__ import annotations

from pathlib import Path


def _run(compose_cfg, tmp: Path, chunk: int, calls: list[tuple[str, int]], journal_hook=None):
    from oyster_exp.pipeline.runner import RunContext, run_pipeline
    from oyster_exp.stages.extract import ExtractStage
    from oyster_exp.stages.generate import GenerateStage
    from oyster_exp.stages.queries import QueriesStage

    cfg = compose_cfg("debug=fast", "model=tiny_random", "data.limit=8", "data.heldout_fraction=0.1",
                      "llm.call_cache=false", f"llm.chunk_size={chunk}", "stage=[queries,generate,extract]",
                      *(f"llm.roles.{r}.temperature=1.0" for r in ("actor", "editor")))
    ctx = RunContext(cfg=cfg, run_dir=tmp / "run", cache_root=tmp / "cache")
    svc = ctx.service
    real = svc._complete

    def spy(role, requests):  # records the size of every service-level batch
        calls.append((role, len(requests)))
        return real(role, requests)

    svc._complete = spy  # type: ignore[method-assign]
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
