"""Failures are not finished work: transiently failed records leave their stage PARTIAL, a rerun redoes
exactly those, a failure share over `failure_policy.max_failed_share` stops the run (exit 1), and a
malformed user file is a one-line data error (exit 2).

The runner tests drive the real `run_pipeline` with a small stage whose calls fail on cue; the CLI tests run
`oyster-exp` against a port where nothing listens, then against the loopback server started on that port.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from oyster_exp.core.errors import StageError
from oyster_exp.csa.records import Record, transient_failure
from oyster_exp.pipeline.artifacts import CacheEntry, Journal
from oyster_exp.pipeline.runner import RunContext, Stage, partial_stages, run_pipeline

ROOT = Path(__file__).resolve().parents[2]


class Item(Record):
    value: str = ""


class FlakyStage(Stage):
    """Ten records; the ids in `failing` fail transiently while their attempt number is in `fail_on`."""

    name = "flaky"
    record_type = Item

    def __init__(self, failing: set[int], fail_on: set[int] | None = None, permanent: set[int] | None = None):
        self.failing, self.fail_on, self.permanent = failing, fail_on or {1}, permanent or set()
        self.attempts: Counter[str] = Counter()

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        for i in range(10):
            rid = f"q{i}"
            if rid in journal:
                continue
            self.attempts[rid] += 1
            if i in self.permanent:
                journal.append(Item(id=rid, failure="no_improvement: the data says so"))
            elif i in self.failing and self.attempts[rid] in self.fail_on:
                journal.append(Item(id=rid, **transient_failure(f"actor: after 5 attempts: HTTP 503 ({rid})")))
            else:
                journal.append(Item(id=rid, value=f"answer {i}"))


class Downstream(Stage):
    name = "down"
    record_type = Item
    inputs = ("flaky",)

    def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
        for r in inputs["flaky"]:
            if r.id not in journal:
                journal.append(Item(id=r.id, value=r.value.upper()) if not r.failure else
                               Item(id=r.id, failure=f"upstream: {r.failure}"))


def _ctx(tmp: Path, stage: Any = "all", share: float = 0.2) -> RunContext:
    cfg = OmegaConf.create({"stage": stage, "stage_cache": True, "failure_policy": {"max_failed_share": share}})
    return RunContext(cfg=cfg, run_dir=tmp / "run", cache_root=tmp / "cache")


def test_a_rerun_redoes_exactly_the_transient_failures_and_keeps_every_success(tmp_path: Path) -> None:
    flaky = FlakyStage(failing={3, 7}, permanent={5})
    first = _ctx(tmp_path)
    run_pipeline(first, [flaky, Downstream()])
    entry = first.entries["flaky"]
    assert entry.partial and not entry.complete
    assert json.loads((entry.dir / "PARTIAL").read_text())["transient_failures"] == 2
    assert first.stats["flaky"]["transient_failures"] == 2 and first.stats["flaky"]["failures"] == 3
    assert partial_stages(first) == ["stage flaky: 2/10 records failed "
                                     "(first: actor: after 5 attempts: HTTP 503 (q3))"]
    # the stage after a partial one runs on what it produced; its "upstream" failures are permanent
    assert first.entries["down"].complete and first.stats["down"]["transient_failures"] == 0
    order = [r.id for r in first.outputs["flaky"]]

    second = _ctx(tmp_path)
    run_pipeline(second, [flaky, Downstream()])
    assert second.stats["flaky"]["cache"] == "retried" and second.stats["flaky"]["retried_records"] == 2
    assert entry.complete and not entry.partial and not entry.order_path.exists()
    assert flaky.attempts == {**{f"q{i}": 1 for i in range(10)}, "q3": 2, "q7": 2}, "a success was recomputed"
    records = second.outputs["flaky"]
    assert [r.id for r in records] == order, "the first run's record order is kept"
    lines = entry.records_path.read_text().splitlines()
    assert len(lines) == len({json.loads(x)["id"] for x in lines}) == 10, "a record was written twice"
    assert [r.failure for r in records if r.failure] == ["no_improvement: the data says so"]
    assert not partial_stages(second)
    # the redone records changed the downstream stage's input: it is recomputed, with the new values
    assert second.stats["down"]["cache"] == "miss"
    assert {r.id: r.value for r in second.outputs["down"]}["q3"] == "ANSWER 3"

    third = _ctx(tmp_path)
    run_pipeline(third, [flaky, Downstream()])
    assert third.stats["flaky"]["cache"] == "hit" and third.stats["down"]["cache"] == "hit"
    assert sum(flaky.attempts.values()) == 12


def test_records_failing_again_keep_the_stage_partial_and_a_partial_input_serves_unselected(tmp_path: Path) -> None:
    flaky = FlakyStage(failing={2}, fail_on={1, 2})
    run_pipeline(_ctx(tmp_path), [flaky])
    again = _ctx(tmp_path)
    run_pipeline(again, [flaky])
    assert again.stats["flaky"]["cache"] == "retried" and again.entries["flaky"].partial
    assert flaky.attempts["q2"] == 2 and flaky.attempts["q1"] == 1
    # only the downstream stage selected: the partial entry is its input as is, not retried
    only_down = _ctx(tmp_path, stage=["down"])
    run_pipeline(only_down, [flaky, Downstream()])
    assert only_down.stats["flaky"]["cache"] == "partial" and flaky.attempts["q2"] == 2
    assert partial_stages(only_down) and only_down.entries["down"].complete


def test_a_killed_retry_resumes_and_still_restores_the_order(tmp_path: Path) -> None:
    flaky = FlakyStage(failing={0, 1})
    run_pipeline(_ctx(tmp_path), [flaky])

    class Killed(FlakyStage):
        def run(self, ctx: RunContext, inputs: dict[str, list[Any]], journal: Journal, entry: CacheEntry) -> None:
            journal.append(Item(id="q0", value="answer 0"))
            raise KeyboardInterrupt   # killed after redoing one of the two

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_ctx(tmp_path), [Killed(set())])
    resumed = _ctx(tmp_path)
    run_pipeline(resumed, [flaky])
    assert resumed.stats["flaky"]["cache"] == "resumed" and resumed.entries["flaky"].complete
    assert [r.id for r in resumed.outputs["flaky"]] == [f"q{i}" for i in range(10)]
    assert flaky.attempts["q1"] == 2 and flaky.attempts["q0"] == 1


@pytest.mark.parametrize(("failing", "share", "stops"), [
    ({1, 2, 3}, 0.2, True),           # 3/10 > 0.2
    ({1, 2}, 0.2, False),             # 2/10 is not over 0.2: the run goes on, partial
    ({1, 2, 3}, 0.5, False),
    (set(range(10)), 1.0, True),      # all failed always stops the run, whatever the share
])
def test_the_failure_threshold_stops_the_run_with_one_line(tmp_path: Path, failing: set[int], share: float,
                                                           stops: bool) -> None:
    ctx = _ctx(tmp_path, share=share)
    if not stops:
        run_pipeline(ctx, [FlakyStage(failing), Downstream()])
        assert ctx.entries["down"].complete and partial_stages(ctx)
        return
    with pytest.raises(StageError) as e:
        run_pipeline(ctx, [FlakyStage(failing), Downstream()])
    msg = str(e.value)
    first = min(failing)
    assert msg.startswith(f"stage flaky: {len(failing)}/10 records failed (first: actor: after 5 attempts: "
                          f"HTTP 503 (q{first}))")
    assert "\n" not in msg and "down" not in ctx.entries, "the run stopped at the failing stage"
    assert ctx.entries["flaky"].partial, "the failed records stay marked for the rerun"
    assert ctx.stats["flaky"]["transient_failures"] == len(failing)


# -- through the CLI ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(tmp: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OYSTER_EXP_OUTPUTS": str(tmp / "outputs"), "WANDB_MODE": "disabled"}
    flags = [o for o in overrides if o.startswith("-")]   # -m goes before the overrides
    return subprocess.run([sys.executable, "-m", "oyster_exp.run.cli", *flags, "print_config=false", "logger=none",
                           *(o for o in overrides if o not in flags)], capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=timeout)


def _manifest(tmp: Path) -> dict[str, Any]:
    run = sorted((tmp / "outputs" / "runs").glob("*/*"))[-1]
    return json.loads((run / "manifest.json").read_text())


def _stderr_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.startswith("oyster-exp:")]


def test_a_dead_endpoint_stops_the_run_at_once_with_one_line_naming_role_and_url(tmp_path: Path) -> None:
    """The probe before the first remote call: no retries against a closed port, exit 2, one line, no key."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.monotonic()
    dead = _cli(tmp_path, "llm=openai", f"llm.base_url={url}", timeout=180)
    wall = time.monotonic() - t0
    assert dead.returncode == 2, dead.stdout[-2000:] + dead.stderr[-2000:]
    (line,) = _stderr_lines(dead)
    assert line == (f"oyster-exp: endpoint error: llm.roles.actor: openai_compat endpoint {url} "
                    "(model 'served-model'): unreachable (ConnectError); no call was made"), line
    assert "Traceback" not in dead.stderr + dead.stdout
    # from the first stage that calls the endpoint to the exit: the probe, not 5 attempts x 3 re-asks per call
    started = re.search(r"\[([\d-]+ [\d:,]+)\]\[oyster_exp.pipeline.runner\]\[INFO\] stage generate running",
                        dead.stdout + dead.stderr)
    assert started, dead.stdout[-2000:]
    began = datetime.datetime.strptime(started.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert time.time() - began < 30, f"{time.time() - began:.1f} s after generate started (wall {wall:.1f} s)"
    m = _manifest(tmp_path)
    assert m["status"] == "failed" and "unreachable" in m["reason"]


def test_failed_calls_stop_the_run_and_the_same_command_redoes_the_work_once_the_server_is_well(
        tmp_path: Path) -> None:
    from oyster_exp.testing.loopback import Faults, serve

    port = _free_port()
    cmd = ["llm=openai", f"llm.base_url=http://127.0.0.1:{port}/v1", "model=tiny_random", "debug=fast",
           "llm.max_retries=0", *(f"llm.roles.{r}.client.max_attempts=2" for r in
                                  ("actor", "user_judge", "safety_judge", "editor"))]
    with serve(port=port, faults=Faults(rate_500=1.0)) as (_, state):   # up (the probe passes), every call fails
        sick = _cli(tmp_path, *cmd)
        assert state.requests == 8, "4 records x 2 attempts: one budget per call"
    assert sick.returncode == 1, sick.stdout[-2000:] + sick.stderr[-2000:]
    (line,) = _stderr_lines(sick)
    assert line.startswith("oyster-exp: stage generate: 4/4 records failed (first: actor: after 2 attempts: "
                           "HTTP 500)"), line
    assert "Traceback" not in sick.stderr and "run complete" not in sick.stdout
    m = _manifest(tmp_path)
    assert m["status"] == "failed" and m["reason"].startswith("stage generate: 4/4")
    assert m["counters"]["transient_failures"] == {"generate": 4}
    (first_run,) = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    failed_ids = [json.loads(x)["id"] for x in (first_run / "artifacts" / "generate.jsonl").read_text().splitlines()]

    with serve(port=port) as (_, state):
        live = _cli(tmp_path, *cmd)
        assert state.requests > 0
    assert live.returncode == 0, live.stdout[-2000:] + live.stderr[-2000:]
    assert not _stderr_lines(live)
    m = _manifest(tmp_path)
    assert m["status"] == "completed" and "reason" not in m
    assert m["counters"]["stage_cache"]["generate"] == "retried"
    assert m["llm_usage"]["generate/actor"]["calls"] > 0 and m["counters"]["llm_calls"] > 0
    assert m["counters"]["failures"]["generate"] == 0 and not m["counters"]["transient_failures"]
    run = sorted((tmp_path / "outputs" / "runs").glob("*/*"))[-1]
    assert [json.loads(x)["id"] for x in (run / "artifacts" / "generate.jsonl").read_text().splitlines()] == failed_ids


def test_a_bad_taxonomy_workbook_is_a_one_line_data_error(tmp_path: Path) -> None:
    junk = tmp_path / "mine.xlsx"
    junk.write_text("not a workbook")
    p = _cli(tmp_path, "model=tiny_random", "debug=fast", f"risk.taxonomy_path={junk}", "stage=[queries,assess]")
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    (line,) = _stderr_lines(p)
    assert line.startswith(f"oyster-exp: data error: risk.taxonomy_path: {junk}: not a readable .xlsx workbook")
    assert "Traceback" not in p.stderr + p.stdout
    assert _manifest(tmp_path)["status"] == "failed"


def test_malformed_user_files_raise_data_errors_that_name_file_line_and_field(tmp_path: Path) -> None:
    from oyster_exp.core.errors import DataError
    from oyster_exp.data.seed import load_query_file
    from oyster_exp.evaluation.benchmarks.construction import load_constructive

    bad = tmp_path / "bench.jsonl"
    row = {"id": "c1", "query": "hi", "risk_level": "R0", "category": "No Risk", "language": "en", "persona": "p",
           "task": "t"}
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "c2", "risk_level": "R9"}) + "\n")
    with pytest.raises(DataError, match=r"bench\.jsonl:2: field 'risk_level'"):
        load_constructive(bad)
    with pytest.raises(DataError, match=r"bench\.jsonl:2: field 'risk_level'"):
        load_query_file(bad)


