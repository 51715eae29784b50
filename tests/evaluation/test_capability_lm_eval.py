"""The lm-evaluation-harness path with lm-eval really installed: the packaged offline task and a user task
from `include_path` scored on the tiny model in-process, failures recorded with their reason, and the
tidy result rows. Skipped when the `lm_eval` extra is not installed."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from oyster_exp.csa.records import EvalRecord
from oyster_exp.evaluation.benchmarks.capability import PACKAGED_TASKS, task_files
from oyster_exp.evaluation.subjects import LocalSubject, ServerSubject
from oyster_exp.evaluation.summary import summarise

ITEMS = [json.loads(x) for x in (PACKAGED_TASKS / "household_mcq.jsonl").read_text().splitlines()]

USER_TASK = """task: user_colours
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: ["red", "green", "blue"]
doc_to_target: gold
metric_list:
  - metric: acc
"""


def _user_tasks(root: Path) -> Path:
    """A user's include_path: one task whose data sits at an absolute path, one whose data is gone."""
    data = root / "colours.jsonl"
    data.write_text("".join(json.dumps({"q": f"Colour number {i}?", "gold": i % 3}) + "\n" for i in range(6)))
    tasks = root / "tasks"
    tasks.mkdir()
    cache = root / "hf_datasets"                                  # keeps the user's datasets cache clean
    (tasks / "user_colours.yaml").write_text(USER_TASK.format(data=data, cache=cache))
    (tasks / "user_gone.yaml").write_text(USER_TASK.format(data=root / "gone.jsonl", cache=cache)
                                          .replace("user_colours", "user_gone"))
    return tasks


