"""ORPO / SFT training: pure losses, tokenisation and batching, a real Lightning Trainer, TRL parity."""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from oyster_exp.training.data import BucketBatchSampler, PreferenceDataModule, collate
from oyster_exp.training.losses import (
    IGNORE,
    LOG1MEXP_CAP,
    full_sequence_labels,
    linear_token_logps,
    log1mexp,
    orpo_loss,
    sequence_logps,
    sft_loss,
    token_nll,
)
from oyster_exp.training.module import PreferenceModule
from oyster_exp.training.objectives import NllSpan, ORPOLoss, SFTLoss, TrainingLoss
from oyster_exp.training.run import fit_preference_model
from oyster_exp.training.tokenize import PreferenceExample, tokenize_example

LOSSES: dict[str, type[TrainingLoss]] = {"orpo": ORPOLoss, "sft": SFTLoss}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny model gains nothing from threads, and on a busy 2-core machine OpenMP threads that
    wait for each other made a training step ~100x slower (1.4 s instead of 0.015 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen")


# ---------------------------------------------------------------- pure losses

def test_orpo_loss_matches_the_naive_odds_formula() -> None:
    g = torch.Generator().manual_seed(0)
    c = -torch.rand(64, generator=g, dtype=torch.float64) * 3 - 0.01
    r = -torch.rand(64, generator=g, dtype=torch.float64) * 3 - 0.01
    nll, beta = torch.tensor(1.7, dtype=torch.float64), 0.25
    loss, m = orpo_loss(c.float(), r.float(), nll.float(), beta=beta)
    # independent reference, in float64: odds = p / (1 - p) with p = exp(mean token log-prob)
    p_c, p_r = torch.exp(c), torch.exp(r)
    log_odds = torch.log((p_c / (1 - p_c)) / (p_r / (1 - p_r)))
    ratio = torch.log(torch.sigmoid(log_odds))
    expected = {
        "rewards/chosen": beta * c.mean(), "rewards/rejected": beta * r.mean(),
        "rewards/accuracies": (c > r).double().mean(), "rewards/margins": beta * (c - r).mean(),
        "logps/chosen": c.mean(), "logps/rejected": r.mean(), "nll_loss": nll,
        "log_odds_ratio": ratio.mean(), "log_odds_chosen": log_odds.mean(),
    }
    assert float(loss) == pytest.approx(float(nll - beta * ratio.mean()), rel=1e-5)
    assert set(m) == set(METRICS)
    for key, value in expected.items():
        assert float(m[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), key


def test_log1mexp_is_stable_near_zero_and_far_below() -> None:
    x = torch.tensor([0.0, -1e-20, -1e-10, -1e-7, -1e-6, -1e-5, -1e-3, -0.69, -0.7, -10.0, -80.0, -1e4, -1e30])
    y = log1mexp(x)
    assert torch.isfinite(y).all(), y
    exact = torch.log(-torch.expm1(x.double()))  # float64 reference
    scored = x <= LOG1MEXP_CAP
    assert torch.allclose(y[scored].double(), exact[scored], rtol=1e-5, atol=1e-30)
    assert (y[~scored] == log1mexp(torch.tensor([LOG1MEXP_CAP]))).all()  # capped just below 0
    naive = torch.log(1 - torch.exp(x))  # what the stable form avoids
    assert not torch.isfinite(naive[:3]).any()


def test_orpo_gradients_stay_finite_when_completions_are_nearly_certain() -> None:
    c = torch.tensor([0.0, -1e-9, -1e-6, -0.5, -1e-7], requires_grad=True)
    r = torch.tensor([0.0, -1e-8, -50.0, -1e-9, -30.0], requires_grad=True)
    loss, metrics = orpo_loss(c, r, torch.tensor(0.0), beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all(), (c.grad, r.grad)
    assert c.grad.abs().max() < 1e6


def test_sequence_logps_and_sft_loss_against_log_softmax() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5, IGNORE], [IGNORE, 1, 2, IGNORE, IGNORE, IGNORE]])
    lp = torch.log_softmax(logits.double(), -1)
    row0 = [lp[0, 1, 3], lp[0, 2, 4], lp[0, 3, 5]]
    row1 = [lp[1, 0, 1], lp[1, 1, 2]]
    summed = sequence_logps(logits, labels, average=False)
    mean = sequence_logps(logits, labels, average=True)
    assert torch.allclose(summed.double(), torch.stack([sum(row0), sum(row1)]), atol=1e-5)
    assert torch.allclose(mean.double(), torch.stack([sum(row0) / 3, sum(row1) / 2]), atol=1e-5)
    reference = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    assert float(sft_loss(logits, labels)) == pytest.approx(float(reference), rel=1e-5)
    assert float(token_nll(logits, torch.full_like(labels, IGNORE))) == 0.0  # nothing scored: 0, not NaN
    half = sequence_logps(logits.bfloat16(), labels, average=True)
    assert half.dtype == torch.float32


