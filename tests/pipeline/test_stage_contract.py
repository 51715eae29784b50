"""The stage contract: a stage sees only the config it declares, renders only the templates and opens only the
packaged assets it declares, and its cache key covers the content of those templates and assets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from shared_data import DATA

from oyster_exp.core.contract import ContractError, active_stage, package_file
from oyster_exp.csa.prompts import PROMPTS_DIR_ENV, prompt_dir, render
from oyster_exp.pipeline.runner import RunContext, Stage, config_view, run_pipeline, stage_key

ROOT = Path(__file__).resolve().parents[2]


class Note(BaseModel):
    id: str
    text: str = ""


class Probe(Stage):
    """A stage whose `run` does whatever the test hands it, under the declarations the test gives."""
    name = "probe"
    record_type = Note
    action: ClassVar[Any] = None

    def run(self, ctx, inputs, journal, entry) -> None:
        journal.append(Note(id="n", text=str(type(self).action(ctx))))


def _probe(action, config_keys: tuple[str, ...] = (), templates: tuple[str, ...] = (),
           assets: tuple[str, ...] = ()) -> Stage:
    cls = type("P", (Probe,), {"action": staticmethod(action), "config_keys": config_keys, "templates": templates,
                               "assets": assets})
    return cls()


def _ctx(compose_cfg, tmp_path: Path, *overrides: str) -> RunContext:
    cfg = compose_cfg("model=tiny_random", "debug=fast", "stage=[probe]", *overrides)
    return RunContext(cfg=cfg, run_dir=tmp_path / "run", cache_root=tmp_path / "cache")


def test_view_holds_the_declared_keys_read_only(compose_cfg) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import ReadonlyConfigError

    from oyster_exp.config.components import component_schema
    from oyster_exp.csa.lingo_bp import LingoBPSettings

    cfg = compose_cfg("model=tiny_random", "debug=fast")
    view = config_view(cfg, ("llm.roles.actor", "lingo_bp", "seed", "eval"))
    assert view.seed == cfg.seed and view.llm.roles.actor.max_tokens == cfg.llm.roles.actor.max_tokens
    assert OmegaConf.get_type(view.lingo_bp) is component_schema(LingoBPSettings)   # structured types survive
    assert view.eval.strata_sword.path == cfg.eval.strata_sword.path    # interpolations resolved from the full tree
    assert view.get("no_such_key", 7) == 7                              # absent from the config: as before
    with pytest.raises(ReadonlyConfigError):
        view.seed = 1
    with active_stage("optimize", (), ()):
        for read in (lambda: view.model, lambda: view.get("model"), lambda: view["model"],
                     lambda: view.llm.chunk_size, lambda: view.llm.roles.editor,
                     lambda: OmegaConf.to_container(view, resolve=True)):
            with pytest.raises(ContractError, match="stage 'optimize' reads config key '(model|llm.chunk_size|"
                                                    r"llm.roles.editor|paths)', which it does not declare"):
                read()


def test_a_stage_reading_an_undeclared_key_stops_the_run(compose_cfg, tmp_path: Path) -> None:
    ctx = _ctx(compose_cfg, tmp_path)
    with pytest.raises(ContractError) as e:
        run_pipeline(ctx, [_probe(lambda c: c.cfg.model.model_id, config_keys=("seed",))])
    assert str(e.value).startswith("stage 'probe' reads config key 'model', which it does not declare")
    assert "\n" not in str(e.value)                                     # one line for the CLI
    assert ctx.cfg is ctx.full_cfg                                      # restored for the runner
    ctx = _ctx(compose_cfg, tmp_path / "declared")
    run_pipeline(ctx, [_probe(lambda c: c.cfg.model.model_id, config_keys=("model",))])
    assert ctx.outputs["probe"][0].text == str(ctx.cfg.model.model_id)


def test_rendering_an_undeclared_template_raises(compose_cfg, tmp_path: Path) -> None:
    extract = lambda c: render("extract", "en", query="q", think="t")
    with pytest.raises(ContractError, match="stage 'probe' renders prompt template 'extract', which it does not"):
        run_pipeline(_ctx(compose_cfg, tmp_path), [_probe(extract, templates=("assess",))])
    ctx = _ctx(compose_cfg, tmp_path / "declared")
    run_pipeline(ctx, [_probe(extract, templates=("extract",))])
    assert "q" in ctx.outputs["probe"][0].text
    assert render("extract", "en", query="q", think="t")               # outside a stage nothing is checked


def test_opening_an_undeclared_packaged_asset_raises(compose_cfg, tmp_path: Path) -> None:
    from oyster_exp.data.taxonomy import TAXONOMY_ASSET, default_taxonomy

    names = lambda c: len(default_taxonomy().names_en())
    with pytest.raises(ContractError, match=f"stage 'probe' reads packaged asset '{TAXONOMY_ASSET}'"):
        run_pipeline(_ctx(compose_cfg, tmp_path), [_probe(names)])
    ctx = _ctx(compose_cfg, tmp_path / "declared")
    run_pipeline(ctx, [_probe(names, assets=("assets",))])          # a folder covers the files below it
    assert int(ctx.outputs["probe"][0].text) > 10
    with active_stage("x", (), ("assets/taxonomy",)):
        assert package_file(TAXONOMY_ASSET).is_file()
        with pytest.raises(ContractError):
            package_file("assets/seed_queries.jsonl")


def test_the_key_covers_declared_templates_and_assets_only(compose_cfg, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = tmp_path / "prompts"
    shutil.copytree(prompt_dir(), prompts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setenv(PROMPTS_DIR_ENV, str(prompts))
    ctx = _ctx(compose_cfg, tmp_path)
    judge = _probe(lambda c: "", templates=("user_judge",), assets=("assets/taxonomy/categories.yaml",))
    other = _probe(lambda c: "", templates=("assess",))
    before = stage_key(ctx, judge), stage_key(ctx, other)
    (prompts / "cn" / "user_judge.j2").write_text((prompts / "cn" / "user_judge.j2").read_text() + "\n额外的一句。\n")
    after = stage_key(ctx, judge), stage_key(ctx, other)
    assert after[0] != before[0] and after[1] == before[1]             # every language of a template counts
    assert set(judge.asset_hashes()) == {"prompts/en/user_judge.j2", "prompts/cn/user_judge.j2",
                                         "assets/taxonomy/categories.yaml"}
    assert stage_key(ctx, _probe(lambda c: "", config_keys=("seed",))) != stage_key(ctx, _probe(lambda c: ""))


def test_every_default_stage_declares_existing_templates_and_assets() -> None:
    from oyster_exp.stages import default_stages

    by_name = {s.name: s for s in default_stages()}
    for stage in by_name.values():
        hashes = stage.asset_hashes()                 # opens every declared file: a stale name fails here
        assert {f"prompts/en/{t}.j2" for t in stage.templates} <= set(hashes), stage.name
        assert all(any(k == a or k.startswith(a + "/") for k in hashes) for a in stage.assets), stage.name
    assert "assess" in by_name["assess"].templates and "assess" not in by_name["optimize"].templates
    assert {"user_judge", "safety_judge", "edit", "recombine"} <= set(by_name["optimize"].templates)
    assert "assets/over_refusal_probes.csv" in by_name["evaluate"].asset_hashes()


def test_optimize_declares_the_model_only_for_the_embedding_similarity(compose_cfg) -> None:
    from oyster_exp.stages.optimize import OptimizeStage

    assert "model" not in OptimizeStage().config_slice(compose_cfg("model=tiny_random"))
    sliced = OptimizeStage().config_slice(compose_cfg("model=tiny_random", "lingo_bp/similarity=embedding"))
    assert sliced["model"]["name"] == "tiny_random"


@pytest.mark.slow
def test_editing_a_prompt_recomputes_exactly_the_stages_that_render_it(tmp_path: Path) -> None:
    """The issue's check, through the CLI: edit the assessor's template in a copy of the prompts, rerun the same
    command; assess misses, the stages that do not render it (generate, extract: extract reads generate, not
    assess) are hits."""
    prompts = tmp_path / "prompts"
    shutil.copytree(prompt_dir(), prompts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(tmp_path / "outputs"), "WANDB_MODE": "disabled",
           PROMPTS_DIR_ENV: str(prompts)}
    cmd = [sys.executable, "-m", "oyster_exp.run.cli", "model=tiny_random", "debug=fast", "print_config=false",
           "stage=[queries,generate,assess,extract]"]

    def run() -> dict[str, str]:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        run_dir = max((tmp_path / "outputs" / "runs").glob("*/*"), key=lambda d: d.stat().st_mtime)
        return json.loads((run_dir / "manifest.json").read_text())["counters"]["stage_cache"]

    assert set(run().values()) == {"miss"}
    assert run() == {"queries": "hit", "generate": "hit", "assess": "hit", "extract": "hit"}
    (prompts / "en" / "assess.j2").write_text((prompts / "en" / "assess.j2").read_text() + "\nBe brief.\n")
    assert run() == {"queries": "hit", "generate": "hit", "assess": "miss", "extract": "hit"}


def test_every_stage_that_reads_the_taxonomy_keys_the_users_workbook_by_content(compose_cfg, tmp_path: Path) -> None:
    """`risk.taxonomy_path` by path alone would let an edited workbook come back as a stale cache hit."""
    from oyster_exp.stages.assess import AssessStage
    from oyster_exp.stages.evaluate import EvaluateStage
    from oyster_exp.stages.optimize import OptimizeStage

    workbook = tmp_path / "mine.xlsx"
    shutil.copy(DATA / "oyster" / "risk_taxonomy.xlsx", workbook)   # the shared data (OYSTER_EXP_DATA)
    ctx = RunContext(cfg=compose_cfg("model=tiny_random", "debug=fast", f"risk.taxonomy_path={workbook}",
                                     "eval.on_missing_data=skip"),
                     run_dir=tmp_path / "run", cache_root=tmp_path / "cache")
    stages = (AssessStage(), OptimizeStage(), EvaluateStage())

    def inputs() -> list[str]:
        out = []
        for stage in stages:
            with ctx.stage_scope(stage):
                out.append(stage.extra_inputs(ctx)["taxonomy_workbook"])
        return out

    before = inputs()
    with open(workbook, "ab") as f:
        f.write(b"\0")                                   # same path, other content
    after = inputs()
    assert all(a != b for a, b in zip(before, after)) and len(set(after)) == 1


def test_a_stage_calling_an_undeclared_llm_role_stops_the_run(compose_cfg, tmp_path: Path) -> None:
    """A role's settings decide the replies, so calling `editor` while declaring only `llm.roles.actor` fails."""
    from oyster_exp.llm.base import ChatResponse
    from oyster_exp.llm.service import LLMService, RoleBinding

    calls: list[str] = []

    class Echo:
        backend, model_id = "echo", "echo"

        def chat_batch(self, requests):
            calls.extend("x" for _ in requests)
            return [ChatResponse(content="ok") for _ in requests]

    def service() -> LLMService:
        return LLMService({r: RoleBinding(client=Echo()) for r in ("actor", "editor")})  # type: ignore[arg-type]

    ctx = _ctx(compose_cfg, tmp_path)
    ctx.service = service()
    with pytest.raises(ContractError, match="stage 'probe' calls LLM role 'editor', which it does not declare"):
        run_pipeline(ctx, [_probe(lambda c: c.service.text("editor", [[]]), config_keys=("llm.roles.actor",))])
    assert calls == []                                   # stopped before any request
    ctx = _ctx(compose_cfg, tmp_path / "all")           # declaring the whole `llm.roles` allows every role
    ctx.service = service()
    run_pipeline(ctx, [_probe(lambda c: c.service.text("editor", [[]])[0].text, config_keys=("llm.roles",))])
    assert calls == ["x"] and ctx.outputs["probe"][0].text == "ok"
