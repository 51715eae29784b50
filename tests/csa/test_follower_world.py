"""The follower posterior and the follower model change what the data engine produces (issue 12, items 1-2).

A scripted world runs the real stages queries -> generate -> assess -> extract -> optimize -> pairs in
process (`RunContext.service` holds scripted clients; the stage contract, the cache and the journals are
real). The world's planted effects: the actor's first answer is DETAILED (every user item +1) and a Lingo-BP
recombination is CAREFUL (satisfaction 0.4); the auditor marks DETAILED unsafe only when its guideline says
to apply the rules strictly; the follower role predicts that a malicious user exploits DETAILED and leaves
after CAREFUL, and that a benign user stays after DETAILED and follows up after CAREFUL. The assessor rates
the `[hostile]` query as R2 with a very likely malicious user, the `[benign]` one as R0.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from oyster_exp.csa.records import OptimizeRecord, PairRecord
from oyster_exp.llm.base import ChatRequest, ChatResponse, Usage
from oyster_exp.llm.service import LLMService, RoleBinding
from oyster_exp.pipeline.artifacts import read_records
from oyster_exp.pipeline.runner import RunContext, run_pipeline

ROLES = ("actor", "user_judge", "safety_judge", "editor", "follower")
DETAILED = "DETAILED reply: every step, quantity and workaround."
CAREFUL = "CAREFUL reply: the general principle and a safer way to reach the goal."
STRICT_MARK = "Strict application"
QUERIES = [{"id": "hostile", "query": "[hostile] how do I get around the lock on my neighbour's door?",
            "language": "en"},
           {"id": "benign", "query": "[benign] how do locks on front doors work?", "language": "en"}]
TO_PAIRS = "stage=[queries,generate,assess,extract,optimize,pairs]"


def _fill(schema: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        if name in known:
            out[name] = known[name]
        elif "enum" in prop:
            out[name] = prop["enum"][0]
        elif prop.get("type") == "array":
            out[name] = ["a short strategy"] * max(1, int(prop.get("minItems", 0)))
        elif prop.get("type") in ("integer", "number"):
            out[name] = 0
        else:
            out[name] = "n/a"
    return out


class ScriptedRole:
    """One role of the world; it reads what it needs from the request, as a model would."""

    backend = "scripted"
    model_id = "follower-world-v1"

    def __init__(self, role: str) -> None:
        self.role = role
        self.requests: list[ChatRequest] = []

    def chat_batch(self, requests: list[ChatRequest]) -> list[ChatResponse | str]:
        self.requests.extend(requests)
        return [ChatResponse(content=self._one(r), usage=Usage(prompt_tokens=10, completion_tokens=10))
                for r in requests]

    def _one(self, req: ChatRequest) -> str:
        text = "\n".join(m.content for m in req.messages)
        if self.role == "actor":
            system = [m.content for m in req.messages if m.role == "system"]
            if system and "think briefly" in system[0]:
                return "Someone asks about locks; the answer should help without enabling a break-in."
            bare = len(req.messages) == 1 and req.messages[0].content.startswith("[")   # the query alone
            return DETAILED if bare else CAREFUL   # anything more (a plan, guidance): a recombination
        props = (req.response_schema or {}).get("properties", {})
        detailed = "DETAILED" in text
        if "level" in props:                                         # the assess stage (auditor's backend)
            hostile = "[hostile]" in text
            cats = props.get("category", {}).get("enum", ["No Risk"])
            known = {"category": cats[1] if hostile and len(cats) > 1 else cats[0], "category_score": "high",
                     "level": "R2" if hostile else "R0", "intent": props.get("intent", {}).get("enum", ["x"])[0],
                     "benign_user": "unlikely" if hostile else "very_likely",
                     "sensitive_user": "unlikely", "malicious_user": "very_likely" if hostile else "very_unlikely",
                     "secondary_categories": [], "secondary_scores": []}
        elif "verdict" in props:                                     # the auditor
            known = {"verdict": "unsafe" if detailed and STRICT_MARK in text else "safe"}
        elif "politeness" in props:                                  # the user simulator
            known = ({k: 1 for k in ("politeness", "willingness_to_help", "task_completion", "logic",
                                     "informativeness")} if detailed else
                     {"politeness": 1, "willingness_to_help": 1, "task_completion": 0, "logic": 1,
                      "informativeness": -1})
        elif "malicious" in props:                                   # the follower model
            known = ({"benign": "stays_helped", "sensitive": "escalates", "malicious": "exploits"} if detailed else
                     {"benign": "follows_up", "sensitive": "stays_helped", "malicious": "leaves"})
        else:                                                        # the editor (extract and Lingo-BP)
            known = {}
        return json.dumps(_fill(req.response_schema or {}, known))


def run_world(compose_cfg: Any, tmp_path: Path, *overrides: str) -> tuple[dict[str, OptimizeRecord],
                                                                          dict[str, PairRecord], dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in QUERIES), encoding="utf-8")
    cfg = compose_cfg("model=tiny_random", "lingo_bp=one_step", TO_PAIRS, "data=file", f"data.path={qfile}",
                      "data.heldout_fraction=0.0", "data.system_prompt=", "logger=none", *overrides)
    clients = {r: ScriptedRole(r) for r in ROLES}
    ctx = RunContext(cfg=cfg, run_dir=tmp_path / "run", cache_root=tmp_path / "cache")
    ctx.service = LLMService({r: RoleBinding(client=clients[r]) for r in ROLES}, cache=None, max_retries=1, seed=42)
    from oyster_exp.stages import default_stages

    run_pipeline(ctx, default_stages())
    art = ctx.run_dir / "artifacts"
    opt = {r.id: r for r in read_records(art / "optimize.jsonl", OptimizeRecord)}
    pairs = {p.query_id or p.id: p for p in read_records(art / "pairs.jsonl", PairRecord)}
    return opt, pairs, clients


def test_the_follower_posterior_changes_the_chosen_side_with_stackelberg_off(compose_cfg, tmp_path: Path) -> None:
    """risk=full vs risk=no_follower_types (sweeps/ablation_risk_dims.yaml) differ in outcome, not only in a prompt."""
    full_opt, full_pairs, full_clients = run_world(compose_cfg, tmp_path / "full", "risk=full")
    flat_opt, flat_pairs, flat_clients = run_world(compose_cfg, tmp_path / "flat", "risk=no_follower_types")
    # full: p(malicious|hostile) is high, the auditor applies the rules strictly, DETAILED is unsafe,
    # so the careful Lingo-BP step wins by alpha*S - beta*R (0.4 vs 1 - 2) and becomes the chosen side
    h = full_opt["hostile"]
    assert [e.response for e in h.trace] == [DETAILED, CAREFUL] and h.best_index == 1
    assert [e.reward for e in h.trace] == pytest.approx([1.0 - 2.0, 0.4])
    assert full_pairs["hostile"].failure is None and full_pairs["hostile"].chosen.endswith(CAREFUL)
    assert full_pairs["hostile"].rejected.endswith(DETAILED)
    # no_follower_types: a uniform posterior never reaches strict_at = 0.5; DETAILED stays safe and best
    f = flat_opt["hostile"]
    assert [e.response for e in f.trace] == [DETAILED, CAREFUL] and f.best_index == 0
    assert flat_pairs["hostile"].failure is not None and flat_pairs["hostile"].failure.startswith("no_improvement")
    # the mechanism: the strictness note reached the auditor for the hostile query in the full arm only
    audits = [r for r in full_clients["safety_judge"].requests if "verdict" in (r.response_schema or {})
              .get("properties", {})]
    strict = [r for r in audits if STRICT_MARK in r.messages[-1].content]
    assert strict and all("[hostile]" in r.messages[-1].content for r in strict)
    assert not any(STRICT_MARK in r.messages[-1].content for r in flat_clients["safety_judge"].requests)
    # the benign query is not affected, and stackelberg=off calls no follower role
    assert full_opt["benign"].best_index == flat_opt["benign"].best_index == 0
    assert not full_clients["follower"].requests and not flat_clients["follower"].requests
    assert all(e.reactions is None and e.payoff is None for e in h.trace)


def test_stackelberg_on_records_reactions_and_its_payoff_picks_the_entry_and_the_pair(compose_cfg,
                                                                                        tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from oyster_exp.csa.stackelberg import CandidateOutcome, expected_payoff

    common = ("risk=full", "risk.guideline_strength.strict_at=null", "stackelberg.candidates=1")
    on_opt, on_pairs, clients = run_world(compose_cfg, tmp_path / "on", "stackelberg=on", *common)
    off_opt, off_pairs, _ = run_world(compose_cfg, tmp_path / "off", *common[:2])
    leader = instantiate(compose_cfg("stackelberg=on").stackelberg, _convert_="all")
    for qid, rec in on_opt.items():
        for e in rec.trace:   # every entry holds the per-type reactions and the payoff that ranked it
            assert e.reactions is not None and set(e.reactions) == {"benign", "sensitive", "malicious"}
            assert e.user is not None and e.safety is not None
            retention, risk = leader.reactions_of(e.reactions)
            by_hand = expected_payoff(CandidateOutcome(e.user.score, 1.0 - e.safety.score, e.candidates[0].cost
                                                       if e.candidates else 0.0, retention, risk),
                                      rec.follower_posterior, leader)
            assert e.payoff == pytest.approx(by_hand) and e.reward == e.payoff, (qid, e)
        assert rec.best_index == max(range(len(rec.trace)), key=lambda i: (rec.trace[i].reward, i))
    # the hostile asker is most likely malicious: DETAILED is exploited, so the leader prefers CAREFUL and the
    # pair follows the payoff; stackelberg=off on the same judgements keeps DETAILED (1.0 > 0.4) and no pair
    h = on_opt["hostile"]
    assert h.trace[0].reactions == {"benign": "stays_helped", "sensitive": "escalates", "malicious": "exploits"}
    assert h.best_index == 1 and h.trace[1].payoff > h.trace[0].payoff
    assert on_pairs["hostile"].failure is None and on_pairs["hostile"].chosen.endswith(CAREFUL)
    assert on_pairs["hostile"].chosen_reward == pytest.approx(h.trace[1].payoff)
    assert on_pairs["hostile"].rejected_reward == pytest.approx(h.trace[0].payoff)
    assert off_opt["hostile"].best_index == 0 and off_pairs["hostile"].failure.startswith("no_improvement")
    # the benign asker stays after DETAILED: there the payoff agrees with the objective
    assert on_opt["benign"].best_index == 0
    assert len(clients["follower"].requests) == sum(len(r.trace) for r in on_opt.values())
