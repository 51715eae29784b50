"""Risk assessment: the reply schema per active dimension, tolerant category names, the follower
posterior, multi-label guidelines per language, and the stage (chunks, resume, failures) against a
real HTTP server on 127.0.0.1 (the loopback OpenAI-compatible server)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from oyster_exp.config.errors import ConfigError
from oyster_exp.config.structured import validate_config
from oyster_exp.csa.assessment import (
    FollowerModel,
    RiskSettings,
    follower_posterior,
    follower_prior,
    guidelines_for,
    reply_model,
    to_assessment,
)
from oyster_exp.csa.records import AssessmentRecord, QueryRecord
from oyster_exp.data.taxonomy import default_taxonomy
from oyster_exp.llm.json_frame import field_specs
from oyster_exp.pipeline.artifacts import CacheEntry, Journal, read_records
from oyster_exp.pipeline.runner import RunContext
from oyster_exp.stages.assess import AssessStage, assess_conversation, assess_summary
from oyster_exp.testing.loopback import Faults, serve

TAX = default_taxonomy()
PRIORS = {"R0": {"benign": 0.85, "sensitive": 0.12, "malicious": 0.03},
          "R1": {"benign": 0.3, "sensitive": 0.6, "malicious": 0.1},
          "R2": {"benign": 0.05, "sensitive": 0.15, "malicious": 0.8},
          "unknown": {"benign": 1.0, "sensitive": 1.0, "malicious": 1.0}}


FOLLOWER_KNOBS = {"prior", "prior_by_level", "likelihood_scale", "likelihood_weight"}


def _settings(*dims: str, **kw: object) -> RiskSettings:
    """RiskSettings with the given dimensions; follower knobs go to its FollowerModel."""
    fol = FollowerModel(**{"prior_by_level": PRIORS, **{k: v for k, v in kw.items() if k in FOLLOWER_KNOBS}})  # type: ignore[arg-type]
    return RiskSettings(dimensions=list(dims or ("category", "level", "intent", "follower")), follower=fol,  # type: ignore[arg-type]
                        **{k: v for k, v in kw.items() if k not in FOLLOWER_KNOBS})  # type: ignore[arg-type]


def _reply(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"category": "Healthcare", "category_score": "high",
                               "secondary_categories": ["Illegal Drugs"], "secondary_scores": ["medium"],
                               "level": "R1", "intent": "inquiry_information", "benign_user": "possible",
                               "sensitive_user": "likely", "malicious_user": "unlikely"}
    return {**base, **over}


@pytest.mark.parametrize("dims, keys", [
    (("category", "level", "intent", "follower"),
     ["category", "category_score", "secondary_categories", "secondary_scores", "level", "intent",
      "benign_user", "sensitive_user", "malicious_user"]),
    (("category",), ["category", "category_score", "secondary_categories", "secondary_scores"]),
    (("category", "level", "intent"),
     ["category", "category_score", "secondary_categories", "secondary_scores", "level", "intent"]),
])
def test_only_active_dimensions_are_asked_and_the_schema_decodes_in_a_flat_frame(dims, keys) -> None:
    model = reply_model(TAX, _settings(*dims))
    specs = field_specs(model.model_json_schema())
    assert [s.name for s in specs] == keys
    assert all(s.kind in ("enum", "array") for s in specs), "every answer is a constrained choice"
    arrays = {s.name: s for s in specs if s.kind == "array"}
    assert all(a.min_items == 0 and a.max_items == 2 for a in arrays.values())
    assert "secondary_categories" not in [s.name for s in field_specs(
        reply_model(TAX, _settings(*dims, max_secondary=0)).model_json_schema())]


def test_inactive_dimensions_stay_none_and_the_posterior_falls_back_to_the_prior() -> None:
    s = _settings("category")
    a = to_assessment(reply_model(TAX, s).model_validate(_reply()), s)
    assert a.level is None and a.intent is None and a.category == "Healthcare"
    assert a.follower_posterior == pytest.approx({"benign": 1 / 3, "sensitive": 1 / 3, "malicious": 1 / 3})
    s = _settings("category", "level", "intent")
    a = to_assessment(reply_model(TAX, s).model_validate(_reply(level="R2")), s)
    assert a.follower_posterior == pytest.approx(PRIORS["R2"])     # the level-conditioned prior
    s = _settings("category", "level", "intent", prior="uniform")
    a = to_assessment(reply_model(TAX, s).model_validate(_reply(level="R2")), s)
    assert a.follower_posterior == pytest.approx({"benign": 1 / 3, "sensitive": 1 / 3, "malicious": 1 / 3})


def test_posterior_is_prior_times_likelihood_normalised() -> None:
    s = _settings()
    post = follower_posterior("R1", {"benign": "possible", "sensitive": "likely", "malicious": "unlikely"}, s)
    raw = {"benign": 0.3 * 0.5, "sensitive": 0.6 * 0.75, "malicious": 0.1 * 0.25}
    z = sum(raw.values())
    assert post == pytest.approx({k: v / z for k, v in raw.items()})
    assert sum(post.values()) == pytest.approx(1.0)
    # weight 0: the assessor's ratings are ignored
    flat = _settings(likelihood_weight=0.0)
    assert follower_posterior("R2", {"benign": "very_likely", "sensitive": "unlikely", "malicious": "very_unlikely"},
                              flat) == pytest.approx(PRIORS["R2"])
    # an adversarial query rated malicious concentrates the mass
    hi = follower_posterior("R2", {"benign": "very_unlikely", "sensitive": "unlikely", "malicious": "very_likely"}, s)
    assert hi["malicious"] > 0.94 > PRIORS["R2"]["malicious"]
    assert follower_prior(None, s) == pytest.approx({"benign": 1 / 3, "sensitive": 1 / 3, "malicious": 1 / 3})


def test_multi_label_primary_first_secondaries_by_score_no_duplicates() -> None:
    s = _settings()
    m = reply_model(TAX, s)
    a = to_assessment(m.model_validate(_reply(
        secondary_categories=["Illegal Drugs", "Healthcare", "Mental Health"], secondary_scores=["low", "high"])), s)
    assert a.categories == [{"name": "Healthcare", "score": 1.0}, {"name": "Mental Health", "score": 0.6},
                            {"name": "Illegal Drugs", "score": 0.3}]   # a missing score word counts as the middle
    capped = to_assessment(m.model_validate(_reply(secondary_categories=["Gambling", "Cult"])),
                           _settings(max_secondary=1))
    assert [c["name"] for c in capped.categories] == ["Healthcare", "Gambling"]
    # "No Risk" as primary: no categories, no guideline
    none = to_assessment(m.model_validate(_reply(category="No Risk", secondary_categories=[])), s)
    assert none.categories == [] and guidelines_for(none, TAX, "en") == {}


@pytest.mark.parametrize("name, canonical", [
    ("Non-political False Rumors", "Non-political False Rumors"),      # the reference's split("-") KeyError
    ("Misinformation-Non-political False Rumors", "Non-political False Rumors"),
    ("其他虚假谣言", "Non-political False Rumors"),
    ("ILLEGAL DRUGS", "Illegal Drugs"),
    ("Professional Field-投资理财", "Investment and Finance"),
    ("Weather Forecasting", "Unknown Risk"),                           # no such category: the unknown-risk path
    ("无风险", "No Risk"),
])
def test_category_names_in_any_shape_never_raise(name: str, canonical: str) -> None:
    """Regression (reference §10.3 #14): category names must not KeyError; unknown ones take Unknown Risk."""
    s = _settings()
    reply = reply_model(TAX, s).model_validate_json(json.dumps(_reply(category=name, secondary_categories=[name])))
    a = to_assessment(reply, s)
    assert a.category == canonical
    rules = guidelines_for(a, TAX, "en")
    if canonical == "No Risk":
        assert rules == {}
    else:
        assert rules[canonical] == TAX.guideline(canonical, "en") and rules[canonical]


def test_cn_queries_get_cn_guidelines_for_every_category() -> None:
    """Regression (reference §10.3 #14): the EN rules were inserted into CN prompts."""
    s = _settings()
    from oyster_exp.stages.assess import record_for

    q = QueryRecord(id="c1", query="吃壁虎粉能治肺癌吗？", language="cn")
    rec = record_for(q, reply_model(TAX, s).model_validate(_reply()), TAX, s)
    assert list(rec.guideline_by_category) == ["Healthcare", "Illegal Drugs"]
    assert rec.guideline == TAX.guideline("Healthcare", "cn") + TAX.guideline("Illegal Drugs", "cn")
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r) for r in rec.guideline)
    assert not set(rec.guideline) & set(TAX.guideline("Healthcare", "en"))


