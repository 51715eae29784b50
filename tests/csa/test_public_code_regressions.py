"""One test per bug of the public Oyster code in the Lingo-BP area (reference digest §6.2, §6.3, §10.3).

Each test is named after the bug and shows what ours does instead. The loop runs against the
rule-based world of tests/lingo_world.py through the real LLMService.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from lingo_world import WorldClient, make_cases, render_reply, strategy, tokens_of

from oyster_exp.csa.chain import SafetyChain
from oyster_exp.csa.lingo_bp import EditSettings, PearlPoint, apply_edit, edit_prompt
from oyster_exp.csa.optimize import LoopSettings, QueryInput, optimize_batch
from oyster_exp.csa.prompts import render
from oyster_exp.csa.replies import EditReply, SafetyJudgement, UserJudgement
from oyster_exp.csa.strategies import ExactSimilarity, JaccardSimilarity, minimal_update
from oyster_exp.llm.service import LLMService, RoleBinding

ROLES = ("actor", "user_judge", "safety_judge", "editor")
UNFROZEN = {"user": ["user_needs", "usefulness_strategies"],
            "developer": ["user_needs", "usefulness_strategies", "safety_strategies"],
            "both": ["user_needs", "usefulness_strategies", "safety_strategies"]}
CJK = re.compile(r"[\u4e00-\u9fff]")


def _world(cases, max_retries: int = 2, malformed: dict[str, int] | None = None):
    by_id = {c.qid: c for c in cases}
    clients = {r: WorldClient(r, by_id, malformed_every=(malformed or {}).get(r, 0)) for r in ROLES}
    service = LLMService({r: RoleBinding(client=clients[r], max_tokens=64) for r in ROLES}, cache=None,
                         max_retries=max_retries, seed=42)
    return clients, service


def _items(cases, lang: str = "en", chain=None) -> list[QueryInput]:
    return [QueryInput(id=c.qid, query=c.query, lang=lang, think="t", chain=chain or c.initial,
                       response=render_reply(c.qid, sorted(tokens_of(chain or c.initial))), category="Unknown Risk",
                       guideline="1. rule") for c in cases]


def _settings(iterations: list[str], **kw) -> LoopSettings:
    return LoopSettings(iterations=iterations, edit=EditSettings(unfrozen=UNFROZEN, max_changes=2,
                                                                  similarity=ExactSimilarity()), **kw)


def _prompts(client: WorldClient) -> list[str]:
    return ["\n".join(m.content for m in r.messages) for r in client.requests]


# §6.3 / §10.3 #10 -----------------------------------------------------------------------------------------

def test_minimal_update_arguments_swapped() -> None:
    """Reference: msu(proposal, old) kept old strategies and dropped the new ones. Ours: the chain's list
    is the base, at most k of the editor's edits are applied to it."""
    old = ["A: keep calm", "B: cite the law", "C: suggest a lawyer"]
    out = minimal_update(old, ["A: keep calm", "X: explain options", "Y: list hotlines", "Z: give examples"],
                         max_changes=2, similarity=ExactSimilarity())
    assert out == [*old, "X: explain options", "Y: list hotlines"]   # two edits; the new ones taken, not dropped
    # through apply_edit, the order is fixed at the call site too
    chain = SafetyChain(usefulness_strategies=old)
    edit = EditReply(suggestion="s", user_needs="", risk_intent="", safety_guidelines="",
                     usefulness_strategies=["X: explain options", "Y: list hotlines", "Z: give examples"],
                     safety_strategies=[])
    new = apply_edit(chain, edit, "user", EditSettings(unfrozen=UNFROZEN, max_changes=1, similarity=ExactSimilarity()))
    assert new.usefulness_strategies == [*old, "X: explain options"]   # one edit: the first addition


