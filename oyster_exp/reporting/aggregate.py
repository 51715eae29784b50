"""Aggregate runs into one report: a tidy CSV, a Markdown table and plots, for a run or a whole sweep.

Input is whatever the runs left on disk (`sweep_collect`), so it works after the fact
(`oyster-exp-report DIR`) as well as from the `on_multirun_end` callback. Output goes into the directory
given: `summary.csv` and the tables of `summary.md` (`sweep_tables`; each arm against the baseline arm with a
paired CI: `sweep_paired`), `plots/*.png` (`sweep_plots`).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from oyster_exp.reporting.sweep_collect import Arm, collect
from oyster_exp.reporting.sweep_paired import arm_deltas, baseline_rule, delta_rows, vs_baseline_table
from oyster_exp.reporting.sweep_plots import write_plots
from oyster_exp.reporting.sweep_tables import (
    arms_table,
    overall_by_arm,
    overall_rows,
    paper_comparison,
    tidy_rows,
    with_knobs,
    write_csv,
)


def _resamples(arms: list[Arm]) -> int:
    """The arms' `eval.bootstrap_resamples` (the first saved config), 1000 without one."""
    for a in arms:
        if a.cfg is not None:
            return int(OmegaConf.select(a.cfg, "eval.bootstrap_resamples", default=1000) or 1000)
    return 1000


def write_sweep_report(path: Path) -> Path:
    """Write summary.csv, summary.md and plots/ into `path` (a sweep or a run dir); return summary.md."""
    path = Path(path)
    arms = collect(path)
    deltas, baseline_note = arm_deltas(arms, baseline_rule(arms), resamples=_resamples(arms))
    csv_path = write_csv(with_knobs(tidy_rows(arms) + overall_rows(arms) + delta_rows(deltas), arms),
                         path / "summary.csv")
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
    if len(arms) > 1:
        md += ["## Each arm against the baseline arm (paired)", "",
               f"Baseline: {baseline_note}. Δ = arm − baseline on the items both have (the trained models' "
               "evaluation items; the data engine's queries: reward and risk of the chosen trace entry, pair "
               "margin), with a 95% paired bootstrap CI and the shared n; **bold** where the CI excludes 0.", "",
               vs_baseline_table(deltas, arms), ""]
    md += ["## Safety overall and General overall (the paper's headline columns)", "", overall_by_arm(arms), "",
           "## Plots", "", *(f"![{p.stem}](plots/{p.name})" for p in plots), "",
           "## Beside the paper (Oyster-I headline table)", "", paper_comparison(arms), ""]
    out = path / "summary.md"
    out.write_text("\n".join(md))
    return out
