"""Generation for evaluation: thinking-mode handling, the local batched path, and the server path and
judges against the real loopback HTTP server."""
from __future__ import annotations

import pytest

from oyster_exp.csa.records import EvalRecord
from oyster_exp.data.taxonomy import default_taxonomy
from oyster_exp.evaluation.benchmarks.strata_sword import StrataSwordItem, strata_task
from oyster_exp.evaluation.generation import (
    SUBJECT_ROLE,
    GenerationSettings,
    bind_subject,
    conversation,
    generate,
    local_subject,
    make_answer,
    split_think,
)
from oyster_exp.evaluation.judges import EvalJudge
from oyster_exp.evaluation.subjects import ServerSubject
from oyster_exp.evaluation.suite import run_task
from oyster_exp.llm.base import LLMClient
from oyster_exp.llm.engine import CallEngine
from oyster_exp.llm.openai_compat import OpenAICompatClient
from oyster_exp.llm.service import LLMService, RoleBinding
from oyster_exp.testing.loopback import serve


class _Journal:
    """The journal's interface (membership by id, append) in memory."""

    def __init__(self) -> None:
        self.records: dict[str, EvalRecord] = {}

    def __contains__(self, rid: str) -> bool:
        return rid in self.records

    def append(self, rec: EvalRecord) -> None:
        assert rec.id not in self.records, f"written twice: {rec.id}"
        self.records[rec.id] = rec


# --- thinking mode -------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, think, answer", [
    ("plain answer", "", "plain answer"),
    ("<think>plan it</think>\n\nThe answer.", "plan it", "The answer."),
    ("plan opened by the template</think>The answer.", "plan opened by the template", "The answer."),
    ("<think>a</think>x<think>b</think>y", "a\nb", "xy"),
    ("Partial <think>ran out of budget", "ran out of budget", "Partial"),
])
def test_split_think(content: str, think: str, answer: str) -> None:
    assert split_think(content) == (think, answer)


def test_strip_keep_and_budget_exhausted() -> None:
    stripped = make_answer("<think>secret plan</think>Safe answer.", "", "strip")
    assert stripped.text == "Safe answer." and stripped.think == "secret plan" and stripped.failure is None
    kept = make_answer("<think>secret plan</think>Safe answer.", "", "keep")
    assert "secret plan" in kept.text and kept.text.endswith("Safe answer.")
    server_reasoning = make_answer("Safe answer.", "from reasoning_content", "strip")
    assert server_reasoning.think == "from reasoning_content" and server_reasoning.text == "Safe answer."
    cut = make_answer("<think>still thinking when the budget ran out", "", "strip")
    assert cut.failure is not None and "inside <think>" in cut.failure and cut.think


# --- local backend: padded batches of eval.generation.batch_size ----------------------------------------

def test_local_subject_generates_in_batches_of_its_size(tiny_model_dir) -> None:
    client = local_subject(tiny_model_dir, "tiny-eval", "float32", batch_size=3)
    calls: list[tuple[int, int]] = []
    original = client.lockstep.run

    def recording(rows, *args, **kw):
        calls.append((len(rows), len({r.prompt_tokens for r in rows})))
        return original(rows, *args, **kw)

    client.lockstep.run = recording
    try:
        svc = LLMService({})
        settings = GenerationSettings(max_new_tokens=6, temperature=1.0, batch_size=3)
        bind_subject(svc, client, settings)
        prompts = ["hi", "a much longer question about bread and flour", "x", "what is tea", "rain?", "a b c d e f"]
        answers = generate(svc, [conversation(p, "be brief") for p in prompts], settings)
    finally:
        client.lockstep.run = original
    assert len(answers) == 6 and [n for n, _ in calls] == [3, 3]
    assert any(lengths > 1 for _, lengths in calls), "prompts of different lengths share a batch"
    assert all(a.text or a.failure for a in answers)
    assert svc.usage.totals()["calls"] >= 6


# --- server backend and judges on the real loopback server -------------------------------------------------

def _server(url: str, served: str) -> ServerSubject:
    return ServerSubject(base_url=url, models={"base": served}, api_key_env="OYSTER_EVAL_TEST_KEY",
                         thinking_param="chat_template_kwargs", concurrency=4, max_attempts=3, timeout_s=10.0)


