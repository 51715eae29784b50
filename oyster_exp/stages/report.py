"""report: results table, construction curve plot and the paper's numbers, in the run directory.

It also puts the trained model's final eval metrics into the run's copy of the exported model card.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from oyster_exp.csa.lingo_bp import lingo_schedule
from oyster_exp.csa.records import ReportRecord
from oyster_exp.data.taxonomy import rule_set_description
from oyster_exp.evaluation.benchmarks import configured
from oyster_exp.evaluation.summary import paired_deltas, summarise
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage
from oyster_exp.reporting.tables import counts_table, overall_table, reference_table, side_by_side
from oyster_exp.stages.train import MODEL_SUBDIR, TrainStage
from oyster_exp.training.card import add_eval_results


def pipeline_table(ctx: RunContext) -> str:
    lines = ["| stage | cache | records | failures | seconds |", "|---|---|---|---|---|"]
    for name, st in ctx.stats.items():
        if "records" in st:
            lines.append(f"| {name} | {st.get('cache', '-')} | {st['records']} | {st['failures']} | {st['seconds']} |")
    return "\n".join(lines)


def _json_safe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NaN (no value, e.g. nothing judged) becomes null: strict JSON readers reject NaN."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


_CELL = re.compile(r"asr\[(en|cn)-L\d\]")


class ReportStage(Stage):
    name = "report"
    record_type = ReportRecord
    inputs = ("evaluate",)
    cacheable = False
    config_keys = ("eval", "seed", "run_name", "model.model_id", "objective.name", "lingo_bp", "risk.taxonomy_path")

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        from oyster_exp.reporting.plots import plot_bars_with_ci, plot_construction_curves

        ev = ctx.cfg.eval
        rows, curves = summarise(inputs["evaluate"], configured(ev), int(ev.bootstrap_resamples),
                                 seed=int(ctx.cfg.seed))
        eval_dir = ctx.run_dir / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        blob = json.dumps(_json_safe(rows), indent=2, ensure_ascii=False)
        (eval_dir / "results.json").write_text(blob)
        (ctx.run_dir / "results.json").write_text(blob)          # the run-level copy older tools read
        plots = []
        if curves:
            path = plot_construction_curves(curves, ctx.run_dir / "plots" / "construction_curve.png",
                                            title=f"{ctx.cfg.run_name}: normalised construction score")
            plots.append(str(path.relative_to(ctx.run_dir)))
        cells = [dict(r, label=f"{r['model']} {r['metric'][4:-1]}", metric="ASR %") for r in rows
                 if r["benchmark"] == "strata_sword" and _CELL.fullmatch(r["metric"]) and not math.isnan(r["value"])]
        if cells:
            path = plot_bars_with_ci(cells, ctx.run_dir / "plots" / "strata_sword_asr.png", "ASR %",
                                     title="Strata-Sword attack success rate per language and level (95% CI)",
                                     ylim=(0.0, 100.0))
            plots.append(str(path.relative_to(ctx.run_dir)))
        head = {f"{r['model']}/{r['benchmark']}/{r['metric']}": float(r["value"]) for r in rows
                if r["metric"].startswith(("constructive", "asr", "jailbreak", "refusal_rate"))
                and "[method=" not in r["metric"]}
        deltas = paired_deltas(inputs["evaluate"], configured(ev), resamples=int(ev.bootstrap_resamples),
                               seed=int(ctx.cfg.seed))
        tables = ["## Results (95% CI, n items; Δ = trained − base with a paired bootstrap CI on the items both "
                  "were judged on, bold where it excludes 0)", "", side_by_side(rows, deltas=deltas), "",
                  "## Safety overall and General overall (the paper's headline columns, from the benchmarks this "
                  "run has)", "", overall_table(rows), "",
                  "## Items judged, failed and skipped", "", counts_table(rows), "",
                  "## The paper's numbers for the same rows (Oyster-I, 14B models; orientation, not comparable to a "
                  "135M demo)", "", reference_table(rows), ""]
        (eval_dir / "results.md").write_text("\n".join(tables))
        obj = ctx.cfg.objective.name
        md = [
            f"# oyster-exp report: {ctx.cfg.run_name}",
            "",
            f"Base model `{ctx.cfg.model.model_id}`, objective `{getattr(obj, 'value', obj)}`,"
            f" Lingo-BP schedule `{lingo_schedule(ctx.cfg.lingo_bp)}`,"
            f" eval suite `{ev.name}`, seed {ctx.cfg.seed}.",
            "",
            f"Risk rules: {rule_set_description(ctx.cfg)}.",
            "",
            *tables,
            *(f"![{Path(p).stem}]({p})" for p in plots),
            "",
            "## Pipeline",
            "",
            pipeline_table(ctx),
            "",
        ]
        (ctx.run_dir / "report.md").write_text("\n".join(md))
        for logger in ctx.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in head.items() if not math.isnan(v)})
        # the run's copy of the exported model's card gets the trained model's final eval metrics
        trained = {k.split("/", 1)[1]: v for k, v in head.items() if k.startswith("trained/") and not math.isnan(v)}
        if trained:
            card = ctx.run_dir / TrainStage.name / MODEL_SUBDIR / "README.md"
            add_eval_results(card, trained, str(ctx.cfg.run_name))
        journal.append(ReportRecord(id="report", report="report.md", plots=plots, headline=head))