def test_a_sweep_counts_a_partial_arm_as_failed_and_its_rerun_finishes_it(tmp_path: Path) -> None:
    from oyster_exp.testing.loopback import Faults, serve

    # the first request of the first sweep gets a 500; with no retries one generate record fails (tolerated)
    with serve(faults=Faults(script=("500",))) as (url, _):
        cmd = ["-m", "llm=openai", f"llm.base_url={url}", "model=tiny_random", "debug=fast", "llm.max_retries=0",
               "llm.roles.actor.client.max_attempts=1", "stage=[queries,generate]",
               "failure_policy.max_failed_share=0.5", "seed=7"]
        first = _cli(tmp_path, *cmd)
        assert first.returncode == 1, first.stdout[-2000:] + first.stderr[-2000:]
        second = _cli(tmp_path, *cmd)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    (failed,) = [json.loads(x) for x in (sweeps[0] / "ledger.jsonl").read_text().splitlines()]
    assert failed["status"] == "failed"
    assert re.match(r"partial: stage generate: 1/\d records failed \(first: actor: .*HTTP 500\)", failed["reason"])
    (done,) = [json.loads(x) for x in (sweeps[1] / "ledger.jsonl").read_text().splitlines()]
    assert done["status"] == "completed", "the failed arm is not skipped: its rerun redoes the failed record"
    manifest = json.loads((Path(done["run_dir"]) / "manifest.json").read_text())
    assert manifest["counters"]["stage_cache"]["generate"] == "retried" and manifest["status"] == "completed"