def _server_client(url: str, served: str) -> LLMClient:
    client = _server(url, served).client("base", lambda: None, "float32", 1)
    assert client is not None
    return client


def test_server_subject_sends_decoding_settings_and_splits_reasoning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OYSTER_EVAL_TEST_KEY", "sk-eval-test-000")
    with serve() as (url, state):
        svc = LLMService({})
        settings = GenerationSettings(max_new_tokens=33, temperature=0.6, top_p=0.95, enable_thinking=True)
        bind_subject(svc, _server_client(url, "served-base"), settings)
        answers = generate(svc, [conversation("What is tea?", "sys"), conversation("Why rain?")], settings)
    assert [a.text for a in answers] == ["echo: What is tea?", "echo: Why rain?"]
    assert all(a.think == "thinking..." for a in answers)            # reasoning_content kept, not judged
    # the two requests run concurrently: find the one with the system prompt by content, not arrival order
    (body,) = [b for b in state.bodies if b["messages"][-1]["content"] == "What is tea?"]
    assert len(state.bodies) == 2
    assert body["model"] == "served-base" and body["max_tokens"] == 33
    assert body["temperature"] == 0.6 and body["top_p"] == 0.95
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["messages"][0] == {"role": "system", "content": "sys"}
    assert body["auth"] == "Bearer sk-eval-test-000"


def test_strata_task_through_the_server_records_every_verdict_with_reason() -> None:
    tax = default_taxonomy()
    items = [StrataSwordItem(id=f"en-L2-{i:04d}", language="en", level=2, prompt=f"attack {i}",
                             attack_method="Shuffle") for i in range(1, 6)]
    with serve() as (url, state):
        client = OpenAICompatClient(url, "served", api_key_env=None,
                                    engine=CallEngine(concurrency=4, max_attempts=2, backoff_base_s=0.01))
        svc = LLMService({"safety_judge": RoleBinding(client=client)})
        settings = GenerationSettings(max_new_tokens=16)
        bind_subject(svc, client, settings)
        judge = EvalJudge(svc, "safety_judge")
        journal = _Journal()
        run_task(strata_task(items, judge, tax, classify=True, system_prompt=""), "base", svc, journal, settings,
                 chunk_size=2)
        n_requests = state.requests
        run_task(strata_task(items, judge, tax, classify=True, system_prompt=""), "base", svc, journal, settings,
                 chunk_size=2)                                       # resumed: nothing left to do
        assert state.requests == n_requests
    recs = list(journal.records.values())
    assert len(recs) == 5 and all(r.failure is None for r in recs)
    # the loopback answers a schema with its first enum option: the first category, verdict "safe"
    assert {r.meta["category"] for r in recs} == {tax.names_en()[0]}
    assert all(r.verdict == "safe" and r.meta["reason"] == "ok" and r.meta["level"] == 2 for r in recs)
    judged_prompts = [b["messages"][0]["content"] for b in state.bodies if "response_format" in b]
    assert any("Rule for this category" in p for p in judged_prompts)   # the category's rule reached the judge
    assert n_requests == 15                                          # classify + answer + judge per item


def test_unparseable_judge_replies_are_counted_failures_not_dropped() -> None:
    items = [StrataSwordItem(id=f"cn-L1-{i:04d}", language="cn", level=1, prompt=f"问题 {i}") for i in range(1, 4)]
    with serve() as (url, _):
        subject = OpenAICompatClient(url, "served", api_key_env=None, engine=CallEngine(max_attempts=1))
        # json_object without a schema: the server echoes free text, which never validates
        bad_judge = OpenAICompatClient(url, "judge", api_key_env=None, json_schema=False,
                                       engine=CallEngine(max_attempts=1))
        svc = LLMService({"judge": RoleBinding(client=bad_judge)}, max_retries=1)
        settings = GenerationSettings(max_new_tokens=8)
        bind_subject(svc, subject, settings)
        journal = _Journal()
        run_task(strata_task(items, EvalJudge(svc, "judge"), default_taxonomy(), classify=True, system_prompt=""),
                 "trained", svc, journal, settings, chunk_size=8)
    recs = list(journal.records.values())
    assert len(recs) == 3
    assert all(r.verdict is None and r.failure and r.failure.startswith("judge: invalid") for r in recs)
    assert all("category_failure" in r.meta for r in recs)      # classification failed too; judged rule-less
    assert svc.usage.totals()["failures"] == 6


