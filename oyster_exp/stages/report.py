"""report: results table, construction curve plot and the paper's numbers, in the run directory."""
from __future__ import annotations

import json
import math
from typing import Any

from oyster_exp.artifacts import CacheEntry, Journal
from oyster_exp.evaluation.summary import summarise
from oyster_exp.pipeline import RunContext, Stage
from oyster_exp.records import ReportRecord


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def results_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | benchmark | metric | value | 95% CI | n |", "|---|---|---|---|---|---|"]
    for r in rows:
        ci = "–" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        lines.append(f"| {r['model']} | {r['benchmark']} | {r['metric']} | {_fmt(r['value'])} | {ci} | {r['n']} |")
    return "\n".join(lines)


def pipeline_table(ctx: RunContext) -> str:
    lines = ["| stage | cache | records | failures | seconds |", "|---|---|---|---|---|"]
    for name, st in ctx.stats.items():
        if "records" in st:
            lines.append(f"| {name} | {st.get('cache', '-')} | {st['records']} | {st['failures']} | {st['seconds']} |")
    return "\n".join(lines)


def paper_table() -> str:
    from oyster_exp.reporting.paper import paper_rows

    rows = [r for r in paper_rows() if r["benchmark"] == "headline" and r["metric"] in ("Jailbreak", "Constructive")]
    if not rows:
        return "_(no reference rows)_"
    lines = ["| model | metric | value | source |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['metric']} | {r['value']} | {r.get('source', '')} |")
    return "\n".join(lines)


class ReportStage(Stage):
    name = "report"
    record_type = ReportRecord
    inputs = ("evaluate",)
    cacheable = False

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        from oyster_exp.reporting.plots import plot_construction_curves

        ev = ctx.cfg.eval
        rows, curves = summarise(inputs["evaluate"], list(ev.construction.betas), float(ev.construction.alpha),
                                 float(ev.construction.headline_beta), int(ev.bootstrap_resamples),
                                 seed=int(ctx.cfg.seed))
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        (ctx.run_dir / "results.json").write_text(json.dumps(rows, indent=2, default=float))
        plots = []
        if curves:
            path = plot_construction_curves(curves, ctx.run_dir / "plots" / "construction_curve.png",
                                            title=f"{ctx.cfg.run_name}: normalised construction score")
            plots.append(str(path.relative_to(ctx.run_dir)))
        head = {f"{r['model']}/{r['metric']}": float(r["value"]) for r in rows
                if r["metric"].startswith(("constructive", "asr"))}
        md = [
            f"# oyster-exp report: {ctx.cfg.run_name}",
            "",
            f"Base model `{ctx.cfg.model.model_id}`, objective `{ctx.cfg.objective.name.value if hasattr(ctx.cfg.objective.name, 'value') else ctx.cfg.objective.name}`,"
            f" Lingo-BP schedule `{[str(getattr(m, 'value', m)) for m in ctx.cfg.lingo_bp.iterations]}`, seed {ctx.cfg.seed}.",
            "",
            "## Results",
            "",
            results_table(rows),
            "",
            *(f"![construction curve]({p})" for p in plots),
            "",
            "## Pipeline",
            "",
            pipeline_table(ctx),
            "",
            "## The paper's numbers (Oyster-I, 14B models; for orientation, not comparable to a 135M demo)",
            "",
            paper_table(),
            "",
        ]
        (ctx.run_dir / "report.md").write_text("\n".join(md))
        for logger in ctx.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in head.items() if not math.isnan(v)})
        journal.append(ReportRecord(id="report", report="report.md", plots=plots, headline=head))
