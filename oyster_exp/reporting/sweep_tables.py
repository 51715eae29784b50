"""Sweep tables: the tidy rows behind `summary.csv`, and the Markdown tables of `summary.md`.

`arms_table` puts one arm per line (headline construction score and ASR with 95% CIs, training loss, LLM
calls, seconds); `paper_comparison` sets the Oyster-I headline rows beside ours where an arm trains one of
the paper's base models.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from oyster_exp.reporting.sweep_collect import HEADLINE_METRIC, Arm

# our model config name -> (the paper's base model row, {objective: the paper's trained row})
PAPER_MODELS: dict[str, tuple[str, dict[str, str]]] = {
    "qwen3_14b": ("Qwen3-14B", {"sft": "Oy1-Qwen3-14B-SFT", "orpo": "Oy1-Qwen3-14B-ORPO"}),
    "r1_distill_qwen_14b": ("DeepSeek-R1-Distill-Qwen-14B",
                            {"sft": "Oy1-DeepSeek-14B-SFT", "orpo": "Oy1-DeepSeek-14B-ORPO"}),
}


def counter(arm: Arm, key: str) -> Any:
    """A run counter from the arm's manifest (llm_calls, tokens_in, ...), None when the run did not record it."""
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
            if counter(a, k) is not None:
                out.append({**base, "model": "-", "benchmark": "run", "metric": k, "value": counter(a, k),
                            "ci_low": None, "ci_high": None, "n": None})
        out.append({**base, "model": "-", "benchmark": "run", "metric": "seconds",
                    "value": a.manifest.get("seconds"), "ci_low": None, "ci_high": None, "n": None})
    return out


def with_knobs(rows: list[dict[str, Any]], arms: list[Arm]) -> list[dict[str, Any]]:
    """Every row with its arm's knob columns (the overall and vs-baseline rows are built without them), so a
    filter on a knob's column in summary.csv selects every row of that arm."""
    knobs = {a.job: a.knobs for a in arms}
    keys = sorted({k for a in arms for k in a.knobs})
    return [{**r, **{k: r.get(k, knobs.get(r.get("arm"), {}).get(k, "")) for k in keys}} for r in rows]


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """`rows` as CSV; the columns are the union of the rows' keys in first-seen order (arms differ in knobs)."""
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


def asr_metric(arms: list[Arm]) -> str | None:
    """The first attack-success-rate metric (`asr[...]`) any arm reports: the table's and plots' ASR column."""
    names = sorted({str(r["metric"]) for a in arms for r in a.rows if str(r.get("metric", "")).startswith("asr[")})
    return names[0] if names else None


def arms_table(arms: list[Arm]) -> str:
    """One Markdown line per arm: status, headline metrics (trained and base), loss, LLM calls, seconds."""
    asr = asr_metric(arms)
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
        cells += [_num(a.train_metrics.get("train/loss"), 4), _num(counter(a, "llm_calls")),
                  _num(counter(a, "eval_llm_calls")), _num(a.manifest.get("seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_comparison(arms: list[Arm]) -> str:
    """The paper's headline rows beside ours, for arms whose base model and objective are the paper's."""
    from oyster_exp.reporting.paper import HEADLINE, HEADLINE_MODELS

    lines = ["| arm | model | ours: Constructive | paper: Constructive | ours: Jailbreak (100 − ASR) "
             "| paper: Jailbreak |",
             "|---|---|---|---|---|---|"]
    matched = False
    asr = asr_metric(arms)
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
            lines.append(f"| {a.job} | {who}: {paper_name} | {_with_ci(ours_c)} "
                         f"| {HEADLINE['Safety/Constructive'][i]} "
                         f"| {_num(jb)} | {HEADLINE['Safety/Jailbreak'][i]} |")
            matched = True
    if not matched:
        models = sorted({a.model_name or "?" for a in arms})
        return (f"_No arm matches a model of the paper's table (models here: {', '.join(models)}; the paper's are "
                f"{', '.join(PAPER_MODELS)}). Paper rows for orientation: "
                + "; ".join(f"{m} Constructive {HEADLINE['Safety/Constructive'][i]}, Jailbreak "
                            f"{HEADLINE['Safety/Jailbreak'][i]}" for i, m in enumerate(HEADLINE_MODELS)) + "._")
    return "\n".join(lines)


def overall_rows(arms: list[Arm], models: tuple[str, ...] = ("base", "trained")) -> list[dict[str, Any]]:
    """Per arm and model: each of the paper's headline columns the arm has and the two overalls, in the tidy
    shape of summary.csv (benchmark `overall`; the overall's `missing` names the columns it lacks)."""
    from oyster_exp.reporting.tables import overall_values

    out: list[dict[str, Any]] = []
    for a in arms:
        for m in models:
            if not any(r.get("model") == m for r in a.rows):
                continue
            for kind, v in overall_values(a.rows, m).items():
                base = {"arm": a.job, "label": a.label, "status": a.status, "model": m, "benchmark": "overall"}
                out += [{**base, "metric": col, "value": x} for col, x in v["columns"].items()]
                out.append({**base, "metric": f"{kind} overall",
                            "value": None if math.isnan(v["overall"]) else v["overall"],
                            "missing": ", ".join(v["missing"])})
    return out


def overall_by_arm(arms: list[Arm], models: tuple[str, ...] = ("base", "trained")) -> str:
    """One line per (arm, model): the paper's Safety and General columns, each overall naming what it lacks."""
    from oyster_exp.reporting.tables import GENERAL_COLUMNS, SAFETY_COLUMNS, overall_cell, overall_values

    head = ["arm", "label", "model", *SAFETY_COLUMNS, "Safety overall", *GENERAL_COLUMNS, "General overall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        for m in models:
            if not any(r.get("model") == m for r in a.rows):
                continue
            v = overall_values(a.rows, m)
            cells = [f"arm {a.job}", f"`{a.label}`", m]
            for kind in ("Safety", "General"):
                cols = SAFETY_COLUMNS if kind == "Safety" else GENERAL_COLUMNS
                cells += [_num(v[kind]["columns"].get(c)) for c in cols]
                cells.append(overall_cell(v[kind]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else "_(no arm has evaluation results)_"
