"""Aggregate runs into one report: a tidy CSV, a Markdown table and plots, for a run or a whole sweep.

Input is whatever the runs left on disk, so it works after the fact (`oyster-exp-report DIR`) as well
as from the `on_multirun_end` callback: per arm `manifest.json` (status, LLM calls), `results.json`
(metrics with 95% CIs), `artifacts/evaluate.jsonl` (construction curves), `artifacts/train.jsonl`
(final training metrics), `csv/*/metrics.csv` (per-step training curves, when the CSV logger ran) and
`.hydra/overrides.yaml` (what the arm changed). Output goes into the directory given: `summary.csv`,
`summary.md`, `plots/*.png`.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

HEADLINE_METRIC = "constructive@beta=2"
# our model config name -> (the paper's base model row, {objective: the paper's trained row})
PAPER_MODELS: dict[str, tuple[str, dict[str, str]]] = {
    "qwen3_14b": ("Qwen3-14B", {"sft": "Oy1-Qwen3-14B-SFT", "orpo": "Oy1-Qwen3-14B-ORPO"}),
    "r1_distill_qwen_14b": ("DeepSeek-R1-Distill-Qwen-14B",
                            {"sft": "Oy1-DeepSeek-14B-SFT", "orpo": "Oy1-DeepSeek-14B-ORPO"}),
}


@dataclass
class Arm:
    """One run of a sweep (or a lone run), as read back from its directory."""
    dir: Path
    job: str
    label: str
    status: str
    reason: str | None
    knobs: dict[str, str]
    manifest: dict[str, Any]
    rows: list[dict[str, Any]]
    curves: dict[str, dict[float, float]] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)
    train_curve: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    model_name: str = ""
    objective: str = ""

    def metric(self, model: str, metric: str) -> dict[str, Any] | None:
        for r in self.rows:
            if r.get("model") == model and r.get("metric") == metric:
                return r
        return None


def _json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text()) if path.exists() else default
    except json.JSONDecodeError:
        return default


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def is_sweep_dir(path: Path) -> bool:
    return (path / "multirun.yaml").exists() or any(p.name.isdigit() and p.is_dir() for p in path.iterdir())


def arm_dirs(path: Path) -> list[Path]:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a directory")
    if (path / "manifest.json").exists() and not (path / "multirun.yaml").exists():
        return [path]
    if is_sweep_dir(path):
        return sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    raise FileNotFoundError(f"{path}: neither a run directory (manifest.json) nor a sweep directory (multirun.yaml)")


def _parse_knobs(label: str) -> dict[str, str]:
    out = {}
    for tok in label.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def _train_curve(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-step `train/*` series from Lightning's CSV logger (`csv/version_*/metrics.csv`)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(run.glob("csv/*/metrics.csv"))[-1:]:
        with f.open() as fh:
            for row in csv.DictReader(fh):
                step = row.get("step")
                for k, v in row.items():
                    if k.startswith("train/") and v not in (None, "") and step not in (None, ""):
                        series.setdefault(k, []).append((int(float(step)), float(v)))
    return series


def _benchmarks(cfg: Any) -> dict[str, Any] | None:
    """The arm's configured benchmarks (its curve's betas and alpha); None: the benchmarks' defaults
    (an arm saved before benchmarks were components, or a config that no longer resolves)."""
    from oyster_exp.evaluation.benchmarks import configured

    ev = OmegaConf.select(cfg, "eval", default=None) if cfg is not None else None
    if ev is None:
        return None
    try:
        return configured(ev)
    except Exception:                      # a stale arm still aggregates, with default betas
        return None


def _curves(run: Path) -> dict[str, dict[float, float]]:
    from oyster_exp.csa.records import EvalRecord
    from oyster_exp.evaluation.summary import summarise

    evals = [EvalRecord.model_validate(r) for r in _records(run / "artifacts" / "evaluate.jsonl")]
    if not evals:
        return {}
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml") if (run / ".hydra" / "config.yaml").exists() else None
    _, curves = summarise(evals, _benchmarks(cfg), resamples=10)
    # summarise names a curve "model (split)" unless the split is the held-out seed set; an arm draws one
    # curve per model, so a lone split's curve goes under the plain model name
    out = dict(curves)
    for key in curves:
        model = key.split(" (", 1)[0]
        if model != key and model not in out:
            out[model] = out.pop(key)
    return out


def read_arm(run: Path, ledger: dict[str, dict[str, Any]], sweep: Path | None) -> Arm:
    from oyster_exp.reporting.sweep_ledger import arm_label

    manifest = _json(run / "manifest.json", {})
    entry = ledger.get(run.name, {})
    overrides = list(OmegaConf.load(run / ".hydra" / "overrides.yaml")) if (run / ".hydra" / "overrides.yaml").exists() \
        else list(entry.get("overrides", []))
    label = entry.get("label") or (arm_label([str(o) for o in overrides], sweep) if sweep else "run")
    status = str(entry.get("status") or manifest.get("status") or "missing")
    reason = entry.get("reason") or manifest.get("reason")
    if status.startswith("failed:"):
        status, reason = "failed", reason or status[len("failed:"):].strip()
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml") if (run / ".hydra" / "config.yaml").exists() else None
    train = _records(run / "artifacts" / "train.jsonl")
    return Arm(
        dir=run, job=run.name, label=label, status=status, reason=reason, knobs=_parse_knobs(label),
        manifest=manifest, rows=_json(run / "results.json", []), curves=_curves(run),
        train_metrics=dict(train[0].get("metrics", {})) if train else {}, train_curve=_train_curve(run),
        model_name=str(OmegaConf.select(cfg, "model.name", default="") or "") if cfg is not None else "",
        objective=str(OmegaConf.select(cfg, "objective.name", default="") or "") if cfg is not None else "",
    )


def collect(path: Path) -> list[Arm]:
    from oyster_exp.reporting.sweep_ledger import read_ledger

    path = Path(path)
    runs = arm_dirs(path)
    sweep = path if runs and runs[0] != path else None
    ledger: dict[str, dict[str, Any]] = {}
    if sweep is not None:
        for e in read_ledger(sweep):   # the last entry of a job wins
            ledger[Path(e.get("run_dir", str(e.get("job")))).name] = e
    return [read_arm(r, ledger, sweep) for r in runs]


def _counter(arm: Arm, key: str) -> Any:
    return arm.manifest.get("counters", {}).get(key)


def tidy_rows(arms: list[Arm]) -> list[dict[str, Any]]:
    """One row per (arm, model, benchmark, metric): the shape pandas and seaborn want."""
    knob_keys = sorted({k for a in arms for k in a.knobs})
    out: list[dict[str, Any]] = []
    for a in arms:
        base = {"arm": a.job, "label": a.label, "status": a.status, **{k: a.knobs.get(k, "") for k in knob_keys}}
        for r in a.rows:
            out.append({**base, "model": r.get("model"), "benchmark": r.get("benchmark"), "metric": r.get("metric"),
                        "value": r.get("value"), "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"),
                        "n": r.get("n")})
        for k, v in sorted(a.train_metrics.items()):
            out.append({**base, "model": "trained", "benchmark": "train", "metric": k, "value": v, "ci_low": None,
                        "ci_high": None, "n": None})
        for k in ("llm_calls", "eval_llm_calls", "llm_cache_hits", "tokens_in", "tokens_out"):
            if _counter(a, k) is not None:
                out.append({**base, "model": "-", "benchmark": "run", "metric": k, "value": _counter(a, k),
                            "ci_low": None, "ci_high": None, "n": None})
        out.append({**base, "model": "-", "benchmark": "run", "metric": "seconds",
                    "value": a.manifest.get("seconds"), "ci_low": None, "ci_high": None, "n": None})
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols or ["arm"])
        w.writeheader()
        w.writerows(rows)
    return path


def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _with_ci(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    lo, hi = row.get("ci_low"), row.get("ci_high")
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return _num(row.get("value"))
    return f"{_num(row.get('value'))} [{_num(lo)}, {_num(hi)}]"


def _asr_metric(arms: list[Arm]) -> str | None:
    names = sorted({str(r["metric"]) for a in arms for r in a.rows if str(r.get("metric", "")).startswith("asr[")})
    return names[0] if names else None


def arms_table(arms: list[Arm]) -> str:
    asr = _asr_metric(arms)
    head = ["arm", "label", "status", f"trained {HEADLINE_METRIC} [95% CI]", f"base {HEADLINE_METRIC}"]
    if asr:
        head += [f"trained {asr}", f"base {asr}"]
    head += ["train/loss", "llm_calls", "eval_llm_calls", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        cells = [a.job, f"`{a.label}`", a.status, _with_ci(a.metric("trained", HEADLINE_METRIC)),
                 _with_ci(a.metric("base", HEADLINE_METRIC))]
        if asr:
            cells += [_with_ci(a.metric("trained", asr)), _with_ci(a.metric("base", asr))]
        cells += [_num(a.train_metrics.get("train/loss"), 4), _num(_counter(a, "llm_calls")),
                  _num(_counter(a, "eval_llm_calls")), _num(a.manifest.get("seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_comparison(arms: list[Arm]) -> str:
    """The paper's headline rows beside ours, for arms whose base model and objective are the paper's."""
    from oyster_exp.reporting.paper import HEADLINE, HEADLINE_MODELS

    lines = ["| arm | model | ours: Constructive | paper: Constructive | ours: Jailbreak (100 − ASR) | paper: Jailbreak |",
             "|---|---|---|---|---|---|"]
    matched = False
    asr = _asr_metric(arms)
    for a in arms:
        if a.model_name not in PAPER_MODELS:
            continue
        base_name, trained = PAPER_MODELS[a.model_name]
        for who, paper_name in (("base", base_name), ("trained", trained.get(a.objective))):
            if paper_name is None or paper_name not in HEADLINE_MODELS:
                continue
            i = HEADLINE_MODELS.index(paper_name)
            ours_c = a.metric(who, HEADLINE_METRIC)
            ours_a = a.metric(who, asr) if asr else None
            jb = 100.0 - float(ours_a["value"]) if ours_a and ours_a.get("value") is not None else None
            lines.append(f"| {a.job} | {who}: {paper_name} | {_with_ci(ours_c)} | {HEADLINE['Safety/Constructive'][i]} "
                         f"| {_num(jb)} | {HEADLINE['Safety/Jailbreak'][i]} |")
            matched = True
    if not matched:
        models = sorted({a.model_name or "?" for a in arms})
        return (f"_No arm matches a model of the paper's table (models here: {', '.join(models)}; the paper's are "
                f"{', '.join(PAPER_MODELS)}). Paper rows for orientation: "
                + "; ".join(f"{m} Constructive {HEADLINE['Safety/Constructive'][i]}, Jailbreak "
                            f"{HEADLINE['Safety/Jailbreak'][i]}" for i, m in enumerate(HEADLINE_MODELS)) + "._")
    return "\n".join(lines)


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
    from oyster_exp.reporting.plots import plot_bars_with_ci, plot_construction_curves

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
    for metric, name in ((HEADLINE_METRIC, "ablation_constructive.png"), (_asr_metric(done), "ablation_asr.png")):
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
    from oyster_exp.reporting.plots import _figure, _save

    pts = []
    for a in arms:
        r = a.metric("trained", HEADLINE_METRIC)
        if r is not None and r.get("value") is not None:
            pts.append((float(a.knobs[knob]), float(r["value"]), r.get("ci_low"), r.get("ci_high")))
    pts.sort()
    fig = _figure((5.5, 3.8))
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
    return _save(fig, path)


def _plot_training_curves(arms: list[Arm], path: Path) -> Path:
    from oyster_exp.reporting.plots import _figure, _save

    fig = _figure((6.5, 4.0))
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
    return _save(fig, path)


def write_sweep_report(path: Path) -> Path:
    """Write summary.csv, summary.md and plots/ into `path` (a sweep or a run dir); return summary.md."""
    path = Path(path)
    arms = collect(path)
    csv_path = write_csv(tidy_rows(arms), path / "summary.csv")
    plots = write_plots(arms, path / "plots")
    failed = [a for a in arms if a.status == "failed"]
    md = [f"# Sweep summary: {path.name}", "",
          f"{len(arms)} arm(s): " + ", ".join(f"{sum(1 for a in arms if a.status == s)} {s}"
                                               for s in ("completed", "skipped", "failed")
                                               if any(a.status == s for a in arms)) + ".",
          "`llm_calls` counts the data-engine stages (generate/assess/extract/optimize; 0 when served by the stage "
          "cache), `eval_llm_calls` the evaluation of each arm's own model. Tidy rows: "
          f"[`{csv_path.name}`]({csv_path.name}).", "", arms_table(arms), ""]
    if failed:
        md += ["## Failed arms", "", *(f"- arm {a.job} `{a.label}`: {a.reason}" for a in failed), ""]
    md += ["## Plots", "", *(f"![{p.stem}](plots/{p.name})" for p in plots), "",
           "## Beside the paper (Oyster-I headline table)", "", paper_comparison(arms), ""]
    out = path / "summary.md"
    out.write_text("\n".join(md))
    return out