def _reference_scores(model_dir: Path) -> tuple[float, float]:
    """acc and acc_norm of the packaged task computed straight from transformers: the argmax over choices of
    the summed log-likelihood of ' choice' after the prompt (acc_norm divides by the choice's byte length)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hits = hits_norm = 0
    for it in ITEMS:
        ctx = f"Question: {it['question']}\nAnswer:"
        lls, norms = [], []
        for choice in it["choices"]:
            n_ctx = len(tok(ctx, add_special_tokens=False).input_ids)
            whole = tok(ctx + " " + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(lm(torch.tensor([whole])).logits[0, :-1].float(), dim=-1)
            ll = float(sum(logp[i - 1, whole[i]] for i in range(n_ctx, len(whole))))
            lls.append(ll)
            norms.append(ll / len((" " + choice).encode()))
        hits += int(max(range(4), key=lls.__getitem__) == it["answer"])
        hits_norm += int(max(range(4), key=norms.__getitem__) == it["answer"])
    return hits / len(ITEMS), hits_norm / len(ITEMS)


def test_capability_rows_name_task_metric_and_filter_with_the_stderr_ci() -> None:
    meta = {"split": "lm_eval", "n": 20, "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict-match": 0.25,
            "exact_match_stderr,strict-match": 0.05, "bleu,none": 3.0}
    recs = [EvalRecord(id="base/capability/t", model="base", benchmark="capability", item_id="t", prompt="",
                       meta=meta),
            EvalRecord(id="base/capability/x", model="base", benchmark="capability", item_id="x", prompt="",
                       failure="lm_eval: task not found: x", meta={"split": "lm_eval", "n": 0})]
    rows, _ = summarise(recs, resamples=10)
    get = {r["metric"]: r for r in rows}
    assert set(get) == {"n_judged", "n_failed", "n_skipped", "t:acc", "t:exact_match[strict-match]", "t:bleu"}
    assert get["n_failed"]["value"] == 1 and get["n_judged"]["value"] == 1
    acc = get["t:acc"]
    assert (acc["benchmark"], acc["split"], acc["value"], acc["n"]) == ("capability", "lm_eval", 0.5, 20)
    assert acc["ci_low"] == pytest.approx(0.5 - 1.96 * 0.1) and acc["ci_high"] == pytest.approx(0.5 + 1.96 * 0.1)
    assert get["t:exact_match[strict-match]"]["ci_low"] == pytest.approx(0.25 - 1.96 * 0.05)
    assert math.isnan(get["t:bleu"]["ci_low"])                      # no stderr from lm-eval: no CI


def test_a_missing_include_path_is_a_config_error_or_a_counted_skip(compose_cfg, tmp_path: Path) -> None:
    from oyster_exp.core.errors import StageError
    from oyster_exp.stages.evaluate import missing_data

    on = ("eval.capability.enabled=true", f"eval.capability.include_path={tmp_path / 'nope'}")
    with pytest.raises(StageError, match=r"eval.capability.include_path: .*nope is not a directory"):
        missing_data(compose_cfg(*on, "eval.on_missing_data=error"))
    assert "nope is not a directory" in missing_data(compose_cfg(*on, "eval.on_missing_data=skip"))["capability"]
    assert "capability" not in missing_data(compose_cfg(on[0], f"eval.capability.include_path={tmp_path}"))
    (tmp_path / "mine.yaml").write_text("task: mine\n")           # local task files key the stage's cache
    assert {"packaged/oyster_household_mcq.yaml", "packaged/household_mcq.jsonl", "include_path/mine.yaml"} <= \
        set(task_files(tmp_path))
    cfg = compose_cfg()                                           # eval=quick: off, the packaged task ready
    assert cfg.eval.capability.enabled is False and list(cfg.eval.capability.tasks) == ["oyster_household_mcq"]


@pytest.mark.slow
def test_local_tasks_score_on_the_tiny_model_and_failures_keep_their_reason(tiny_model_dir: Path,
                                                                            tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    import torch

    from oyster_exp.evaluation.benchmarks.capability import run_lm_eval

    mtype, args = LocalSubject().lm_eval_model("base", lambda: (tiny_model_dir, "tiny"), "float32")  # type: ignore[misc]
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)
    scores = {s.task: s for s in run_lm_eval(mtype, args, ["oyster_household_mcq", "user_colours", "user_gone",
                                                            "no_such_task"], limit=None, num_fewshot=None,
                                             batch_size=8, include_path=_user_tasks(tmp_path))}
    assert torch.equal(torch.rand(3), expected_draw)               # lm-eval's reseeding did not leak out
    assert set(scores) == {"oyster_household_mcq", "user_colours", "user_gone", "no_such_task"}
    hh = scores["oyster_household_mcq"]
    assert hh.failure is None and hh.n == len(ITEMS) == 20
    assert set(hh.metrics) == {"acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"}
    acc, acc_norm = _reference_scores(tiny_model_dir)
    assert hh.metrics["acc,none"] == pytest.approx(acc) and hh.metrics["acc_norm,none"] == pytest.approx(acc_norm)
    assert 0 <= acc <= 1 and hh.metrics["acc_stderr,none"] == pytest.approx(math.sqrt(acc * (1 - acc) / 19))
    user = scores["user_colours"]
    assert user.failure is None and user.n == 6 and 0 <= user.metrics["acc,none"] <= 1
    assert (tmp_path / "hf_datasets").is_dir()                     # the task's dataset_kwargs reached datasets
    assert "gone.jsonl" in str(scores["user_gone"].failure)
    assert "task not found: no_such_task" in str(scores["no_such_task"].failure)


def test_a_missing_include_path_fails_every_task_with_the_config_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval")
    from oyster_exp.evaluation.benchmarks.capability import run_lm_eval

    mtype, args = LocalSubject().lm_eval_model("base", lambda: (tiny_model_dir, "tiny"), "float32")  # type: ignore[misc]
    scores = run_lm_eval(mtype, args, ["oyster_household_mcq"], limit=2, num_fewshot=None, batch_size=8,
                         include_path=tmp_path / "nope")
    assert [s.task for s in scores] == ["oyster_household_mcq"]
    assert "eval.capability.include_path" in str(scores[0].failure) and "nope" in str(scores[0].failure)


def test_a_server_without_completions_logprobs_is_a_recorded_failure(tiny_model_dir: Path) -> None:
    """The server subject maps to lm-eval's local-completions, which needs /v1/completions with prompt logprobs;
    the loopback server speaks only /v1/chat/completions, so the task fails with lm-eval's reason (a known
    limitation: no test scores a task through a server)."""
    pytest.importorskip("lm_eval")
    from oyster_exp.evaluation.benchmarks.capability import run_lm_eval
    from oyster_exp.testing.loopback import serve

    with serve() as (url, state):
        mtype, args = ServerSubject(base_url=url, models={"base": "tiny"}).lm_eval_model(  # type: ignore[misc]
            "base", lambda: None, "float32")
        assert (mtype, args) == ("local-completions", f"model=tiny,base_url={url}/completions")
        args += f",tokenizer={tiny_model_dir},tokenizer_backend=huggingface,max_retries=1"   # no hub tokenizer
        (score,) = run_lm_eval(mtype, args, ["oyster_household_mcq"], limit=2, num_fewshot=None, batch_size=1)
    assert score.task == "oyster_household_mcq" and not score.metrics
    assert "404" in str(score.failure) and "/v1/completions" in str(score.failure)
