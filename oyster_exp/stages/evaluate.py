"""evaluate: score the base and the trained model on the configured suite (`eval` group).

The suite's benchmarks are the `eval` children whose `_target_` is a `Benchmark`
(evaluation/benchmarks/, one module each), run in config order; the stage asks each for its data files
(the cache key), its tasks and its runner, and never names one. The model under test is the
`eval.subject` component (in-process or an OpenAI-compatible server); judges are the method's players
and the configured judge role. Loading is checked before any model loads: a bad data file is one error
naming file, line and field.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from oyster_exp.core.errors import DataError, StageError
from oyster_exp.core.estimates import CHARS_PER_TOKEN, CallEstimate, Workload
from oyster_exp.core.hashing import file_hash
from oyster_exp.csa.records import EvalRecord
from oyster_exp.data.taxonomy import TAXONOMY_ASSET, taxonomy_for, taxonomy_inputs
from oyster_exp.evaluation.benchmarks import configured
from oyster_exp.evaluation.benchmarks.base import Benchmark, EvalEnv, ModelRun
from oyster_exp.evaluation.benchmarks.over_refusal import PROBES_ASSET
from oyster_exp.evaluation.generation import GenerationSettings, bind_subject
from oyster_exp.evaluation.subjects import Subject
from oyster_exp.models.resolve import resolve_model_dir
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage

log = logging.getLogger(__name__)


def _val(x: Any) -> str:
    return str(getattr(x, "value", x))


def benchmarks(cfg: Any) -> dict[str, Benchmark]:
    """config key -> the built benchmark, for every enabled benchmark the eval suite configures."""
    return configured(cfg.eval)


def data_files(cfg: Any) -> dict[str, list[Path]]:
    """The data files each enabled benchmark reads (the config key is in the error when one is misconfigured)."""
    out = {}
    for key, bench in benchmarks(cfg).items():
        try:
            files = bench.data_files()
        except ValueError as e:
            raise StageError(str(e)) from None
        if files:
            out[key] = files
    return out


def missing_data(cfg: Any) -> dict[str, str]:
    """benchmark key -> why it is skipped, for absent data under `eval.on_missing_data=skip`; else an error."""
    out: dict[str, str] = {}
    skip = _val(cfg.eval.on_missing_data) == "skip"
    for key, bench in benchmarks(cfg).items():
        try:
            absent = bench.absent()
        except ValueError as e:
            raise StageError(str(e)) from None
        if absent is None:
            continue
        msg = f"eval.{key}.{absent.knob}: {absent.message}"
        if not skip:
            raise StageError(f"{msg} (set eval.{key}.{absent.knob} or OYSTER_EXP_DATA, eval.{key}.enabled=false, "
                             f"or eval.on_missing_data=skip)")
        out[key] = msg
    return out


# Strata-Sword prompts per file (EN 100/100/200, CN 100/100/100 per level): the count when the files are absent
class EvaluateStage(Stage):
    name = "evaluate"
    version = 2
    record_type = EvalRecord
    inputs = ("queries", "train")
    config_keys = ("eval", "model", "llm.roles.user_judge", "llm.roles.safety_judge", "llm.max_retries",
                   "data.system_prompt", "risk.taxonomy_path", "seed")
    unkeyed_keys = ("llm.chunk_size",)       # see GenerateStage
    templates = ("user_judge", "safety_judge", "strata_classify", "strata_rule_judge", "harmbench_judge",
                 "refusal_judge", "prompt_set_judge")
    assets = (TAXONOMY_ASSET, PROBES_ASSET, "evaluation/lm_eval_tasks")

    def estimate(self, cfg: DictConfig, work: Workload) -> list[CallEstimate]:
        """Per evaluated model and benchmark item: one answer from the subject (role `subject`), then the
        judges: construction the user and safety judges, Strata-Sword a classification (`classify`) and a
        verdict, HarmBench and over-refusal one verdict. Exact when every answer succeeds (a failed answer is
        not judged), the trained model exists, no reasoning runs out of budget (`answer_after_think` then
        asks once more) and no copyright behaviour is skipped; lm-eval capability makes no service call."""
        from oyster_exp.evaluation.judges import EVAL_JUDGE_ROLE

        ev = cfg.eval
        models = len(ev.models)
        judge = EVAL_JUDGE_ROLE if ev.judge.client is not None else str(ev.judge.role)
        answer = int(ev.generation.max_new_tokens) * CHARS_PER_TOKEN
        skip = _val(ev.on_missing_data) == "skip"
        out: list[CallEstimate] = []
        for bench in benchmarks(cfg).values():
            out += [CallEstimate(c.role, c.calls * models, c.prompt_chars)
                    for c in bench.estimate(work, judge, answer, skip)]
        return out

    def upstream(self, cfg: Any) -> tuple[str, ...]:
        """Scoring the base model only (`eval.models=[base]`) needs no trained model: no train stage upstream."""
        return self.inputs if "trained" in [str(m) for m in cfg.eval.models] else ("queries",)

    def config_slice(self, cfg: Any) -> dict[str, Any]:
        out = super().config_slice(cfg)
        if cfg.eval.judge.client is None:                       # the judge role's settings decide verdicts
            key = f"llm.roles.{cfg.eval.judge.role}"
            node = OmegaConf.select(cfg, key, default=None)
            out[key] = OmegaConf.to_container(node, resolve=True) if node is not None else None
        return out

    def extra_inputs(self, ctx: RunContext) -> dict[str, str]:
        """Content hashes of every enabled benchmark's data files and other files that decide its output."""
        missing = missing_data(ctx.cfg)
        out = {}
        for key, bench in benchmarks(ctx.cfg).items():
            files = bench.data_files()
            for f in files:
                out[f"{key}:{f.name}"] = "missing" if key in missing else file_hash(f)
            out.update({f"{key}:{k}": file_hash(f) for k, f in bench.cache_files().items()})
        return {**out, **taxonomy_inputs(ctx.cfg)}

    def _weights(self, ctx: RunContext, name: str, train_records: list[Any]) -> tuple[Path, str] | None:
        """(checkpoint dir, model id) of `name` on disk: the model group's, or the train stage's output."""
        cfg = ctx.cfg
        if name == "base":
            return resolve_model_dir(cfg.model), str(cfg.model.model_id)
        rec = train_records[0] if train_records else None
        if rec is None or rec.failure:
            log.warning("no trained model (%s); evaluating the base model only", rec.failure if rec else "-")
            return None
        entry = ctx.entries["train"]
        return entry.dir / rec.model_dir, f"trained:{entry.key[:20]}"

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
        subject: Subject = instantiate(ev.subject, _convert_="all")
        env = EvalEnv(service=ctx.service, taxonomy=taxonomy_for(cfg), judge=judge, system_prompt=sp,
                      queries=inputs["queries"])
        missing = missing_data(cfg)
        suite: dict[str, tuple[Benchmark, list[Any]]] = {}
        try:                                                  # every loader runs before the first answer
            for key, bench in benchmarks(cfg).items():
                suite[key] = (bench, bench.prepare(env, missing.get(key)))
        except ValueError as e:       # loaders name the file, line and field: a data error (exit 2, run.cli)
            raise DataError(f"eval: {e}") from None
        dtype, chunk = str(cfg.model.dtype), int(cfg.llm.chunk_size)
        for name in ev.models:
            name = str(name)
            cached: dict[str, tuple[Path, str] | None] = {}

            def weights(name: str = name, cached: dict[str, tuple[Path, str] | None] = cached
                        ) -> tuple[Path, str] | None:
                if name not in cached:
                    cached[name] = self._weights(ctx, name, inputs.get("train", []))
                return cached[name]

            client = subject.client(name, weights, dtype, settings.batch_size)
            if client is None:
                continue
            bind_subject(ctx.service, client, settings)
            run = ModelRun(name=name, service=ctx.service, journal=journal, settings=settings, chunk_size=chunk,
                           subject=subject, weights=weights, dtype=dtype)
            for bench, tasks in suite.values():
                bench.evaluate(tasks, run)
