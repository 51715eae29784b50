"""Benchmarks and eval subjects as components: each option composes, builds the right class and behaves;
a new benchmark is one module plus one config entry, and neither the stage nor the summary names one."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from omegaconf import OmegaConf

from oyster_exp.config.components import component_schema, register_component
from oyster_exp.config.errors import ConfigError
from oyster_exp.config.structured import validate_config
from oyster_exp.core.errors import StageError
from oyster_exp.csa.records import EvalRecord
from oyster_exp.evaluation.benchmarks import configured
from oyster_exp.evaluation.benchmarks.base import Benchmark, EvalEnv, ModelRun, Row
from oyster_exp.evaluation.benchmarks.capability import CapabilityBenchmark
from oyster_exp.evaluation.benchmarks.construction import ConstructionBenchmark
from oyster_exp.evaluation.benchmarks.harmbench import HarmBenchBenchmark
from oyster_exp.evaluation.benchmarks.over_refusal import OverRefusalBenchmark
from oyster_exp.evaluation.benchmarks.strata_sword import StrataSwordBenchmark
from oyster_exp.evaluation.generation import GenerationSettings, bind_subject, conversation
from oyster_exp.evaluation.rows import judged, row
from oyster_exp.evaluation.subjects import LocalSubject, ServerSubject
from oyster_exp.evaluation.suite import Judged, Prepared, Task
from oyster_exp.evaluation.summary import summarise
from oyster_exp.llm.service import LLMService
from oyster_exp.stages.evaluate import data_files, missing_data
from oyster_exp.testing.loopback import serve

BUILTIN = {"construction": ConstructionBenchmark, "strata_sword": StrataSwordBenchmark,
           "harmbench": HarmBenchBenchmark, "over_refusal": OverRefusalBenchmark, "capability": CapabilityBenchmark}


# --- a benchmark written the way the README recipe says: one class, registered from its own module ----------

@dataclass
class EchoLengthBenchmark(Benchmark):
    """A toy benchmark: the share of answers longer than `min_chars` (a stand-in for a real judge)."""
    name: ClassVar[str] = "echo_length"
    prompts: list[str] = field(default_factory=lambda: ["hello", "a much longer question"])
    min_chars: int = 12
    path: str | None = None                    # an optional data file (to exercise the missing-data path)

    def data_files(self) -> list[Path]:
        return [Path(self.path)] if self.path else []

    def prepare(self, env: EvalEnv, missing: str | None) -> list[Task]:
        if missing is not None:
            return [Task(self.name, "toy", skipped=missing)]

        def judge(chunk: list[Prepared], answers: list[Any]) -> list[Judged]:
            return [Judged(verdict="long" if len(a.text) > self.min_chars else "short") for a in answers]

        items = [Prepared(item_id=f"p{i}", prompt=p, conversation=conversation(p, env.system_prompt))
                 for i, p in enumerate(self.prompts)]
        return [Task(self.name, "toy", items, judge)]

    def rows(self, split: str, model: str, records: list[Any], resamples: int, seed: int) -> list[Row]:
        ok = judged(records)
        share = 100.0 * sum(r.verdict == "long" for r in ok) / max(1, len(ok))
        return [row(self.name, split, model, "long_share", share, len(ok))]


register_component("eval/benchmark", "echo_length", EchoLengthBenchmark)


class ListJournal(list):
    """The journal's two operations the suite loop uses: membership by record id, and append."""

    def __contains__(self, rid: object) -> bool:
        return any(r.id == rid for r in self)


# --- composition -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("suite", ["quick", "full", "paper"])
def test_every_suite_builds_its_benchmarks_and_subject(compose_cfg, suite: str) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg(f"eval={suite}", "eval.harmbench.enabled=true", "eval.over_refusal.enabled=true",
                      "eval.capability.enabled=true")
    validate_config(cfg, resolve=False)
    built = configured(cfg.eval)
    assert list(built) == list(BUILTIN)                         # the suite's order is the run order
    for key, cls in BUILTIN.items():
        assert type(built[key]) is cls and built[key].name == key
        assert OmegaConf.get_type(cfg.eval[key]) is component_schema(cls)  # the node is typed by the schema
    subject = instantiate(cfg.eval.subject, _convert_="all")
    assert type(subject) is (ServerSubject if suite == "paper" else LocalSubject)