def test_the_query_is_the_user_turn_and_never_part_of_a_template() -> None:
    s = _settings()
    hostile = "{{ 7*7 }} {% if true %}X{% endif %} {response} {query}"
    for lang in ("en", "cn"):
        system, user = assess_conversation(QueryRecord(id="h", query=hostile, language=lang), TAX, s)
        assert user.content == hostile and "49" not in system.content and hostile not in system.content
        assert "Healthcare" in system.content and "malicious_user" in system.content
    cn_system = assess_conversation(QueryRecord(id="h", query="x", language="cn"), TAX, s)[0].content
    assert "Healthcare（医疗健康）" in cn_system


@pytest.mark.parametrize("override, key", [
    ("+risk.follower.prior_by_level.R1.hostile=1.0", "risk.follower.prior_by_level.R1"),
    ("+risk.follower.prior_by_level.R3={benign: 1.0, sensitive: 1.0, malicious: 1.0}",
     "risk.follower.prior_by_level.R3"),
    ("risk.follower.prior_by_level.R2={benign: -1.0, sensitive: 1.0, malicious: 1.0}",
     "risk.follower.prior_by_level.R2"),
    ("risk.follower.likelihood_scale.likely=1.5", "risk.follower.likelihood_scale.likely"),
    ("risk.max_secondary=9", "risk.max_secondary"),
    ("risk.score_scale.high=2.0", "risk.score_scale.high"),
])
def test_bad_risk_config_names_the_key(compose_cfg, override: str, key: str) -> None:
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert e.value.key == key


