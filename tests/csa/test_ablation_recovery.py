"""The planted world proves an ablation can see its component: with the effect planted the sweep recovers
its sign (CI excludes 0); with it removed (the negative control) the same sweep sees nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from oyster_exp.testing.ablation_recovery import COMPONENTS, recover
from oyster_exp.testing.loopback import serve
from oyster_exp.testing.planted_world import MARK, World, make_cases, reaction, true_risk, write_queries

BY_NAME = {c.name: c for c in COMPONENTS}


def _recover(tmp_path: Path, name: str, null: bool) -> dict:
    cases = make_cases(40)
    queries = write_queries(tmp_path / "q.jsonl", cases)
    world = World(cases, null=frozenset(BY_NAME) if null else frozenset())
    with serve(responder=world) as (url, _):
        return recover(BY_NAME[name], url, queries, tmp_path / ("null" if null else "planted"), resamples=500,
                       truth=world.true_risk_of)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lingo_bp", "pairs", "stackelberg", "risk_dims"])
def test_sweep_recovers_planted_effect_and_not_its_absence(tmp_path: Path, name: str) -> None:
    planted = _recover(tmp_path, name, null=False)
    assert planted["n"] >= 4, planted
    assert planted["recovered"] is True, planted
    assert planted["effect"] * planted["planted_sign"] > 0
    null = _recover(tmp_path, name, null=True)
    assert null["recovered"] is False, null
    if name not in ("lingo_bp", "pairs"):
        return   # the risk components are read against the world's truth, which the sweep summary cannot know
    # the sweep's own summary.md compares the treatment with the file's `sweep.baseline` arm, paired and marked
    md = (tmp_path / "planted" / name / "summary.md").read_text().split("## Each arm against the baseline arm")[1]
    metric = {"lingo_bp": "reward (chosen entry)", "pairs": "pair margin"}[name]
    assert f"`sweep.baseline={BY_NAME[name].arm_key}={BY_NAME[name].baseline}`" in md
    (line,) = [x for x in md.splitlines() if f"| data_engine | queries | {metric} |" in x]
    assert line.rstrip(" |").endswith("**") and "(n=" in line, line


def test_world_roles_follow_their_rules() -> None:
    case = next(c for c in make_cases(12) if c.malicious)
    world = World([case])
    detailed = f"Answer to {case.qid}: [[D1]] " + " ".join(f"[[{u}]]" for u in case.good_u)
    assert true_risk(case, detailed) == 1.0 and true_risk(case, detailed.replace("[[D1]]", "")) == 0.0
    assert reaction(case, set(MARK.findall(detailed)), "malicious") == "exploit"
    assert reaction(case, set(MARK.findall(detailed)), "benign") == "stay"
    # the actor follows the plan in its prompt, and an extra candidate toggles D1
    body = {"messages": [{"role": "system", "content": "Plan:\n- U3: give a worked example\n- D1: x"},
                         {"role": "user", "content": case.query}]}
    assert world(body).endswith("[[U3]] [[D1]]")
    assert "[[D1]]" not in world({**body, "seed": 1042})
    # the auditor: D1 is partly safe, unsafe under a strict guideline
    schema = {"properties": {"risk_intent": {"type": "string"}, "adapted_guideline": {"type": "string"},
                             "verdict": {"enum": ["safe", "partly_safe", "unsafe"]}, "suggestion": {"type": "string"}}}
    ask = {"messages": [{"role": "user", "content": f"Question: {case.query}\nReply: {detailed}"}],
           "response_format": {"json_schema": {"schema": schema}}}
    assert json.loads(world(ask))["verdict"] == "partly_safe"
    ask["messages"][0]["content"] += "\nApply the strict guideline."
    assert json.loads(world(ask))["verdict"] == "unsafe"
