"""A whole run loads each model's weights once per process: the LLM roles and the evaluated base model share one
in-process client, and the trained model is loaded once for all its benchmarks.

Why it matters: on the CPU demo a load (weights, tokenizer, the decoder's token tables) costs seconds, and a
caller that built its own client per stage or per benchmark would pay it again without any test noticing.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest


@pytest.mark.slow   # a whole tiny run, train and evaluate included (~50 s of CPU)
def test_each_model_is_loaded_once_per_run(compose_cfg, tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from oyster_exp.llm import factory
    from oyster_exp.llm.local import LocalClient
    from oyster_exp.pipeline.runner import RunContext, run_pipeline
    from oyster_exp.stages import default_stages

    loads: Counter[str] = Counter()
    original = LocalClient.__init__

    def counting_init(self, model_path, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads[str(Path(model_path).resolve())] += 1
        original(self, model_path, *args, **kwargs)

    monkeypatch.setattr(LocalClient, "__init__", counting_init)
    factory.clear_local_clients()
    cfg = compose_cfg("debug=fast", "model=tiny_random", "logger=none", "llm.call_cache=false",
                      f"paths.output_dir={tmp_path}")
    ctx = RunContext(cfg=cfg, run_dir=tmp_path / "run", cache_root=tmp_path / "cache")
    try:
        run_pipeline(ctx, default_stages())
    finally:
        factory.clear_local_clients()
    assert ctx.outputs["evaluate"], "the run evaluated nothing"
    models = {str(r.model) for r in ctx.outputs["evaluate"] if getattr(r, "model", None)}
    assert models >= {"base", "trained"}, models
    base = str(tiny_model_dir.resolve())
    assert loads[base] == 1, loads
    trained = [p for p in loads if p != base]
    assert len(trained) == 1 and loads[trained[0]] == 1, loads
