"""Sweep plots: construction curves and metric bars across arms, the headline against a numeric knob, and
training loss per arm. The figure primitives are `reporting.plots`'.
"""
from __future__ import annotations

import math
from pathlib import Path

from oyster_exp.reporting.plots import new_figure, plot_bars_with_ci, plot_construction_curves, save_figure
from oyster_exp.reporting.sweep_collect import HEADLINE_METRIC, Arm
from oyster_exp.reporting.sweep_tables import asr_metric


def _numeric_knob(arms: list[Arm]) -> str | None:
    """A swept knob whose values are all numbers (e.g. objective.beta): worth a line plot."""
    for key in sorted({k for a in arms for k in a.knobs}):
        vals = [a.knobs.get(key) for a in arms]
        try:
            if len({float(v) for v in vals if v is not None}) > 1 and all(v is not None for v in vals):
                return key
        except ValueError:
            continue
    return None


def write_plots(arms: list[Arm], out: Path) -> list[Path]:
    """Every plot the finished arms (completed or skipped) have data for, as PNGs under `out`; their paths."""
    plots: list[Path] = []
    done = [a for a in arms if a.status in ("completed", "skipped")]
    curves: dict[str, dict[float, float]] = {}
    for a in done:
        if "base" in a.curves and "base" not in curves:
            curves["base"] = a.curves["base"]
        if "trained" in a.curves:
            curves[f"{a.job}: {a.label}"] = a.curves["trained"]
    if curves:
        plots.append(plot_construction_curves(curves, out / "construction_curves.png",
                                              title="Normalised construction score across β, per arm"))
    for metric, name in ((HEADLINE_METRIC, "ablation_constructive.png"), (asr_metric(done), "ablation_asr.png")):
        if metric is None:
            continue
        rows = []
        first_base = next((a.metric("base", metric) for a in done if a.metric("base", metric)), None)
        if first_base:
            rows.append({**first_base, "label": "base"})
        rows += [{**r, "label": f"{a.job}: {a.label}"} for a in done if (r := a.metric("trained", metric))]
        if rows:
            plots.append(plot_bars_with_ci(rows, out / name, metric, title=f"{metric} per arm (95% CI)"))
    knob = _numeric_knob(done)
    if knob:
        plots.append(_plot_metric_vs_knob(done, knob, out / f"{HEADLINE_METRIC.split('@')[0]}_vs_{knob}.png"))
    if any(a.train_curve for a in done):
        plots.append(_plot_training_curves(done, out / "training_curves.png"))
    return plots


def _plot_metric_vs_knob(arms: list[Arm], knob: str, path: Path) -> Path:
    pts = []
    for a in arms:
        r = a.metric("trained", HEADLINE_METRIC)
        if r is not None and r.get("value") is not None:
            pts.append((float(a.knobs[knob]), float(r["value"]), r.get("ci_low"), r.get("ci_high")))
    pts.sort()
    fig = new_figure((5.5, 3.8))
    ax = fig.add_subplot()
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        lo = [max(0.0, y - p[2]) if p[2] is not None and math.isfinite(p[2]) else 0.0 for y, p in zip(ys, pts)]
        hi = [max(0.0, p[3] - y) if p[3] is not None and math.isfinite(p[3]) else 0.0 for y, p in zip(ys, pts)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4)
    ax.set_xlabel(knob)
    ax.set_ylabel(f"trained {HEADLINE_METRIC}")
    ax.set_title(f"Construction score (β=2) across {knob} (95% CI)")
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def _plot_training_curves(arms: list[Arm], path: Path) -> Path:
    fig = new_figure((6.5, 4.0))
    ax = fig.add_subplot()
    for a in arms:
        pts = sorted(a.train_curve.get("train/loss", []))
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker=".", label=f"{a.job}: {a.label}")
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.set_title("Training loss per arm")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return save_figure(fig, path)