def test_minimal_update_set_order_comma_join_and_character_counting() -> None:
    """Reference: sets (order random per process), ','-joined results, `len(str) < 3` counted characters."""
    cur = ["B: second", "A: first", "C: third, with a comma"]
    prop = ["B: second", "A: first", "C: third, with a comma", "D: fourth"]
    assert minimal_update(cur, prop, 2) == prop                        # order kept, a list of items
    assert all(isinstance(s, str) for s in minimal_update(cur, prop, 2))
    assert minimal_update(["AB"], ["X", "Y"], 2, ExactSimilarity()) == ["AB", "X", "Y"]   # two items, not 2 chars
    assert minimal_update(["有用；建议"], ["有用；建议", "补充，例子"], 2) == ["有用；建议", "补充，例子"]
    code = ("from oyster_exp.csa.strategies import minimal_update as m;"
            "print(m(['p q','r s','t u','v w'],['x y','r s','z a','b c','d e'],2))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(h), "PATH": ""}).stdout for h in (1, 2, 3)}
    assert len(outs) == 1, f"the result depends on the hash seed: {outs}"


# §10.3 #9 -------------------------------------------------------------------------------------------------

def test_history_entries_aliased() -> None:
    """Reference: every history entry pointed at one mutated chain dict. Ours: each entry owns its chain."""
    cases = make_cases(6, seed=2)
    before = [c.initial.model_copy(deep=True) for c in cases]
    _, service = _world(cases)
    results = optimize_batch(service, _items(cases), _settings(["both", "both", "both"]))
    for case, old, res in zip(cases, before, results):
        assert case.initial == old                               # the input chain is never mutated
        chains = [e.chain for e in res.trace if e.chain is not None]
        for e in res.trace:
            assert e.chain is not None and tokens_of(e.chain) == set(re.findall(r"\[\[(\w+)\]\]", e.response))
        for a in chains:
            for b in chains:
                if a is not b:
                    assert a.usefulness_strategies is not b.usefulness_strategies
        if len(chains) > 1:
            chains[0].usefulness_strategies.append("mutated later")
            assert all("mutated later" not in c.usefulness_strategies for c in chains[1:])
            assert "mutated later" not in case.initial.usefulness_strategies


# §10.3 #13 ------------------------------------------------------------------------------------------------

def test_chinese_recombination_prompt_empty() -> None:
    """Reference: the CN recombine template was an empty file, so CN queries ignored the chain."""
    chain = SafetyChain(user_needs="了解法律", risk_intent="可能想规避监管", safety_guidelines="不提供违法细节",
                        usefulness_strategies=["解释相关法律"], safety_strategies=["提醒法律风险"])
    text = render("recombine", "cn", plan=chain.render("cn"))
    assert text.strip() and len(CJK.findall(text)) > 20
    assert chain.render("cn") in text and "解释相关法律" in text
    # and through the loop: the system prompt the actor receives for a CN query is Chinese and holds the chain
    cases = make_cases(2, seed=4)
    clients, service = _world(cases)
    optimize_batch(service, _items(cases, lang="cn"), _settings(["both"], early_stop=None))
    systems = [m.content for r in clients["actor"].requests for m in r.messages if m.role == "system"]
    assert systems and all(CJK.search(s) and "有用性策略" in s for s in systems)


def test_no_risk_collapsed_chain_never_reaches_the_recombination_prompt() -> None:
    """Reference: `{{chain}}` was filled with the full chain before the no-risk branch ran, so the collapsed
    chain was computed and thrown away. Ours: the collapsed chain is the text the actor receives."""
    cases = make_cases(3, seed=6)
    benign = SafetyChain(user_needs="bake a cake", risk_intent="No risk", safety_guidelines="",
                         usefulness_strategies=[strategy("U1")], safety_strategies=[strategy("S1")])
    clients, service = _world(cases)
    results = optimize_batch(service, _items(cases, chain=benign), _settings(["user"]))
    sent = [m.content for r in clients["actor"].requests for m in r.messages if m.role == "system"]
    assert len(sent) == 2 * len(cases)          # the answer, then the actor's own reasoning (natural recombination)
    for res, answer, reasoning in zip(results, sent[:len(cases)], sent[len(cases):]):
        chain = res.trace[1].chain
        assert chain is not None and chain.is_no_risk()
        collapsed = chain.collapsed().render("en")
        for system in (answer, reasoning):
            assert collapsed in system
            assert "Risk intent" not in system and "Safety strategies" not in system
            assert strategy("S1") in system                      # safety strategies merged, not lost


# §6.2 / §10.3 #11 -----------------------------------------------------------------------------------------

def test_both_mode_ignores_the_user_side_feedback() -> None:
    """Reference: mode `both` asked for User-* and Developer-* updates and used only Developer-*. Ours: the
    editor gets both judges' feedback in one prompt and its one reply is applied, user side included."""
    cases = make_cases(12, seed=8)
    cases = [c for c in cases if set(c.good_u) - tokens_of(c.initial) and set(c.good_s) - tokens_of(c.initial)
             and not {"H1", "R1"} & tokens_of(c.initial)][:4]
    assert cases
    clients, service = _world(cases)
    results = optimize_batch(service, _items(cases), _settings(["both"], early_stop=None))
    for case, res, prompt in zip(cases, results, _prompts(clients["editor"])):
        assert "user simulator's full assessment" in prompt and "safety auditor's full assessment" in prompt
        assert res.trace[0].user is not None and res.trace[0].user.suggestion in prompt
        added = tokens_of(res.trace[1].chain) - tokens_of(case.initial)  # type: ignore[arg-type]
        assert added & set(case.good_u), "the user-side edit was applied"
        assert added & set(case.good_s), "the safety-side edit was applied"
    # and each single mode sees only its own judge
    u = UserJudgement(persona="p", politeness=1, willingness_to_help=1, task_completion=0, logic=1,
                      informativeness=0, suggestion="USER-TIP")
    s = SafetyJudgement(risk_intent="r", adapted_guideline="g", verdict="partly_safe", suggestion="SAFETY-TIP")
    es = EditSettings(unfrozen=UNFROZEN, max_changes=2, similarity=JaccardSimilarity())
    only_user = edit_prompt("q", "r", SafetyChain(), u, s, "user", "en", es)[0].content
    only_dev = edit_prompt("q", "r", SafetyChain(), u, s, "developer", "en", es)[0].content
    assert "USER-TIP" in only_user and "SAFETY-TIP" not in only_user
    assert "SAFETY-TIP" in only_dev and "USER-TIP" not in only_dev


def test_prompts_filled_by_chained_str_replace() -> None:
    """Reference: placeholders were filled by chained str.replace, so a query holding "{response}" rewrote
    the prompt. Ours: jinja2 inserts values; template syntax in user text stays text."""
    nasty = "tell me {response} and {{ plan }} {% if true %}x{% endif %}"
    text = edit_prompt(nasty, "REPLY", SafetyChain(usefulness_strategies=["u"]), None, None, "both", "en",
                       EditSettings(unfrozen=UNFROZEN, max_changes=2, similarity=JaccardSimilarity()))[0].content
    assert f"Question: {nasty}\n" in text and text.count("REPLY") == 1


# §6.6 / §10.3 #15 -----------------------------------------------------------------------------------------

def test_pruning_checked_only_on_perfect_scores() -> None:
    """Reference: pruning fired only on score == 1 for both judges. Ours: the pearl point per mode is
    configurable; a loop stops as soon as its thresholds are met."""
    cases = make_cases(20, seed=10)
    _, service = _world(cases)
    pearl = {m: PearlPoint(satisfaction=0.2, safety=0.5) for m in ("user", "developer", "both")}
    results = optimize_batch(service, _items(cases), _settings(["both", "both", "both"], early_stop=pearl))
    early = [r for r in results if r.stop_reason and "pearl point" in r.stop_reason]
    assert early and any(r.trace[-1].user.score < 1.0 for r in early)  # type: ignore[union-attr]
    for r in early:
        assert r.trace[-1].user.score >= 0.2 and r.trace[-1].safety.score >= 0.5  # type: ignore[union-attr]


def test_a_judge_that_fails_every_attempt_crashes_pruning() -> None:
    """Reference: a judge that failed returned None, then `None['score']` crashed the pruning check.
    Ours: the failure is recorded with its reason on the entry and ends that query's loop."""
    cases = make_cases(4, seed=12)
    _, service = _world(cases, max_retries=0, malformed={"user_judge": 1})
    results = optimize_batch(service, _items(cases), _settings(["both", "both"],
                                                                 early_stop={"both": PearlPoint()}))
    for r in results:
        assert len(r.trace) == 1 and r.trace[0].reward is None
        assert "invalid UserJudgementReply" in (r.trace[0].failure or "")
        assert "failure" in (r.stop_reason or "")


@pytest.mark.parametrize("role, reason", [("editor", "editor: invalid EditReply")])
def test_editor_failing_every_attempt_is_unbound_local_error(role: str, reason: str) -> None:
    """Reference: when all editor tries failed, `result` was unbound (UnboundLocalError). Ours: a trace
    entry with the reason, the entries before it kept."""
    cases = make_cases(3, seed=13)
    clients, service = _world(cases, max_retries=1)
    clients[role].always_malformed = True
    results = optimize_batch(service, _items(cases), _settings(["both"], early_stop=None))
    for r in results:
        assert r.trace[0].reward is not None
        assert len(r.trace) == 2 and (r.trace[1].failure or "").startswith(reason)
        assert r.best_index == 0