def test_suite_values_reach_the_benchmark_and_enabled_false_drops_it(compose_cfg) -> None:
    cfg = compose_cfg("eval.strata_sword.limit=2", "eval.construction.enabled=false",
                      "eval.construction.headline_beta=3")
    built = configured(cfg.eval)
    ss = built["strata_sword"]
    assert (ss.languages, ss.levels, ss.limit, ss.classify) == (["en"], [1], 2, True)   # quick + override
    assert "construction" not in built and "harmbench" not in built                 # disabled: not run
    assert [p.name for p in ss.data_files()] == ["strata_sword_en_level_1.xlsx"]


def test_construction_headline_key_follows_its_beta() -> None:
    recs = [EvalRecord(id=f"trained/construction/q{i}", model="trained", benchmark="construction", item_id=f"q{i}",
                       prompt="", satisfaction=0.5, risk=0.25, meta={"split": "heldout"}) for i in range(4)]
    default = {r["metric"] for r in summarise(recs, resamples=20)[0]}
    assert "constructive@beta=2" in default                     # the key sweeps and Optuna read
    custom, curves = summarise(recs, [ConstructionBenchmark(headline_beta=3.0, betas=[1.0, 3.0])], resamples=20)
    assert {r["metric"] for r in custom} >= {"constructive@beta=3", "satisfaction", "risk"}
    assert set(curves["trained"]) == {1.0, 3.0}
    assert curves["trained"][1.0] == pytest.approx(0.25)       # C = 0.5 - 1 * 0.25, kept (positive)


@pytest.mark.parametrize("override, key", [
    ("eval.strata_sword.limit=0", "eval.strata_sword.limit"),               # range metadata, found via the node
    ("eval.construction.betas=[1,-2]", "eval.construction.betas"),          # the benchmark's own check
    ("eval.over_refusal.enabled=true eval.over_refusal.languages=[de]", "eval.over_refusal.languages"),
    ("eval.bootstrap_resamples=3", "eval.bootstrap_resamples"),
    ("eval.construction.source=file", "eval.construction.path"),
])
def test_benchmark_config_errors_name_the_key(compose_cfg, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg(*override.split()), resolve=False)
    assert e.value.key == key


def test_a_disabled_benchmark_is_not_checked(compose_cfg) -> None:
    validate_config(compose_cfg("eval.over_refusal.languages=[de]", "eval.over_refusal.enabled=false"),
                    resolve=False)


# --- subjects --------------------------------------------------------------------------------------------

def test_server_subject_needs_a_url_and_a_served_name_per_model(compose_cfg) -> None:
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg("eval/subject=openai"), resolve=False)
    assert e.value.key == "eval.subject.base_url"
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg("eval/subject=openai", "eval.subject.base_url=http://h/v1",
                                    "eval.subject.models.base=b"), resolve=False)
    assert e.value.key == "eval.subject.models.trained"
    with pytest.raises(ConfigError) as e:
        validate_config(compose_cfg("eval/subject=openai", "eval.subject.base_url=http://h/v1",
                                    "eval.subject.models={base: b, trained: t}", "eval.subject.concurrency=0"),
                        resolve=False)
    assert e.value.key == "eval.subject.concurrency"


def test_the_subject_kind_decides_where_answers_come_from(tiny_model_dir: Path) -> None:
    """Local: no weights, no client (a failed train stage); server: the served name, weights never asked for."""
    asked: list[str] = []

    def no_weights() -> None:
        asked.append("weights")
        return None

    assert LocalSubject().client("trained", no_weights, "float32", 2) is None and asked == ["weights"]
    asked.clear()
    with serve() as (url, state):
        server = ServerSubject(base_url=url, models={"base": "served-base"}, api_key_env=None, max_attempts=1)
        client = server.client("base", no_weights, "float32", 2)
        assert client is not None and asked == []
        svc = LLMService({})
        bind_subject(svc, client, GenerationSettings(max_new_tokens=8))
        (out,) = svc.text("subject", [conversation("ping")])
    assert out.text == "echo: ping" and state.bodies[0]["model"] == "served-base"