def _queries() -> list[QueryRecord]:
    qs = [QueryRecord(id=f"e{i}", query=f"question {i}", language="en") for i in range(5)]
    qs += [QueryRecord(id=f"c{i}", query=f"问题 {i}", language="cn") for i in range(2)]
    qs.append(QueryRecord(id="held", query="held out", split="heldout"))
    return qs


def _ctx(compose_cfg, tmp_path: Path, url: str, *overrides: str) -> RunContext:
    roles = ("actor", "user_judge", "safety_judge", "editor")
    cfg = compose_cfg("llm=openai", f"llm.base_url={url}", "llm.call_cache=false", "llm.chunk_size=3",
                      *(f"llm.roles.{r}.client.max_attempts=1" for r in roles), *overrides)
    return RunContext(cfg=cfg, run_dir=tmp_path / "run", cache_root=tmp_path / "cache")


def _run(ctx: RunContext, tmp_path: Path, queries: list[QueryRecord]) -> list[AssessmentRecord]:
    entry = CacheEntry(tmp_path / "cache" / "stages", "assess", "a" * 40)
    journal = Journal(entry.records_path, AssessmentRecord)
    AssessStage().run(ctx, {"queries": queries}, journal, entry)
    journal.close()
    return read_records(entry.records_path, AssessmentRecord)


