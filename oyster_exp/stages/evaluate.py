"""evaluate: score the base and the trained model on the configured suite (`eval` group).

Construction Score on constructive-benchmark queries, Strata-Sword jailbreak ASR, HarmBench ASR,
over-refusal and (with lm-eval installed) general capability. The model under test runs in-process or
behind an OpenAI-compatible server (`eval.subject`); judges are the method's players and the configured
judge role. Loading is checked before any model loads: a bad data file is one error naming file, line
and field.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from oyster_exp.core.errors import StageError
from oyster_exp.core.hashing import file_hash
from oyster_exp.csa.records import EvalRecord
from oyster_exp.data.taxonomy import TAXONOMY_ASSET, taxonomy_for
from oyster_exp.evaluation import suite
from oyster_exp.evaluation.generation import GenerationSettings, bind_subject, local_subject, server_subject
from oyster_exp.evaluation.over_refusal import PROBES_ASSET
from oyster_exp.llm.base import LLMClient
from oyster_exp.models.resolve import resolve_model_dir
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import (
    CHARS_PER_TOKEN,
    GUIDELINE_CHARS,
    CallEstimate,
    RunContext,
    Stage,
    Workload,
    template_chars,
)

log = logging.getLogger(__name__)


def _val(x: Any) -> str:
    return str(getattr(x, "value", x))


def _strata_files(cfg: Any) -> list[Path]:
    from oyster_exp.evaluation.strata_sword import strata_path

    ss = cfg.eval.strata_sword
    return [strata_path(Path(str(ss.path)).expanduser(), lang, int(lvl)) for lang in ss.languages for lvl in ss.levels]


def data_files(cfg: Any) -> dict[str, list[Path]]:
    """The data files each enabled benchmark reads (the config key is in the error when one is missing)."""
    ev = cfg.eval
    out: dict[str, list[Path]] = {}
    if ev.construction.enabled and _val(ev.construction.source) == "file":
        out["construction"] = [Path(str(ev.construction.path)).expanduser()]
    if ev.strata_sword.enabled:
        out["strata_sword"] = _strata_files(cfg)
    if ev.harmbench.enabled:
        if not ev.harmbench.path:
            raise StageError("eval.harmbench.path: required when eval.harmbench.enabled=true")
        out["harmbench"] = [Path(str(ev.harmbench.path)).expanduser()]
    if ev.over_refusal.enabled and ev.over_refusal.path:
        out["over_refusal"] = [Path(str(ev.over_refusal.path)).expanduser()]
    return out


def missing_data(cfg: Any) -> dict[str, str]:
    """benchmark -> why it is skipped, for absent files under `eval.on_missing_data=skip`; else an error."""
    out: dict[str, str] = {}
    for bench, files in data_files(cfg).items():
        absent = [f for f in files if not f.exists()]
        if not absent:
            continue
        msg = f"eval.{bench}.path: {absent[0]} not found"
        if _val(cfg.eval.on_missing_data) == "skip":
            out[bench] = f"data not found: {absent[0]}"
        else:
            raise StageError(f"{msg} (set the path, OYSTER_EXP_DATA, eval.{bench}.enabled=false, or "
                             f"eval.on_missing_data=skip)")
    inc = cfg.eval.capability.include_path if cfg.eval.capability.enabled else None
    if inc and not Path(str(inc)).expanduser().is_dir():      # a folder of task YAMLs, not a data file
        if _val(cfg.eval.on_missing_data) != "skip":
            raise StageError(f"eval.capability.include_path: {inc} is not a directory (set it, "
                             f"eval.capability.include_path=null, or eval.on_missing_data=skip)")
        out["capability"] = f"eval.capability.include_path: {inc} is not a directory"
    return out


# Strata-Sword prompts per file (EN 100/100/200, CN 100/100/100 per level): the count when the files are absent
_STRATA_SIZES = {("en", 1): 100, ("en", 2): 100, ("en", 3): 200}


def benchmark_items(cfg: Any, work: Workload) -> dict[str, tuple[int, float]]:
    """benchmark -> (items each evaluated model answers, mean prompt characters), as the stage would load them.

    Files that exist are counted (they are small); absent ones count 0 under `eval.on_missing_data=skip`,
    and Strata-Sword's published sizes otherwise.
    """
    ev = cfg.eval
    skip = _val(ev.on_missing_data) == "skip"
    out: dict[str, tuple[int, float]] = {}

    def limited(n: int, limit: Any) -> int:
        return min(n, int(limit)) if limit else n

    if ev.construction.enabled:
        if _val(ev.construction.source) == "file":
            path = Path(str(ev.construction.path)).expanduser()
            n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) \
                if path.is_file() else 0
        else:
            n = work.heldout
        out["construction"] = (limited(n, ev.construction.limit), work.query_chars)
    if ev.strata_sword.enabled:
        from oyster_exp.evaluation.strata_sword import load_strata_sword

        ss = ev.strata_sword
        limit = int(ss.limit) if ss.limit else None
        n = 0
        cells = [(lang, int(lvl)) for lang in ss.languages for lvl in ss.levels]
        for f, (lang, lvl) in zip(_strata_files(cfg), cells):
            if f.exists():
                n += len(load_strata_sword(f.parent, languages=(lang,), levels=(lvl,), limit=limit))
            elif not skip:
                n += limited(_STRATA_SIZES.get((lang, lvl), 100), limit)
        out["strata_sword"] = (n, 600.0)
    if ev.harmbench.enabled and ev.harmbench.path:
        from oyster_exp.evaluation.harmbench import load_harmbench

        path = Path(str(ev.harmbench.path)).expanduser()
        n = len(load_harmbench(path, limit=int(ev.harmbench.limit) if ev.harmbench.limit else None)) \
            if path.is_file() else 0
        out["harmbench"] = (n, 300.0)
    if ev.over_refusal.enabled:
        from oyster_exp.evaluation.over_refusal import load_xstest_csv, probe_set_path

        orc = ev.over_refusal
        files = ([probe_set_path()] if orc.probes else []) + ([Path(str(orc.path)).expanduser()] if orc.path else [])
        n = sum(len(load_xstest_csv(f, tuple(orc.languages), int(orc.limit) if orc.limit else None))
                for f in files if f.is_file())
        out["over_refusal"] = (n, 100.0)
    return out


class EvaluateStage(Stage):
    name = "evaluate"
    version = 2
    record_type = EvalRecord
    inputs = ("queries", "train")
    config_keys = ("eval", "model", "llm.roles.user_judge", "llm.roles.safety_judge", "llm.max_retries",
                   "data.system_prompt", "risk.taxonomy_path", "seed")
    unkeyed_keys = ("llm.chunk_size",)       # see GenerateStage
    templates = ("user_judge", "safety_judge", "strata_classify", "strata_rule_judge", "harmbench_judge",
                 "refusal_judge")
    assets = (TAXONOMY_ASSET, PROBES_ASSET, "evaluation/lm_eval_tasks")

    def estimate(self, cfg: DictConfig, work: Workload) -> list[CallEstimate]:
        """Per evaluated model and benchmark item: one answer from the subject (role `subject`), then the
        judges: construction the user and safety judges, Strata-Sword a classification (`classify`) and a
        verdict, HarmBench and over-refusal one verdict. Exact when every answer succeeds (a failed answer is
        not judged), the trained model exists, no reasoning runs out of budget (`answer_after_think` then
        asks once more) and no copyright behaviour is skipped; lm-eval capability makes no service call."""
        from oyster_exp.evaluation.generation import SUBJECT_ROLE
        from oyster_exp.evaluation.judges import EVAL_JUDGE_ROLE

        ev = cfg.eval
        models = len(ev.models)
        judge = EVAL_JUDGE_ROLE if ev.judge.client is not None else str(ev.judge.role)
        answer = int(ev.generation.max_new_tokens) * CHARS_PER_TOKEN
        out: list[CallEstimate] = []
        for bench, (n, chars) in benchmark_items(cfg, work).items():
            out.append(CallEstimate(SUBJECT_ROLE, n * models, chars))
            context = chars + answer
            if bench == "construction":
                out += [CallEstimate("user_judge", n * models, context + template_chars("user_judge")),
                        CallEstimate("safety_judge", n * models,
                                     context + GUIDELINE_CHARS + template_chars("safety_judge"))]
            elif bench == "strata_sword":
                if ev.strata_sword.classify:
                    out.append(CallEstimate(judge, n * models, chars + template_chars("strata_classify")))
                out.append(CallEstimate(judge, n * models,
                                        context + GUIDELINE_CHARS + template_chars("strata_rule_judge")))
            elif bench == "harmbench":
                out.append(CallEstimate(judge, n * models, context + template_chars("harmbench_judge")))
            elif bench == "over_refusal":
                out.append(CallEstimate(judge, n * models, context + template_chars("refusal_judge")))
        return out

    def config_slice(self, cfg: Any) -> dict[str, Any]:
        out = super().config_slice(cfg)
        if cfg.eval.judge.client is None:                       # the judge role's settings decide verdicts
            key = f"llm.roles.{cfg.eval.judge.role}"
            node = OmegaConf.select(cfg, key, default=None)
            out[key] = OmegaConf.to_container(node, resolve=True) if node is not None else None
        return out

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        missing = missing_data(ctx.cfg)
        out = {}
        for bench, files in data_files(ctx.cfg).items():
            for f in files:
                out[f"{bench}:{f.name}"] = "missing" if bench in missing else file_hash(f)
        if ctx.cfg.eval.capability.enabled:                     # local lm-eval tasks: a changed item re-scores
            from oyster_exp.evaluation.capability import task_files

            files = task_files(ctx.cfg.eval.capability.include_path)
            out.update({f"capability:{k}": file_hash(f) for k, f in files.items()})
        return out

    # -- subjects --------------------------------------------------------------------------------------
    def _subjects(self, ctx: RunContext, train_records: list[Any], batch_size: int) -> dict[str, LLMClient]:
        cfg, ev = ctx.cfg, ctx.cfg.eval
        server = _val(ev.subject.backend) == "openai"
        out: dict[str, LLMClient] = {}
        for name in ev.models:
            if server:
                out[name] = server_subject(ev.subject, str(ev.subject.models[name]))
            elif name == "base":
                out["base"] = local_subject(resolve_model_dir(cfg.model), str(cfg.model.model_id), str(cfg.model.dtype),
                                            batch_size)
            elif name == "trained":
                rec = train_records[0] if train_records else None
                if rec is None or rec.failure:
                    log.warning("no trained model (%s); evaluating the base model only", rec.failure if rec else "-")
                    continue
                entry = ctx.entries["train"]
                out["trained"] = local_subject(entry.dir / rec.model_dir, f"trained:{entry.key[:20]}",
                                               str(cfg.model.dtype), batch_size)
        return out

    def _model_path(self, ctx: RunContext, name: str, train_records: list[Any]) -> str | None:
        if name == "base":
            return str(resolve_model_dir(ctx.cfg.model))
        rec = train_records[0] if train_records else None
        return str(ctx.entries["train"].dir / rec.model_dir) if rec is not None and not rec.failure else None

    # -- tasks -----------------------------------------------------------------------------------------
    def _tasks(self, ctx: RunContext, inputs: dict[str, list[Any]], judge: Any, sp: str) -> list[suite.Task]:
        from oyster_exp.evaluation.constructive import from_query_records, load_constructive
        from oyster_exp.evaluation.harmbench import load_harmbench
        from oyster_exp.evaluation.over_refusal import load_xstest_csv, probe_set_path
        from oyster_exp.evaluation.strata_sword import load_strata_sword

        cfg, ev = ctx.cfg, ctx.cfg.eval
        tax = taxonomy_for(cfg)
        missing = missing_data(cfg)
        tasks: list[suite.Task] = []
        try:
            if ev.construction.enabled:
                limit = int(ev.construction.limit) if ev.construction.limit else None
                if _val(ev.construction.source) == "file":
                    path = Path(str(ev.construction.path)).expanduser()
                    if "construction" in missing:
                        tasks.append(suite.Task("construction", path.stem, skipped=missing["construction"]))
                    else:
                        items = load_constructive(path, tax, limit)
                        tasks.append(suite.construction_task(items, path.stem, ctx.service, tax, sp))
                else:
                    items = from_query_records(inputs["queries"])[:limit]
                    tasks.append(suite.construction_task(items, "heldout", ctx.service, tax, sp))
            if ev.strata_sword.enabled:
                ss = ev.strata_sword
                if "strata_sword" in missing:
                    tasks.append(suite.Task("strata_sword", "test", skipped=missing["strata_sword"]))
                else:
                    items = load_strata_sword(Path(str(ss.path)).expanduser(), languages=tuple(ss.languages),
                                              levels=tuple(int(x) for x in ss.levels),
                                              limit=int(ss.limit) if ss.limit else None)
                    tasks.append(suite.strata_task(items, judge, tax, bool(ss.classify), sp))
            if ev.harmbench.enabled:
                path = Path(str(ev.harmbench.path)).expanduser()
                split = suite.split_name(path, "harmbench_behaviors_text_")
                if "harmbench" in missing:
                    tasks.append(suite.Task("harmbench", split, skipped=missing["harmbench"]))
                else:
                    items = load_harmbench(path, limit=int(ev.harmbench.limit) if ev.harmbench.limit else None)
                    tasks.append(suite.harmbench_task(items, split, judge, bool(ev.harmbench.skip_copyright), sp))
            if ev.over_refusal.enabled:
                orc = ev.over_refusal
                files = ([probe_set_path()] if orc.probes else []) + \
                    ([Path(str(orc.path)).expanduser()] if orc.path and "over_refusal" not in missing else [])
                items = [x for f in files for x in load_xstest_csv(f, tuple(orc.languages),
                                                                   int(orc.limit) if orc.limit else None)]
                split = "+".join(f.stem for f in files) or "none"
                if "over_refusal" in missing and not items:
                    tasks.append(suite.Task("over_refusal", split, skipped=missing["over_refusal"]))
                else:
                    tasks.append(suite.over_refusal_task(items, split, judge, bool(orc.string_match), sp))
        except ValueError as e:  # loaders name the file, line and field
            raise StageError(f"eval: {e}") from None
        return tasks

    def _capability(self, ctx: RunContext, journal: Journal, model: str, path: str | None) -> None:
        from oyster_exp.evaluation.capability import INSTALL_HINT, lm_eval_available, model_args, run_lm_eval

        cap, ev = ctx.cfg.eval.capability, ctx.cfg.eval
        skip = INSTALL_HINT if not lm_eval_available() else missing_data(ctx.cfg).get("capability")
        if skip is not None:
            suite.run_task(suite.Task("capability", "lm_eval", skipped=skip), model, ctx.service, journal,
                           GenerationSettings(), 1)
            return
        pending = [t for t in cap.tasks if suite.record_id(model, "capability", str(t)) not in journal]
        if not pending:
            return
        backend = _val(ev.subject.backend)
        mtype, args = model_args(backend, path, ev.subject.models.get(model) if backend == "openai" else None,
                                 ev.subject.base_url, str(ctx.cfg.model.dtype))
        for score in run_lm_eval(mtype, args, [str(t) for t in pending], int(cap.limit) if cap.limit else None,
                                 cap.num_fewshot, int(cap.batch_size), cap.include_path):
            rid = suite.record_id(model, "capability", score.task)
            if rid not in journal:
                journal.append(EvalRecord(id=rid, model=model, benchmark="capability", item_id=score.task,
                                          prompt="", failure=score.failure,
                                          meta={"split": "lm_eval", "n": score.n, **score.metrics}))

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        from oyster_exp.evaluation.judges import EvalJudge

        cfg, ev = ctx.cfg, ctx.cfg.eval
        sp = str(ev.generation.system_prompt if ev.generation.system_prompt is not None
                 else (cfg.data.system_prompt or ""))
        settings = GenerationSettings.from_cfg(ev.generation)
        try:
            judge = EvalJudge.from_cfg(ctx.service, ev.judge)
        except KeyError as e:
            raise StageError(str(e.args[0])) from None
        tasks = self._tasks(ctx, inputs, judge, sp)           # every loader runs before the first answer
        chunk = int(cfg.llm.chunk_size)
        for model, client in self._subjects(ctx, inputs["train"], settings.batch_size).items():
            bind_subject(ctx.service, client, settings)
            for task in tasks:
                suite.run_task(task, model, ctx.service, journal, settings, chunk)
            if ev.capability.enabled:
                self._capability(ctx, journal, model, self._model_path(ctx, model, inputs["train"]))
