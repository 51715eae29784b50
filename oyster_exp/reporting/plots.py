"""Report figures, rendered headless with matplotlib's Agg canvas.

Figures are built on `matplotlib.figure.Figure` with an explicit Agg canvas instead of pyplot: no display
is needed, pyplot's global backend and figure registry are untouched (safe under parallel Hydra jobs and
in processes that also use pyplot), and nothing leaks if a job draws hundreds of figures.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(size: tuple[float, float]) -> Figure:
    """An empty figure of `size` inches at 120 dpi on its own Agg canvas (see the module doc: no pyplot)."""
    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write `fig` as a tight PNG at `path`, creating its directory; return the path (for report links)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def plot_construction_curves(curves: Mapping[str, Mapping[float, float]], path: Path,
                             title: str | None = None) -> Path:
    """The paper's trade-off figure: normalised construction score vs beta (log x), one line per model.

    Shading marks beta < 1 (satisfaction outweighs risk) and beta > 1 (risk outweighs satisfaction), so
    a reader sees at once whether a model's ranking depends on which priority one takes.
    """
    if not curves:
        raise ValueError("plot_construction_curves: no curves to plot")
    betas = sorted({float(b) for c in curves.values() for b in c if float(b) > 0})
    if not betas:
        raise ValueError("plot_construction_curves: beta values must be > 0 for a log axis")
    lo, hi = min(betas + [1.0]) / 1.5, max(betas + [1.0]) * 1.5
    fig = new_figure((7.0, 4.4))
    ax = fig.add_subplot()
    ax.axvspan(lo, 1.0, color="tab:green", alpha=0.08, lw=0)
    ax.axvspan(1.0, hi, color="tab:red", alpha=0.08, lw=0)
    ax.text(math.sqrt(lo * 1.0), 0.95, "Satisfaction priority (β<1)", ha="center", va="top", fontsize=8)
    ax.text(math.sqrt(hi * 1.0), 0.95, "Safety priority (β>1)", ha="center", va="top", fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.7)
    ax.axvline(1.0, color="grey", lw=0.7, ls=":")
    for name, curve in curves.items():
        pts = sorted((float(b), float(v)) for b, v in curve.items() if float(b) > 0 and not math.isnan(float(v)))
        if pts:
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", ms=3.5, lw=1.5, label=name)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xticks(betas, [f"{b:g}" for b in betas])
    ax.minorticks_off()
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("Risk-penalty coefficient β")
    ax.set_ylabel("Normalised construction score ∈ [−1, 1]")
    ax.set_title(title or "Normalised construction score across β")
    ax.text(0.01, 0.02, "C = α·S − β·R (α = 1); C<0 divided by max(1, β)", transform=ax.transAxes, fontsize=7,
            color="dimgrey")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, path)


def plot_bars_with_ci(rows: Sequence[Mapping[str, Any]], path: Path, metric: str, title: str | None = None,
                      ylim: tuple[float, float] | None = None) -> Path:
    """Bars of `metric` per label (row["label"], else "model/benchmark") with 95% CI error bars.

    Rows are the tidy result rows (value, ci_low, ci_high); a row without a finite CI gets a bar with
    no error bar rather than a misleading zero-width one.
    """
    sel = [r for r in rows if r.get("metric") == metric]
    if not sel:
        raise ValueError(f"plot_bars_with_ci: no rows with metric {metric!r}")
    labels = [str(r.get("label") or "/".join(str(r[k]) for k in ("model", "benchmark") if r.get(k))) for r in sel]
    vals = [float(r["value"]) for r in sel]
    # results.json writes an absent bound (NaN) as null
    lows = [math.nan if r.get("ci_low") is None else float(r["ci_low"]) for r in sel]
    highs = [math.nan if r.get("ci_high") is None else float(r["ci_high"]) for r in sel]
    err = [[v - lo if math.isfinite(lo) else 0.0 for v, lo in zip(vals, lows)],
           [hi - v if math.isfinite(hi) else 0.0 for v, hi in zip(vals, highs)]]
    err = [[max(0.0, e) for e in side] for side in err]
    fig = new_figure((max(4.0, 0.9 * len(sel) + 2.0), 4.0))
    ax = fig.add_subplot()
    x = list(range(len(sel)))
    ax.bar(x, vals, color="tab:blue", alpha=0.8)
    has_ci = [i for i in x if math.isfinite(lows[i]) and math.isfinite(highs[i])]
    if has_ci:
        ax.errorbar([x[i] for i in has_ci], [vals[i] for i in has_ci],
                    yerr=[[err[0][i] for i in has_ci], [err[1][i] for i in has_ci]],
                    fmt="none", ecolor="black", capsize=4, lw=1)
    crowded = len(sel) > 3 or max(len(lb) for lb in labels) > 10
    ax.set_xticks(x, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.axhline(0.0, color="grey", lw=0.7)
    ax.set_ylabel(metric)
    if ylim is not None:                      # a fixed scale (e.g. 0-100 %) keeps all-zero bars readable
        ax.set_ylim(*ylim)
    ax.set_title(title or f"{metric} (95% CI)")
    return save_figure(fig, path)