# ---------------------------------------------------------------- tokenisation and batching

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ex(i: int, prompt_words: int = 3, system: bool = False) -> PreferenceExample:
    prompt = [{"role": "system", "content": "be safe"}] if system else []
    prompt.append({"role": "user", "content": " ".join(["question"] * prompt_words) + f" {i}"})
    return PreferenceExample(id=f"p{i}", prompt=prompt,
                             chosen=f"<think>\nhelp safely\n</think>\n\nsafe helpful answer {i % 2}",
                             rejected="unsafe answer")


def test_labels_mask_exactly_prompt_and_padding(tokenizer: Any) -> None:
    examples = [_ex(i, prompt_words=1 + 4 * i, system=i == 1) for i in range(3)]
    feats = [tokenize_example(e, tokenizer, 256) for e in examples]
    batch = collate(feats, pad_id=tokenizer.pad_token_id)
    for side in ("chosen", "rejected"):
        ids, mask = batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
        labels, full = batch[f"{side}_labels"], batch[f"{side}_labels_full"]
        for row, f in enumerate(feats):
            n, length = f["prompt_len"], len(f[f"{side}_input_ids"])
            expected = [IGNORE] * n + ids[row, n:length].tolist() + [IGNORE] * (ids.shape[1] - length)
            assert labels[row].tolist() == expected
            assert mask[row].tolist() == [1] * length + [0] * (ids.shape[1] - length)
            assert ids[row, length:].eq(tokenizer.pad_token_id).all()
            assert ids[row, length - 1] == tokenizer.eos_token_id  # the completion ends with eos
        assert torch.equal(full, full_sequence_labels(ids, mask))
    prompt = tokenizer.apply_chat_template(examples[0].prompt, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(feats[0]["chosen_input_ids"][:feats[0]["prompt_len"]]) == prompt
    assert tokenizer.decode(feats[0]["chosen_input_ids"][feats[0]["prompt_len"]:]).startswith("<think>")


@pytest.mark.parametrize("truncation", ["keep_end", "keep_start"])
def test_truncation_shortens_the_prompt_and_keeps_the_completion(tokenizer: Any, truncation: str) -> None:
    full = tokenize_example(_ex(0, system=True), tokenizer, max_length=4096)
    short = tokenize_example(_ex(0, prompt_words=300, system=True), tokenizer, max_length=64, truncation=truncation)
    completion = full["chosen_input_ids"][full["prompt_len"]:]
    assert len(short["chosen_input_ids"]) == 64
    assert short["chosen_input_ids"][-len(completion):] == completion
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    prompt = short["chosen_input_ids"][:short["prompt_len"]]
    assert prompt[-len(header):] == header  # the model still sees where its turn starts
    start = full["chosen_input_ids"][:5]
    assert (prompt[:5] == start) is (truncation == "keep_start")
    # a completion longer than max_length: the prompt keeps half the budget, the completion is cut
    long = PreferenceExample(id="x", prompt=_ex(0).prompt, chosen="answer " * 200, rejected="no")
    cut = tokenize_example(long, tokenizer, max_length=32)
    assert cut["prompt_len"] == min(full["prompt_len"], 16) and len(cut["chosen_input_ids"]) == 32


def test_bucket_sampler_covers_every_index_and_groups_lengths() -> None:
    lengths = [5, 50, 6, 51, 7, 52, 8, 53, 100]
    sampler = BucketBatchSampler(list(range(9)), 2, lengths=lengths, seed=3)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == 5
    assert sorted(i for b in first for i in b) == list(range(9))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 2 for b in first)
    assert first == list(BucketBatchSampler(list(range(9)), 2, lengths=lengths, seed=3))  # seeded
    assert first != second  # a new order each epoch
    unsorted = BucketBatchSampler(list(range(9)), 4, drop_last=True, lengths=lengths, bucketing=False)
    assert len(list(unsorted)) == len(unsorted) == 2