def test_stage_chunks_calls_resumes_and_covers_every_training_query(compose_cfg, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with serve() as (url, state):
        ctx = _ctx(compose_cfg, tmp_path, url)
        calls: list[int] = []
        real = type(ctx.service).structured

        def spy(self, role, convs, schema):  # type: ignore[no-untyped-def]
            calls.append(len(convs))
            return real(self, role, convs, schema)

        monkeypatch.setattr(type(ctx.service), "structured", spy)
        entry = CacheEntry(tmp_path / "cache" / "stages", "assess", "a" * 40)
        j = Journal(entry.records_path, AssessmentRecord)
        j.append(AssessmentRecord(id="e0", language="en"))     # finished before a kill
        j.close()
        recs = _run(ctx, tmp_path, _queries())
        assert calls == [3, 3], "one service call per chunk of llm.chunk_size, finished ids skipped"
        assert state.requests == 6
        assert [r.id for r in recs] == ["e0", "e1", "e2", "e3", "e4", "c0", "c1"]   # held-out not assessed
        # the loopback answers the first enum option: "No Risk", so CN and EN records carry no guideline
        a = recs[1].assessment
        assert a is not None and a.category == "No Risk" and a.level == "R0" and a.follower_posterior
        assert recs[-1].language == "cn"
        summary = assess_summary(recs, _queries())
        assert summary["assessed"] == 6 and summary["languages"] == {"en": 4, "cn": 2}


def test_backend_errors_become_failure_records_with_reasons(compose_cfg, tmp_path: Path) -> None:
    """Regression (reference §10.3 #7): an API error is a failure record with a reason, never data."""
    with serve(faults=Faults(rate_500=1.0)) as (url, _):
        ctx = _ctx(compose_cfg, tmp_path, url, "llm.max_retries=0")
        recs = _run(ctx, tmp_path, _queries())
    assert len(recs) == 7
    assert all(r.assessment is None and r.failure and "HTTP 500" in r.failure for r in recs)
    assert assess_summary(recs, [])["failures"] == {"assessor": 7}


def test_no_active_dimension_asks_nothing(compose_cfg, tmp_path: Path) -> None:
    with serve() as (url, state):
        ctx = _ctx(compose_cfg, tmp_path, url, "risk.dimensions=[]")
        recs = _run(ctx, tmp_path, _queries())
        assert state.requests == 0
    assert all(r.assessment is not None and r.assessment.category is None for r in recs)
    assert recs[0].assessment.follower_posterior == pytest.approx(  # type: ignore[union-attr]
        {"benign": 1 / 3, "sensitive": 1 / 3, "malicious": 1 / 3})


@pytest.mark.parametrize("option, dims, prior", [("full", ["category", "level", "intent", "follower"], "by_level"),
                                                 ("category_only", ["category"], "by_level"),
                                                 ("no_follower_types", ["category", "level", "intent"], "uniform")])
def test_each_risk_option_builds_the_settings_and_the_follower_model(compose_cfg, option: str, dims: list[str],
                                                                      prior: str) -> None:
    from hydra.utils import instantiate

    s = instantiate(compose_cfg(f"risk={option}").risk, _convert_="all")
    assert type(s) is RiskSettings and type(s.follower) is FollowerModel
    assert s.dimension_names == dims and str(s.follower.prior.value) == prior
    # the follower model's defaults are written once (FollowerModel); the YAML restates the same values
    assert s.follower.prior_by_level == FollowerModel().prior_by_level
    assert s.follower.likelihood_scale == FollowerModel().likelihood_scale
    post = to_assessment(_reply(level="R2"), s).follower_posterior
    if prior == "uniform":
        assert post == pytest.approx({"benign": 1 / 3, "sensitive": 1 / 3, "malicious": 1 / 3})
    elif "level" in dims:
        assert max(post, key=post.get) == "malicious"   # the R2 row dominates
