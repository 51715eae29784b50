"""The lockstep loop behind both local decoders: ragged feeding, the shared prefix, the shrinking batch.

The reference is the model itself: a row decoded in a batch must see exactly what it sees alone, so its greedy
reply equals the one `model.generate` gives for that prompt on its own (tiny random model, fp32).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oyster_exp.llm.base import ChatMessage, ChatRequest
from oyster_exp.llm.lockstep import Lockstep, TextRow, step_width


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path):
    from oyster_exp.llm.local import LocalClient

    return LocalClient(tiny_model_dir, model_id="tiny", max_batch_size=8, structured_decoding="grammar")


def _req(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **kw)


def test_step_width_wide_when_runs_line_up_narrow_for_a_lone_long_run() -> None:
    assert step_width([5, 5, 5, 5]) == 5                  # every row has 5 waiting: one forward feeds them all
    assert step_width([1, 1, 1, 1, 1, 1, 1, 12]) == 1     # one row's long run would pad seven rows 11 times
    assert step_width([1, 1, 12, 12, 12, 12, 12, 12]) == 12
    assert step_width([3]) == 3                           # alone, a row feeds all it has
    assert step_width([2, 7], overhead=0) == 2            # without a fixed cost, padding is never worth it


class _Recording(TextRow):
    """A free-text row that keeps the (banned) scores it chose each token from."""

    def choose(self, scores: torch.Tensor) -> int:
        banned = scores + self.tables.text_ban[: scores.shape[-1]]
        self.seen = [*getattr(self, "seen", []), banned.clone()]
        return super().choose(scores)


def _alone(client, prompt: list[int], max_new: int) -> tuple[list[int], list[torch.Tensor]]:
    """What the model writes for the prompt on its own (plain `generate`, greedy, control tokens banned) and
    the scores of each step."""
    from transformers import LogitsProcessorList

    class Ban:
        def __call__(self, input_ids, scores):
            return scores + client.vocab.text_ban[: scores.shape[-1]]

    with torch.inference_mode():
        out = client.model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                    dtype=torch.long), max_new_tokens=max_new, do_sample=False,
                                    logits_processor=LogitsProcessorList([Ban()]), output_scores=True,
                                    return_dict_in_generate=True, pad_token_id=client.vocab.pad_id,
                                    eos_token_id=sorted(client.vocab.stop_ids))
    row = out.sequences[0, len(prompt):].tolist()
    end = next((k for k, t in enumerate(row) if t in client.vocab.stop_ids), None)
    n = len(row) if end is None else end + 1
    return row[:n], [s[0] for s in out.scores[:n]]


def test_rows_of_a_ragged_batch_equal_each_row_alone(client) -> None:
    """Different prompt lengths after a shared chat-template prefix (padding holes inside the cache), replies
    of different lengths (rows leave the batch at different steps): every row's scores at every step equal
    that prompt's scores decoded alone by `generate`, so its greedy reply is the same too."""
    reqs = [_req("hi", max_tokens=14), _req("tell me about the moon and the tides " * 3, max_tokens=20),
            _req("one two three", max_tokens=3), _req("a much longer question about trains " * 2, max_tokens=11)]
    prompts = [client.prompt_ids(r) for r in reqs]
    rows = [_Recording(r, p, client.vocab, client.device) for r, p in zip(reqs, prompts)]
    loop = Lockstep(client.model, client.vocab, client.device)
    with torch.inference_mode():
        loop.run(rows)
    for r, row, prompt in zip(reqs, rows, prompts):
        ids, scores = _alone(client, prompt, r.max_tokens)
        assert row.ids == ids and row.done
        for got, want in zip(row.seen, scores, strict=True):
            finite = torch.isfinite(want)
            assert torch.equal(finite, torch.isfinite(got))
            assert torch.allclose(got[finite], want[finite], atol=1e-4), (got - want)[finite].abs().max()


def test_shared_prefix_runs_once_and_finished_rows_leave_the_batch(client) -> None:
    """The chat template's common prefix is computed once, and the loop computes far fewer positions than a
    rectangular batch that pads every row to the longest prompt and the longest reply."""
    reqs = [_req(f"question number {k}", max_tokens=2 if k else 24) for k in range(6)]
    prompts = [client.prompt_ids(r) for r in reqs]
    shared = next(k for k in range(min(map(len, prompts))) if len({p[k] for p in prompts}) > 1)
    assert shared >= 2
    loop = Lockstep(client.model, client.vocab, client.device)
    rows = [TextRow(r, p, client.vocab, client.device) for r, p in zip(reqs, prompts)]
    with torch.inference_mode():
        loop.run(rows)
    rectangular = len(reqs) * (max(map(len, prompts)) + 24)
    real = sum(len(p) for p in prompts) - (len(reqs) - 1) * shared + sum(len(r.ids) for r in rows)
    assert loop.positions < 0.5 * rectangular
    assert loop.positions <= real + 2 * len(reqs) + 8             # a little padding, never a rectangle


def test_forced_json_ids_ride_along_with_the_sampled_token(client) -> None:
    """A structured reply takes fewer forwards than it has tokens: the grammar's keys and separators are fed
    together with the token sampled before them."""
    schema = {"type": "object", "properties": {"first_long_key_name": {"enum": ["a", "b"]},
                                               "second_long_key_name": {"enum": ["c", "d"]},
                                               "third_long_key_name": {"type": "integer"}}}
    loop = client.decoder.lockstep
    loop.forwards = 0
    reply = client.chat_batch([_req("keys", response_schema=schema, max_tokens_per_field=3)])[0]
    assert reply.finish_reason == "stop"
    assert loop.forwards < reply.usage.completion_tokens / 2, (loop.forwards, reply.usage)