# ---------------------------------------------------------------- a real Lightning Trainer

class _LossTrace(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(model_dir: Path, tokenizer: Any, objective: str, tmp: Path,
         val: list[PreferenceExample]) -> tuple[dict[str, float], list[float]]:
    module = PreferenceModule(str(model_dir), loss=LOSSES[objective](),
                              optimizer=functools.partial(torch.optim.AdamW, lr=5e-3))
    data = PreferenceDataModule([_ex(i) for i in range(8)], val, tokenizer, max_length=128, batch_size=2)
    trace = _LossTrace()
    trainer = L.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[trace],
                        default_root_dir=str(tmp), num_sanity_val_steps=0)
    metrics = fit_preference_model(module, data, trainer, tmp / "export",
                                   card_config={"objective": objective, "lr": 5e-3})
    assert trainer.global_step == 8
    return metrics, trace.losses


def test_orpo_trains_logs_and_exports(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    metrics, losses = _fit(tiny_model_dir, tokenizer, "orpo", tmp_path, val=[_ex(9)])
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses
    for key in ("train/loss", *(f"train/{k}" for k in METRICS), "val/loss", "val/log_odds_ratio"):
        assert key in metrics, sorted(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert reloaded.num_parameters() > 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "objective: orpo" in card and "lr: 0.005" in card
    assert f"train/loss: {metrics['train/loss']}" in card and f"val/loss: {metrics['val/loss']}" in card


def test_sft_trains_without_a_validation_split(tiny_model_dir: Path, tokenizer: Any, tmp_path: Path) -> None:
    metrics, losses = _fit(tiny_model_dir, tokenizer, "sft", tmp_path, val=[])
    assert losses[-1] < losses[0], losses
    assert "train/nll_loss" in metrics and "train/log_odds_ratio" not in metrics
    assert not any(k.startswith("val/") for k in metrics)
    assert (tmp_path / "export" / "model.safetensors").exists()


def test_progress_bar_on_a_terminal_only_and_never_in_the_train_key(compose_cfg, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    import io
    import sys

    from oyster_exp.stages.train import TrainStage
    from oyster_exp.training.run import build_trainer, progress_bar_for

    def key(*overrides: str) -> str:
        return repr(TrainStage().config_slice(compose_cfg("model=tiny_random", *overrides)))

    assert key() == key("trainer.enable_progress_bar=true") == key("trainer.enable_progress_bar=false")
    assert key() != key("trainer.max_steps=3")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    node = compose_cfg().trainer
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert progress_bar_for(node) and not progress_bar_for({"enable_progress_bar": False})
    trainer = build_trainer(node, logger=False, enable_progress_bar=progress_bar_for(node))
    assert trainer.progress_bar_callback is not None
    monkeypatch.setattr(sys, "stdout", io.StringIO())                  # a log file, a pipe, a test
    assert not progress_bar_for(node) and progress_bar_for({"enable_progress_bar": True})
    assert build_trainer(node, logger=False, enable_progress_bar=progress_bar_for(node)).progress_bar_callback is None


def test_gradient_checkpointing_gives_the_same_loss(tiny_model_dir: Path, tokenizer: Any) -> None:
    batch = collate([tokenize_example(_ex(i), tokenizer, 128) for i in range(2)], tokenizer.pad_token_id)
    plain = PreferenceModule(str(tiny_model_dir))
    checkpointed = PreferenceModule(str(tiny_model_dir), gradient_checkpointing=True)
    a, b = plain.compute(batch)[0], checkpointed.compute(batch)[0]
    b.backward()
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    assert all(p.grad is not None for p in checkpointed.model.parameters() if p.requires_grad)
    checkpointed.forward_layout = "packed"   # its backward would replay the layers with plain attention
    with pytest.raises(ValueError, match="activation checkpointing"):
        checkpointed.compute(batch)


# ---------------------------------------------------------------- parity with TRL's ORPOTrainer

@pytest.fixture(scope="module")
def trl_reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """TRL tokenises and collates a batch itself, then computes its loss, metrics and gradients."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    rows = [{"prompt": [{"role": "user", "content": "question about safety " * (1 + i % 3) + str(i)}],
             "chosen": [{"role": "assistant", "content": f"a careful helpful answer {i}"}],
             "rejected": [{"role": "assistant", "content": "no " * (1 + 3 * (i % 2))}]} for i in range(4)]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    args = ORPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), use_cpu=True, bf16=False, fp16=False,
                      activation_checkpointing=False, beta=0.1, per_device_train_batch_size=4, max_length=128,
                      disable_dropout=True, report_to=[], remove_unused_columns=False, save_strategy="no")
    trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    model.zero_grad()
    loss, metrics = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return {"batch": batch, "loss": float(loss.detach()), "metrics": metrics, "grads": grads, "rows": rows,
            "tokenized": trainer.train_dataset, "pad_id": tok.pad_token_id}


def _our_batch(trl_batch: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """TRL's chosen/rejected tensors, right-padded to one width, in `data.collate`'s layout."""
    width = max(trl_batch["chosen_input_ids"].shape[1], trl_batch["rejected_input_ids"].shape[1])
    out: dict[str, Any] = {}
    for side in ("chosen", "rejected"):
        for field, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE)):
            t = trl_batch[f"{side}_{field}"]
            out[f"{side}_{field}"] = F.pad(t, (0, width - t.shape[1]), value=value)
        out[f"{side}_labels_full"] = full_sequence_labels(out[f"{side}_input_ids"], out[f"{side}_attention_mask"])
    return out


def test_module_matches_trl_orpo_loss_metrics_and_gradients(trl_reference: dict[str, Any],
                                                            tiny_model_dir: Path) -> None:
    module = PreferenceModule(str(tiny_model_dir), loss=ORPOLoss(beta=0.1, nll_span=NllSpan.prompt_and_response))
    loss, ours = module.compute(_our_batch(trl_reference["batch"], trl_reference["pad_id"]))
    assert float(loss.detach()) == pytest.approx(trl_reference["loss"], rel=1e-5)
    for key in METRICS:
        assert float(ours[key]) == pytest.approx(trl_reference["metrics"][key], rel=1e-5, abs=1e-7), key
    loss.backward()
    for name, p in module.model.named_parameters():
        ref = trl_reference["grads"][name]
        assert float((p.grad - ref).norm()) <= 1e-4 * float(ref.norm()) + 1e-9, name


def test_prompt_tokens_match_trl_and_the_completion_differs_only_after_eos(trl_reference: dict[str, Any],
                                                                         tokenizer: Any) -> None:
    """Same prompt ids as TRL. TRL's completion is the chat-templated turn (`text<|im_end|>\\n` + eos);
    ours is `text` + eos, what generation produces before it stops, so ours is a prefix of TRL's."""
    for row, trl_row in zip(trl_reference["rows"], trl_reference["tokenized"]):
        ex = PreferenceExample(id="x", prompt=row["prompt"], chosen=row["chosen"][0]["content"],
                               rejected=row["rejected"][0]["content"])
        f = tokenize_example(ex, tokenizer, max_length=128)
        assert f["chosen_input_ids"][:f["prompt_len"]] == trl_row["prompt_input_ids"]
        trl_completion = trl_row["chosen_input_ids"][len(trl_row["prompt_input_ids"]):]
        ours = f["chosen_input_ids"][f["prompt_len"]:]
        assert trl_completion[:len(ours)] == ours


# ---------------------------------------------------------------- the chunked LM head and the scored-token forward

@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunked_linear_logps_equal_log_softmax_with_the_same_gradients(chunk: int) -> None:
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(10, 8, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(37, 8, generator=g).requires_grad_()
    targets = torch.randint(0, 37, (10,), generator=g)
    upstream = torch.randn(10, generator=g)  # a non-uniform upstream gradient, as a real loss gives
    plain = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    (plain * upstream).sum().backward()
    ref = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    chunked = linear_token_logps(hidden, weight, targets, chunk=chunk)
    (chunked * upstream).sum().backward()
    assert chunked.dtype == torch.float32
    assert torch.allclose(chunked, plain, rtol=1e-6, atol=1e-6)
    assert torch.allclose(hidden.grad, ref[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(weight.grad, ref[1], rtol=1e-5, atol=1e-6)
    assert torch.autograd.gradcheck(lambda h, w: linear_token_logps(h, w, targets[:4], chunk),
                                     (hidden[:4].detach().double().requires_grad_(),
                                      weight.detach().double().requires_grad_()))


def test_chunked_linear_logps_handles_no_rows_and_rejects_bad_shapes() -> None:
    weight = torch.randn(5, 3, requires_grad=True)
    empty = linear_token_logps(torch.zeros(0, 3, requires_grad=True), weight, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)
    empty.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    with pytest.raises(ValueError, match="disagree"):
        linear_token_logps(torch.zeros(2, 4), weight, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk"):
        linear_token_logps(torch.zeros(2, 3), weight, torch.zeros(2, dtype=torch.long), chunk=0)


def _uneven_batch(tokenizer: Any) -> dict[str, Any]:
    """Pairs whose chosen and rejected differ in length in both directions, with system prompts."""
    examples = [PreferenceExample(id=str(i), prompt=_ex(i, prompt_words=1 + 6 * i, system=i == 1).prompt,
                                  chosen="safe helpful answer " * (1 + 4 * i), rejected="unsafe " * (9 - 4 * i))
                for i in range(3)]
    return collate([tokenize_example(e, tokenizer, 128) for e in examples], tokenizer.pad_token_id)


def _loss_metrics_grads(module: PreferenceModule, fn: Any, batch: dict[str, Any]) -> tuple[Any, ...]:
    module.model.zero_grad()
    loss, metrics = fn(batch)
    loss.backward()
    return float(loss), {k: float(v) for k, v in metrics.items()}, [p.grad.clone() for p in module.model.parameters()]


@pytest.mark.parametrize("objective", ["orpo", "sft"])
@pytest.mark.parametrize("nll_span", ["response", "prompt_and_response"])
def test_scored_token_path_equals_the_full_logits_path(tiny_model_dir: Path, tokenizer: Any, objective: str,
                                                       nll_span: str) -> None:
    module = PreferenceModule(str(tiny_model_dir), loss=LOSSES[objective](nll_span=NllSpan(nll_span)))
    batch = _uneven_batch(tokenizer)
    assert batch["chosen_input_ids"].shape[1] != batch["rejected_input_ids"].shape[1]  # each side its own width
    assert module.scoring_head() is module.model.lm_head
    assert set(module.state_dict()) == {f"model.{k}" for k in module.model.state_dict()}  # the cache adds no weights
    ref_loss, ref_metrics, ref_grads = _loss_metrics_grads(module, module.compute_from_logits, batch)
    assert module._checked()[2]                          # the tiny Qwen2 packs, so `auto` is `packed` on CPU
    for layout, share in (("auto", True), ("packed", False), ("unpadded", True), ("unpadded", False),
                          ("padded", False)):
        module.forward_layout, module.share_prompt_forward = layout, share
        loss, metrics, grads = _loss_metrics_grads(module, module.compute, batch)
        assert loss == pytest.approx(ref_loss, rel=1e-5), layout
        assert metrics.keys() == ref_metrics.keys()
        for key, value in ref_metrics.items():
            assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (layout, key)
        for mine, ref in zip(grads, ref_grads):
            assert float((mine - ref).norm()) <= 1e-5 * float(ref.norm()) + 1e-9, layout


# ---------------------------------------------------------------- objectives as components

@pytest.mark.parametrize("option, cls", [("orpo", ORPOLoss), ("sft", SFTLoss)])
def test_objective_options_build_their_loss(compose_cfg, option: str, cls: type) -> None:
    from hydra.utils import instantiate

    loss = instantiate(compose_cfg(f"objective={option}", "objective.nll_span=prompt_and_response").objective)
    assert type(loss) is cls and loss.name == option and loss.full_sequence_nll
    assert loss.uses_rejected == (option == "orpo")
    if option == "orpo":
        assert instantiate(compose_cfg("objective.beta=0.25").objective).beta == 0.25
    else:
        with pytest.raises(Exception, match="beta"):   # SFT has no odds-ratio weight to set
            compose_cfg("objective=sft", "objective.beta=0.25")


def test_orpo_object_computes_the_pure_loss_and_sft_the_nll_alone() -> None:
    c, r, nll = torch.tensor([-0.5, -1.0]), torch.tensor([-2.0, -0.7]), torch.tensor(1.3)
    loss, metrics = ORPOLoss(beta=0.25)(c, r, nll)
    ref_loss, ref_metrics = orpo_loss(c, r, nll, beta=0.25)
    assert float(loss) == float(ref_loss) and metrics.keys() == ref_metrics.keys()
    assert float(loss) > float(nll)                          # the odds-ratio term adds a positive penalty
    with pytest.raises(ValueError, match="rejected"):
        ORPOLoss()(c, None, nll)
    loss, metrics = SFTLoss()(c, None, nll)
    assert float(loss) == pytest.approx(1.3) and set(metrics) == {"nll_loss", "logps/chosen"}
    assert float(metrics["logps/chosen"]) == pytest.approx(-0.75)
    assert ORPOLoss(beta=0.2).describe() == "orpo (nll_span=response, beta=0.2)"


def test_sft_never_reads_the_rejected_side(tiny_model_dir: Path, tokenizer: Any) -> None:
    """The loss object says which sides it needs: an SFT batch without any rejected tensors trains, and
    gives the same loss as the full batch; ORPO does need them."""
    batch = _uneven_batch(tokenizer)
    chosen_only = {k: v for k, v in batch.items() if not k.startswith("rejected_")}
    sft = PreferenceModule(str(tiny_model_dir), loss=SFTLoss())
    full = float(sft.compute(batch)[0])
    assert float(sft.compute(chosen_only)[0]) == pytest.approx(full, rel=1e-6)
    assert float(sft.compute_from_logits(chosen_only)[0]) == pytest.approx(full, rel=1e-5)
    orpo = PreferenceModule(str(tiny_model_dir), loss=ORPOLoss())
    with pytest.raises(KeyError, match="rejected"):
        orpo.compute(chosen_only)


def test_chosen_and_rejected_run_their_shared_prompt_once(tiny_model_dir: Path, tokenizer: Any) -> None:
    """Three decoder calls per pair (prompt, chosen rest, rejected rest), each over the tokens it owns:
    the prompt's tokens go through the decoder once, not twice."""
    from oyster_exp.training.forward import common_prefix_length

    module = PreferenceModule(str(tiny_model_dir), loss=ORPOLoss())
    batch = _uneven_batch(tokenizer)
    lengths = [int(m.sum()) for m in (*batch["chosen_attention_mask"], *batch["rejected_attention_mask"])]
    prefixes = [common_prefix_length(batch["chosen_input_ids"][i, :lengths[i]],
                                     batch["rejected_input_ids"][i, :lengths[3 + i]]) for i in range(3)]
    assert all(p >= 8 for p in prefixes), prefixes
    assert module.scoring_head() is not None  # its one-off check calls the decoder too
    seen: list[int] = []
    hook = module.model.get_decoder().register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    module.forward_layout = "unpadded"
    for share in (True, False):
        seen.clear()
        module.share_prompt_forward = share
        module.compute(batch)
        if share:
            assert len(seen) == 9 and sum(seen) == sum(lengths) - sum(prefixes), (seen, prefixes)
        else:
            assert sorted(seen) == sorted(lengths)
    hook.remove()
    assert common_prefix_length(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3, 4])) == 3
    assert common_prefix_length(torch.tensor([5, 2]), torch.tensor([1, 2])) == 0


def test_packed_layout_runs_the_batch_in_one_call_with_each_prompt_once(tiny_model_dir: Path,
                                                                         tokenizer: Any) -> None:
    """One decoder call per batch over exactly the tokens the batch owns (each pair's prompt once), and
    the model's attention implementation is back to what it was afterwards."""
    from oyster_exp.training.forward import common_prefix_length

    module = PreferenceModule(str(tiny_model_dir), loss=ORPOLoss())
    batch = _uneven_batch(tokenizer)
    lengths = [int(m.sum()) for m in (*batch["chosen_attention_mask"], *batch["rejected_attention_mask"])]
    prefixes = [min(common_prefix_length(batch["chosen_input_ids"][i, :lengths[i]],
                                         batch["rejected_input_ids"][i, :lengths[3 + i]]),
                    lengths[i] - 1, lengths[3 + i] - 1) for i in range(3)]
    assert module.scoring_head() is not None
    before = module.model.config._attn_implementation
    seen: list[tuple[int, ...]] = []
    hook = module.model.get_decoder().register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    module.forward_layout = "packed"
    for share, tokens in ((True, sum(lengths) - sum(prefixes)), (False, sum(lengths))):
        seen.clear()
        module.share_prompt_forward = share
        module.compute(batch)
        assert seen == [(1, tokens)], (share, seen)
    hook.remove()
    assert module.model.config._attn_implementation == before


def test_packs_refuses_sliding_window_attention(tmp_path: Path) -> None:
    """A decoder whose layers use sliding windows cannot be packed with plain per-segment SDPA: the check
    says so and `auto` keeps the unpadded layout, whose loss still equals the full-logits one."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from oyster_exp.training.forward import packs, resolve_layout

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=2,
                         layer_types=["sliding_attention"], tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    assert not packs(model)
    assert model.config._attn_implementation != "oyster_packed"   # restored after the refused call
    assert resolve_layout("auto", torch.device("cpu"), packable=False) == "unpadded"
    config.layer_types, config.use_sliding_window = ["full_attention"], False
    assert packs(Qwen2ForCausalLM(config))


def test_a_head_that_is_not_a_plain_linear_falls_back_to_full_logits(tiny_model_dir: Path, tokenizer: Any) -> None:
    module = PreferenceModule(str(tiny_model_dir))
    old = module.model.lm_head
    biased = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(old.weight)
        biased.bias.fill_(0.5)
    module.model.lm_head = biased
    assert module.scoring_head() is None
    batch = _uneven_batch(tokenizer)
    assert float(module.compute(batch)[0]) == pytest.approx(float(module.compute_from_logits(batch)[0]), rel=1e-6)
    # a plain linear head whose logits the model then rescales (soft-capping, logit scaling) fails the check
    module.model.lm_head = old
    hook = module.model.register_forward_hook(lambda mod, args, out: setattr(out, "logits", out.logits * 0.5))
    assert module.scoring_head(recheck=True) is None     # the check runs once per model object unless asked
    hook.remove()
    assert module.scoring_head(recheck=True) is old


def test_scored_token_logps_rejects_left_padding(tiny_model_dir: Path) -> None:
    from oyster_exp.training.forward import scored_token_logps

    module = PreferenceModule(str(tiny_model_dir))
    ids = torch.tensor([[0, 5, 6, 7]])
    with pytest.raises(ValueError, match="right-padded"):
        scored_token_logps(module.model, module.model.lm_head, ids, torch.tensor([[0, 1, 1, 1]]), ids, ids)
    with pytest.raises(ValueError, match="layout"):
        scored_token_logps(module.model, module.model.lm_head, ids, torch.ones_like(ids), ids, ids, layout="ragged")


# ---------------------------------------------------------------- the throughput benchmark runs end to end

@pytest.mark.slow
def test_train_throughput_benchmark_quick_run_reports_every_key() -> None:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "train_throughput.py"), "--quick", "--pairs", "8",
                          "--threads", "1"], capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("ours_tokens_per_s", "trl_tokens_per_s", "tokens_per_s_ratio", "ours_peak_rss_mb", "trl_peak_rss_mb",
                "peak_rss_ratio", "loss_abs_diff_step0", "mfu", "config", "steps", "repeats"):
        assert key in line, key
    assert line["same_first_batch"] is True and line["steps"] == 2
    assert line["loss_abs_diff_step0"] <= 1e-4  # same weights, same batch: TRL's loss
    for key in ("ours_tokens_per_s", "trl_tokens_per_s", "tokens_per_s_ratio", "peak_rss_ratio"):
        spread = line[key]       # medians over the rounds, with their spread
        assert 0 < spread["min"] <= spread["median"] <= spread["max"], (key, spread)
    assert 0 < line["mfu"] < 1