def test_unknown_judge_role_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="eval.judge.role"):
        EvalJudge(LLMService({SUBJECT_ROLE: RoleBinding(client=None)}), "no_such_role")  # type: ignore[arg-type]


# --- a reasoning phase that used the whole budget: closed, then answered (eval.generation.answer_after_think) --

def test_reasoning_that_ran_out_is_closed_and_answered_within_the_extra_budget() -> None:
    from oyster_exp.testing.loopback import THINK_FOREVER

    convs = [conversation(f"{THINK_FOREVER} weigh the risks"), conversation("plain question")]
    with serve() as (url, state):
        svc = LLMService({})
        off = GenerationSettings(max_new_tokens=16)
        bind_subject(svc, _server_client(url, "served"), off)
        cut, plain = generate(svc, convs, off)
        assert cut.failure is not None and "inside <think>" in cut.failure and not cut.think_closed_by_budget
        assert plain.text == "echo: plain question" and state.requests == 2

        on = GenerationSettings(max_new_tokens=16, answer_after_think=7)
        forced, plain = generate(svc, convs, on)
        assert state.requests == 2 + 2 + 1             # both asked again (no cache here), then one forced call
        body = state.bodies[-1]
    assert forced.failure is None and forced.think_closed_by_budget and not plain.think_closed_by_budget
    assert forced.think == f"{THINK_FOREVER} weigh the risks"
    assert forced.text == f"continued: {THINK_FOREVER} weigh the risks"        # only the answer is judged
    assert body["max_tokens"] == 7
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["messages"][-1] == {"role": "assistant",
                                    "content": f"<think>\n{THINK_FOREVER} weigh the risks\n</think>\n\n"}
    kept = make_answer("<think>\nplan\n</think>\n\nanswer", "", "keep")
    assert kept.text.startswith("<think>") and kept.text.endswith("answer")


def test_local_backend_continues_an_assistant_prefill(tiny_model_dir) -> None:
    from oyster_exp.llm.base import ChatMessage, ChatRequest

    client = local_subject(tiny_model_dir, "tiny-eval", "float32", batch_size=2)
    prefill = "<think>\nplan\n</think>\n\n"
    user = [ChatMessage(role="user", content="hi")]
    opened = client.tokenizer.decode(client.prompt_ids(ChatRequest(messages=user)))
    cont = client.tokenizer.decode(client.prompt_ids(ChatRequest(
        messages=[*user, ChatMessage(role="assistant", content=prefill)])))
    assert cont == opened + prefill                    # the same turn, left open after the prefill
    reply = client.chat_batch([ChatRequest(messages=[*user, ChatMessage(role="assistant", content=prefill)],
                                           max_tokens=3)])[0]
    assert reply.usage.prompt_tokens == len(client.prompt_ids(ChatRequest(
        messages=[*user, ChatMessage(role="assistant", content=prefill)])))


def test_dashscope_continues_an_assistant_prefill_in_partial_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from oyster_exp.llm.base import ChatMessage, ChatRequest
    from oyster_exp.llm.dashscope import DashScopeClient

    monkeypatch.setenv("OYSTER_EVAL_TEST_DS_KEY", "sk-ds-test-000")
    client = DashScopeClient("qwq-plus", api_key_env="OYSTER_EVAL_TEST_DS_KEY")
    kw = client.kwargs(ChatRequest(messages=[ChatMessage(role="user", content="q"),
                                             ChatMessage(role="assistant", content="<think>\nx\n</think>\n\n")]))
    assert kw["messages"][-1]["partial"] is True and kw["messages"][0].get("partial") is None
    plain = client.kwargs(ChatRequest(messages=[ChatMessage(role="user", content="q")]))
    assert "partial" not in plain["messages"][-1]
