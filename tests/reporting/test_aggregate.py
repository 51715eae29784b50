"""Sweep aggregation from what runs leave on disk: tidy CSV, Markdown table, plots, the paper beside ours."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from oyster_exp.reporting.aggregate import collect, write_sweep_report
from oyster_exp.reporting.sweep_ledger import COMMAND_OVERRIDES, append_ledger


def _row(model: str, metric: str, value: float, lo: float = math.nan, hi: float = math.nan,
         bench: str = "construction") -> dict:
    return {"model": model, "benchmark": bench, "split": "heldout", "metric": metric, "value": value, "n": 4,
            "ci_low": lo, "ci_high": hi}


def _eval(model: str, i: int, sat: float, risk: float) -> dict:
    return {"id": f"{model}/construction/q{i}", "model": model, "benchmark": "construction", "item_id": f"q{i}",
            "prompt": "p", "response": "r", "satisfaction": sat, "risk": risk}


def _arm(sweep: Path, job: int, overrides: list[str], status: str, headline: float | None, model: str = "tiny_random",
         objective: str = "orpo", llm_calls: int = 0) -> Path:
    d = sweep / str(job)
    (d / ".hydra").mkdir(parents=True)
    (d / "artifacts").mkdir()
    OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"model": {"name": model}, "objective": {"name": objective},
                                     "eval": {"construction": {"betas": [0.5, 1.0, 2.0], "alpha": 1.0}}}),
                   d / ".hydra" / "config.yaml")
    manifest = {"status": status if status == "completed" else "failed: RuntimeError: boom", "seconds": 3.5,
                "counters": {"llm_calls": llm_calls, "eval_llm_calls": 12}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    if headline is not None:
        (d / "results.json").write_text(json.dumps([
            _row("base", "constructive@beta=2", 10.0, 5.0, 15.0), _row("trained", "constructive@beta=2", headline,
                                                                     headline - 4, headline + 4),
            _row("trained", "asr[en-L1]", 25.0, 10.0, 40.0, bench="strata_sword"),
            _row("base", "asr[en-L1]", 50.0, 30.0, 70.0, bench="strata_sword")]))
        (d / "artifacts" / "evaluate.jsonl").write_text("\n".join(json.dumps(_eval(m, i, 0.5 + 0.1 * i, 0.1))
                                                                  for m in ("base", "trained") for i in range(3)))
        (d / "artifacts" / "train.jsonl").write_text(json.dumps({"id": "model", "objective": objective, "steps": 2,
                                                                 "model_dir": "files/model",
                                                                 "metrics": {"train/loss": 1.0 + job}}))
        (d / "csv" / "version_0").mkdir(parents=True)
        (d / "csv" / "version_0" / "metrics.csv").write_text(
            "epoch,step,train/loss,train/nll\n0,0,2.0,1.5\n0,1,1.5,1.2\n0,2,1.0,0.9\n")
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    s = tmp_path / "multirun" / "2026-01-01" / "10-00-00_orpo_beta"
    s.mkdir(parents=True)
    common = ["+sweep=orpo_beta", "debug=fast"]
    OmegaConf.save(OmegaConf.create(common), s / COMMAND_OVERRIDES)
    (s / "multirun.yaml").write_text("hydra: {}\n")
    for job, (beta, status, head, calls) in enumerate([("0.05", "completed", 20.0, 40), ("0.1", "failed", None, 0),
                                                       ("0.2", "completed", 30.0, 0)]):
        _arm(s, job, [f"objective.beta={beta}", *common], status, head, llm_calls=calls)
        append_ledger(s, {"job": job, "label": f"objective.beta={beta}", "status": status,
                          "run_dir": str(s / str(job)),
                          "reason": "RuntimeError: boom" if status == "failed" else None})
    return s


def test_sweep_report_has_every_arm_with_status_and_metrics(sweep: Path) -> None:
    md = write_sweep_report(sweep).read_text()
    rows = [x for x in md.splitlines() if x.startswith("| ") and x[2].isdigit()]
    assert len(rows) == 3
    assert "`objective.beta=0.05`" in rows[0] and "completed" in rows[0] and "20.00 [16.00, 24.00]" in rows[0]
    assert "failed" in rows[1] and "| 40 |" in rows[0] and "| 0 |" in rows[2]
    assert "- arm 1 `objective.beta=0.1`: RuntimeError: boom" in md
    tidy = list(csv.DictReader((sweep / "summary.csv").open()))
    trained = {r["objective.beta"]: float(r["value"]) for r in tidy
               if r["model"] == "trained" and r["metric"] == "constructive@beta=2"}
    assert trained == {"0.05": 20.0, "0.2": 30.0}
    assert {r["status"] for r in tidy if r["arm"] == "1"} == {"failed"}
    assert {"train/loss", "llm_calls", "eval_llm_calls", "seconds"} <= {r["metric"] for r in tidy}


def test_sweep_report_draws_curves_bars_knob_and_training_plots(sweep: Path) -> None:
    write_sweep_report(sweep)
    names = {p.name for p in (sweep / "plots").glob("*.png")}
    assert names == {"construction_curves.png", "ablation_constructive.png", "ablation_asr.png",
                     "constructive_vs_objective.beta.png", "training_curves.png"}
    arms = collect(sweep)
    assert set(arms[0].curves) == {"base", "trained"} and arms[0].train_curve["train/loss"][-1] == (2, 1.0)
    assert arms[1].curves == {}                                    # the failed arm has nothing to draw


def test_paper_rows_stand_beside_ours_when_the_model_matches(tmp_path: Path) -> None:
    s = tmp_path / "sw"
    s.mkdir()
    _arm(s, 0, ["model=qwen3_14b"], "completed", 40.0, model="qwen3_14b", objective="orpo")
    md = write_sweep_report(s).read_text()
    paper = md.split("## Beside the paper")[1]
    assert "trained: Oy1-Qwen3-14B-ORPO | 40.00 [36.00, 44.00] | 56.27 | 75.00 | 92.54" in paper
    assert "base: Qwen3-14B | 10.00 [5.00, 15.00] | 47.54 | 50.00 | 76.31" in paper


def test_single_run_dir_and_bad_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _arm(tmp_path / "runs", 7, ["objective.beta=0.3"], "completed", 12.0)
    md = write_sweep_report(run).read_text()
    assert "1 arm(s): 1 completed." in md and (run / "summary.csv").exists()
    from oyster_exp.run.report_cli import main

    assert main([str(run)]) == 0
    assert main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