# --- a new benchmark, end to end through the interface ------------------------------------------------------

def test_a_new_benchmark_is_found_built_run_and_summarised(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("+eval/benchmark@eval.echo_length=echo_length_schema", "eval.echo_length.min_chars=14")
    validate_config(cfg, resolve=False)
    built = configured(cfg.eval)
    bench = built["echo_length"]
    assert isinstance(bench, EchoLengthBenchmark) and bench.min_chars == 14
    journal = ListJournal()
    with serve() as (url, _):
        subject = ServerSubject(base_url=url, models={"base": "m"}, api_key_env=None, max_attempts=1)
        svc = LLMService({})
        settings = GenerationSettings(max_new_tokens=16)
        client = subject.client("base", lambda: None, "float32", 1)
        assert client is not None
        bind_subject(svc, client, settings)
        env = EvalEnv(service=svc, taxonomy=None, judge=None, system_prompt="")  # type: ignore[arg-type]
        run = ModelRun(name="base", service=svc, journal=journal, settings=settings, chunk_size=8, subject=subject,
                       weights=lambda: None)
        bench.evaluate(bench.prepare(env, None), run)
        bench.evaluate(bench.prepare(env, None), run)          # resumed: nothing twice
    assert [(r.id, r.verdict) for r in journal] == [("base/echo_length/p0", "short"), ("base/echo_length/p1", "long")]
    rows, _ = summarise(list(journal), built, resamples=10)
    got = {r["metric"]: r["value"] for r in rows if r["benchmark"] == "echo_length"}
    assert got == {"n_judged": 2, "n_failed": 0, "n_skipped": 0, "long_share": 50.0}


def test_a_new_benchmarks_data_file_is_checked_like_the_others(compose_cfg, tmp_path: Path) -> None:
    absent = tmp_path / "gone.csv"
    on = ("+eval/benchmark@eval.echo_length=echo_length_schema", f"eval.echo_length.path={absent}")
    with pytest.raises(StageError, match=f"eval.echo_length.path: {absent} not found"):
        missing_data(compose_cfg(*on, "eval.on_missing_data=error"))
    skip = missing_data(compose_cfg(*on, "eval.on_missing_data=skip"))
    assert skip["echo_length"] == f"eval.echo_length.path: {absent} not found"
    present = tmp_path / "here.csv"
    present.write_text("x\n")
    assert data_files(compose_cfg(on[0], f"eval.echo_length.path={present}"))["echo_length"] == [present]


def test_records_of_an_unknown_benchmark_still_get_their_counts() -> None:
    recs = [EvalRecord(id="base/gone/1", model="base", benchmark="gone", item_id="1", prompt="", verdict="x",
                       meta={"split": "s"})]
    rows, curves = summarise(recs, resamples=10)
    assert {r["metric"] for r in rows} == {"n_judged", "n_failed", "n_skipped"} and not curves


# --- shared data: a failure in CI, a skip only when asked --------------------------------------------------

def test_missing_shared_data_fails_unless_a_skip_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared_data

    def probe() -> str:
        return "ran"

    monkeypatch.delenv(shared_data.ALLOW, raising=False)
    assert shared_data.needs_shared_data(tmp_path)(probe)() == "ran"          # present: the test runs as written
    with pytest.raises(pytest.fail.Exception, match="gone \\(set OYSTER_EXP_DATA"):
        shared_data.needs_shared_data(tmp_path / "gone")(probe)()
    monkeypatch.setenv(shared_data.ALLOW, "1")
    mark = shared_data.needs_shared_data(tmp_path / "gone")
    assert mark.mark.name == "skip" and "gone" in mark.kwargs["reason"]
