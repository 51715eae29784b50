"""Plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_construction_curves(curves: dict[str, dict[float, float]], path: Path, title: str | None = None) -> Path:
    """Normalised construction score across beta, one line per model (the paper's trade-off figure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    all_b = sorted({b for c in curves.values() for b in c})
    if all_b:
        ax.axvspan(min(all_b) * 0.8, 1.0, color="tab:green", alpha=0.06, label="satisfaction priority (β<1)")
        ax.axvspan(1.0, max(all_b) * 1.2, color="tab:red", alpha=0.06, label="safety priority (β>1)")
    for name, curve in curves.items():
        bs = sorted(curve)
        ax.plot(bs, [curve[b] for b in bs], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("risk penalty β")
    ax.set_ylabel("normalised construction score")
    ax.set_title(title or "Construction score across β")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars_with_ci(rows: list[dict], path: Path, metric: str) -> Path:
    """Bars of `metric` per label with 95% CI error bars."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sel = [r for r in rows if r["metric"] == metric]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    labels = [str(r.get("label", r.get("model"))) for r in sel]
    vals = [r["value"] for r in sel]
    err = [[max(0.0, r["value"] - r["ci_low"]) for r in sel], [max(0.0, r["ci_high"] - r["value"]) for r in sel]]
    ax.bar(labels, vals, yerr=err, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
