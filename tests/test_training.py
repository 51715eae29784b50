"""ORPO / SFT losses and the Lightning module on the tiny model with a real Trainer."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from oyster_exp.training.data import PreferenceDataModule, PreferenceExample, tokenize_example
from oyster_exp.training.losses import IGNORE, log1mexp, orpo_loss, sequence_logps
from oyster_exp.training.module import PreferenceModule
from oyster_exp.training.run import fit_preference_model


def test_orpo_loss_matches_the_naive_odds_formula() -> None:
    g = torch.Generator().manual_seed(0)
    c = -torch.rand(64, generator=g) * 3 - 0.01
    r = -torch.rand(64, generator=g) * 3 - 0.01
    nll = torch.tensor(1.7)
    loss, m = orpo_loss(c, r, nll, beta=0.25)
    odds = lambda lp: torch.exp(lp) / (1 - torch.exp(lp))  # noqa: E731
    naive = torch.log(odds(c) / odds(r))
    expected = nll - 0.25 * torch.nn.functional.logsigmoid(naive).mean()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(m["log_odds_chosen"], naive.mean(), rtol=1e-4)
    assert m["rewards/margins"] == pytest.approx(float((0.25 * (c - r)).mean()), rel=1e-5)


def test_log1mexp_is_finite_at_the_extremes() -> None:
    x = torch.tensor([-1e-7, -1e-3, -0.69, -0.7, -10.0, -200.0])
    y = log1mexp(x)
    assert torch.isfinite(y).all()
    exact = torch.log(1 - torch.exp(x.double()))  # float64 reference: the float32 naive form loses digits
    assert torch.allclose(y[1:].double(), exact[1:], rtol=1e-5)


def test_sequence_logps_ignores_masked_positions() -> None:
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE]])
    lp = torch.log_softmax(logits, -1)
    expected = (lp[0, 1, 3] + lp[0, 2, 4]) / 2
    assert torch.allclose(sequence_logps(logits, labels, average=True)[0], expected, atol=1e-6)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ex(i: int, prompt_words: int = 3) -> PreferenceExample:
    return PreferenceExample(id=f"p{i}", prompt=[{"role": "user", "content": " ".join(["question"] * prompt_words)}],
                             chosen=f"<think>\nhelp safely {i}\n</think>\n\nsafe helpful answer {i}",
                             rejected=f"unsafe answer {i}")


def test_masking_and_eos(tokenizer) -> None:
    f = tokenize_example(_ex(0), tokenizer, max_length=256)
    n = f["prompt_len"]
    assert all(x == IGNORE for x in f["chosen_labels"][:n])
    assert f["chosen_labels"][n:] == f["chosen_input_ids"][n:]
    assert f["chosen_input_ids"][-1] == tokenizer.eos_token_id
    assert f["chosen_labels_full"] == f["chosen_input_ids"]


def test_truncation_keeps_the_completion(tokenizer) -> None:
    full = tokenize_example(_ex(0), tokenizer, max_length=4096)
    short = tokenize_example(_ex(0, prompt_words=300), tokenizer, max_length=64)
    completion = full["chosen_input_ids"][full["prompt_len"]:]
    assert len(short["chosen_input_ids"]) <= 64
    assert short["chosen_input_ids"][-len(completion):] == completion


def _fit(model_dir: Path, tokenizer, objective: str, tmp: Path, steps: int = 8) -> tuple[dict, PreferenceModule, list]:
    module = PreferenceModule(str(model_dir), objective=objective, beta=0.1,
                              optimizer=functools.partial(torch.optim.AdamW, lr=5e-3))
    data = PreferenceDataModule([_ex(i) for i in range(8)], [_ex(9)], tokenizer, max_length=128, batch_size=2)
    losses: list[float] = []

    class Track(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Track()],
                        default_root_dir=str(tmp), num_sanity_val_steps=0)
    metrics = fit_preference_model(module, data, trainer, tmp / "export", card_config={"objective": objective})
    return metrics, module, losses


def test_orpo_trains_logs_and_exports(tiny_model_dir: Path, tokenizer, tmp_path: Path) -> None:
    metrics, _, losses = _fit(tiny_model_dir, tokenizer, "orpo", tmp_path, steps=12)
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    for key in ("train/loss", "train/rewards/chosen", "train/rewards/margins", "train/log_odds_ratio",
                "train/nll_loss", "val/loss"):
        assert key in metrics, sorted(metrics)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    assert reloaded.num_parameters() > 0
    card = (tmp_path / "export" / "README.md").read_text()
    assert "train/loss" in card and "objective: orpo" in card


def test_sft_trains(tiny_model_dir: Path, tokenizer, tmp_path: Path) -> None:
    metrics, _, losses = _fit(tiny_model_dir, tokenizer, "sft", tmp_path, steps=8)
    assert "train/nll_loss" in metrics and "train/log_odds_ratio" not in metrics
    assert losses[-1] < losses[0]
