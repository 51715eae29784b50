"""Read a sweep (or one run) back from disk: one `Arm` per run directory, with what the reports need.

Per arm: `manifest.json` (status, LLM calls), `results.json` (metrics with 95% CIs),
`artifacts/evaluate.jsonl` (construction curves; the records, kept for paired Δs between arms),
`artifacts/train.jsonl` (final training metrics), `csv/*/metrics.csv` (per-step training curves, when the
CSV logger ran), `.hydra/config.yaml` and `.hydra/overrides.yaml`
(what the arm changed); for a sweep also its `ledger.jsonl`, whose entry for an arm wins over the
arm's own manifest (it records failures the manifest may not have reached).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

HEADLINE_METRIC = "constructive@beta=2"   # the one metric a sweep is ranked by in tables and plots


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
    evals: list[Any] = field(default_factory=list)   # the arm's EvalRecords (artifacts/evaluate.jsonl)
    cfg: Any = None                                   # its saved config (.hydra/config.yaml), None when absent

    def metric(self, model: str, metric: str) -> dict[str, Any] | None:
        """The result row of `model` ("base", "trained") for `metric`, or None when the arm has none."""
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
    """A Hydra multirun dir: its `multirun.yaml`, or numbered job dirs (a sweep killed before Hydra wrote it)."""
    return (path / "multirun.yaml").exists() or any(p.name.isdigit() and p.is_dir() for p in path.iterdir())


def arm_dirs(path: Path) -> list[Path]:
    """The run dirs under `path` in job order, or `path` itself when it is one run; FileNotFoundError otherwise."""
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


def configured_benchmarks(arm: Arm) -> dict[str, Any] | None:
    """The arm's configured benchmarks (None: their defaults), for its summaries and paired Δs."""
    return _benchmarks(arm.cfg)


def _evals(run: Path) -> list[Any]:
    from oyster_exp.csa.records import EvalRecord

    return [EvalRecord.model_validate(r) for r in _records(run / "artifacts" / "evaluate.jsonl")]


def _curves(evals: list[Any], cfg: Any) -> dict[str, dict[float, float]]:
    from oyster_exp.evaluation.summary import summarise

    if not evals:
        return {}
    _, curves = summarise(evals, _benchmarks(cfg), resamples=10)
    # summarise names a curve "model (split)" unless the split is the held-out seed split; an arm draws one
    # curve per model, so a lone split's curve goes under the plain model name
    out = dict(curves)
    for key in curves:
        model = key.split(" (", 1)[0]
        if model != key and model not in out:
            out[model] = out.pop(key)
    return out


def read_arm(run: Path, ledger: dict[str, dict[str, Any]], sweep: Path | None) -> Arm:
    """One arm from its run dir; `ledger` maps job dir names to their ledger entry, `sweep` labels the arm."""
    from oyster_exp.reporting.sweep_ledger import arm_label

    manifest = _json(run / "manifest.json", {})
    entry = ledger.get(run.name, {})
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = list(OmegaConf.load(overrides_file)) if overrides_file.exists() else list(entry.get("overrides", []))
    label = entry.get("label") or (arm_label([str(o) for o in overrides], sweep) if sweep else "run")
    status = str(entry.get("status") or manifest.get("status") or "missing")
    reason = entry.get("reason") or manifest.get("reason")
    if status.startswith("failed:"):
        status, reason = "failed", reason or status[len("failed:"):].strip()
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml") if (run / ".hydra" / "config.yaml").exists() else None
    train = _records(run / "artifacts" / "train.jsonl")
    evals = _evals(run)
    return Arm(
        dir=run, job=run.name, label=label, status=status, reason=reason, knobs=_parse_knobs(label),
        manifest=manifest, rows=_json(run / "results.json", []), curves=_curves(evals, cfg), evals=evals, cfg=cfg,
        train_metrics=dict(train[0].get("metrics", {})) if train else {}, train_curve=_train_curve(run),
        model_name=str(OmegaConf.select(cfg, "model.name", default="") or "") if cfg is not None else "",
        objective=str(OmegaConf.select(cfg, "objective.name", default="") or "") if cfg is not None else "",
    )


def collect(path: Path) -> list[Arm]:
    """Every arm of the sweep (or the one run) at `path`, in job order."""
    from oyster_exp.reporting.sweep_ledger import read_ledger

    path = Path(path)
    runs = arm_dirs(path)
    sweep = path if runs and runs[0] != path else None
    ledger: dict[str, dict[str, Any]] = {}
    if sweep is not None:
        for e in read_ledger(sweep):   # the last entry of a job wins
            ledger[Path(e.get("run_dir", str(e.get("job")))).name] = e
    return [read_arm(r, ledger, sweep) for r in runs]
