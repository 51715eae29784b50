"""Parity with TRL's ORPO trainer: same batch, same weights -> same loss and metrics (rel 1e-5).

TRL is the reference here (trl.experimental.orpo); we feed the token ids and labels of a batch
that TRL itself tokenised to our pure loss functions, with nll_span=prompt_and_response (TRL's choice).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def trl_batch(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = [{"prompt": [{"role": "user", "content": f"question {i} about safety " * (1 + i % 3)}],
             "chosen": [{"role": "assistant", "content": f"a careful helpful answer {i}"}],
             "rejected": [{"role": "assistant", "content": f"no {i}" * (1 + i % 2)}]} for i in range(4)]
    args = ORPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), use_cpu=True, bf16=False, fp16=False,
                      gradient_checkpointing=False, beta=0.1, per_device_train_batch_size=4, max_length=128,
                      report_to=[], remove_unused_columns=False, save_strategy="no", logging_steps=1)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(model, batch, train_eval="train")
    return model, batch, float(loss), metrics


def test_orpo_loss_and_metrics_equal_trl(trl_batch) -> None:
    from oyster_exp.training.losses import IGNORE, orpo_loss, sequence_logps, token_nll

    model, batch, trl_loss, trl_metrics = trl_batch
    width = max(batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    pad_id = 0
    ids = torch.cat([pad(batch["chosen_input_ids"], pad_id), pad(batch["rejected_input_ids"], pad_id)])
    mask = torch.cat([pad(batch["chosen_attention_mask"], 0), pad(batch["rejected_attention_mask"], 0)])
    labels = torch.cat([pad(batch["chosen_labels"], IGNORE), pad(batch["rejected_labels"], IGNORE)])
    n = batch["chosen_input_ids"].shape[0]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logps = sequence_logps(logits, labels, average=True)
    full = torch.where(mask[:n] == 1, ids[:n], torch.full_like(ids[:n], IGNORE))  # prompt + response
    loss, ours = orpo_loss(logps[:n], logps[n:], token_nll(logits[:n], full), beta=0.1)
    assert float(loss) == pytest.approx(trl_loss, rel=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"):
        assert float(ours[key]) == pytest.approx(float(trl_metrics[key]), rel=1e-5, abs=1e-7), key
