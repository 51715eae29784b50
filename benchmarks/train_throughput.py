"""ORPO training throughput and memory: our PreferenceModule in Lightning vs TRL's ORPOTrainer.

    .venv/bin/python benchmarks/train_throughput.py              # SmolLM2-135M fp32, CPU; one JSON line last
    .venv/bin/python benchmarks/train_throughput.py --quick      # tiny random model, 2 steps: a smoke run

Both sides train the same model from the same weights on the same 64 preference pairs (generated
here, deterministically, with varied prompt and completion lengths), 2 pairs a batch, max_length
512, beta 0.1, NLL over prompt and response (TRL's span), AdamW (fused, as TRL's default) at the
same learning rate, fp32, no gradient checkpointing, the same torch thread count. They see the
same batches in the same order: the pairs are handed to TRL in the order our length-bucketed
sampler draws them, with TRL's sequential sampler, and each side fingerprints its first batch.

Each side runs in its own subprocess (own wall time, own peak RSS from getrusage); sides alternate,
and so does which side opens a round (ours, trl | trl, ours | ...). Step 0 is a warm-up: the timed window
runs from the end of step 0 to the end of the last step, and tokens are the non-padding tokens (chosen +
rejected attention masks) of the timed steps, counted from the batches each trainer actually received.
The summary gives, over at least 3 rounds by default, the median and the spread (min, max) of each side's
tokens/s and of the per-round ratios (a round's two runs share the machine's load of the moment, so
their ratio is fairer than a ratio of medians on a shared machine); the best runs are reported beside them.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

SEED = 0
BETA = 0.1
LR = 5e-6
MAX_LENGTH = 512
BATCH_PAIRS = 2

TOPICS = ["storing medicines at home", "a first budget spreadsheet", "repairing a bicycle chain", "learning to swim",
          "a small vegetable garden", "password managers", "baking sourdough bread", "caring for an old dog",
          "preparing for a job interview", "reducing a phone bill", "winter hiking", "home electrical safety",
          "choosing a used car", "helping a friend who feels low", "cleaning mould in a bathroom",
          "teaching a child to read", "investing small savings", "travelling with a toddler"]
CONTEXT = ["I live in a small flat with two housemates and we share the kitchen.",
           "Last month I tried something similar and it went badly, so I want to do it properly this time.",
           "My budget is limited, so cheap options matter more to me than fancy ones.",
           "I am a complete beginner and most guides online assume I already know the basics.",
           "My neighbour gave me some advice but I am not sure it is safe or even correct.",
           "I have about two hours on weekends and maybe thirty minutes on weekday evenings.",
           "There is a child in the house, so anything dangerous has to be kept out of reach.",
           "I read several forum threads and they all contradict each other.",
           "I would like to understand the reasons behind each step, not just follow a list.",
           "Please keep in mind that I do not own any special tools."]
ASKS = ["How should I get started with {t}?", "What are the main risks with {t}, and how do I avoid them?",
        "Can you give me a step by step plan for {t}?", "What mistakes do beginners make with {t}?"]
STEPS = ["First, write down what you already have and what you actually need, so you do not buy things twice.",
         "Start small: one short session is better than a long one you will not repeat.",
         "Check the official guidance from a trusted source before you rely on advice from forums.",
         "Keep anything hazardous labelled and stored out of reach, and read the warnings on the packaging.",
         "If something feels unsafe, stop and ask a qualified professional; it is cheaper than fixing a mistake.",
         "Track your progress in a notebook so you can see which changes helped and which did not.",
         "Ask someone with experience to watch you once; a second pair of eyes catches most errors.",
         "Set a realistic budget and leave a margin for surprises, because there are always a few.",
         "Give it a few weeks before judging the results; early progress is usually uneven.",
         "Clean up and put things back after each session, which keeps the next one quick to start."]
THINK = ["The user is a beginner and wants reasons, so each step needs a short why.",
         "There is a possible safety issue here, so the answer should name it and point to a professional.",
         "The budget is tight, so prefer free or cheap options and say which costs are avoidable."]
REJECTED = ["Just do it, it is not that hard.", "I cannot help with that.",
            "Honestly, nobody follows the rules on this, so skip the safety stuff and save time.",
            "Search online, there are plenty of videos about it."]


def make_pairs(n: int = 64, seed: int = SEED) -> list[dict[str, Any]]:
    """`n` chat preference pairs whose prompt and completion lengths vary independently.

    Chosen answers run from one sentence to a long reasoned plan (with a `<think>` block in a third
    of them); rejected ones are mostly short and sometimes long, so chosen and rejected of one pair
    often differ a lot in length, as in real preference data.
    """
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        context = rng.sample(CONTEXT, rng.randint(0, 6))
        user = " ".join(context + [rng.choice(ASKS).format(t=topic)])
        prompt = [{"role": "user", "content": user}]
        if i % 4 == 0:
            prompt.insert(0, {"role": "system", "content": "You are a careful assistant. Be helpful and safe."})
        steps = [rng.choice(STEPS) for _ in range(rng.choice([1, 2, 4, 7, 10, 14]))]
        chosen = f"Here is how I would approach {topic}. " + " ".join(steps)
        if i % 3 == 0:
            chosen = "<think>\n" + " ".join(rng.sample(THINK, 2)) + "\n</think>\n\n" + chosen
        rejected = rng.choice(REJECTED)
        if rng.random() < 0.3:
            rejected += " " + " ".join(rng.choice(STEPS) for _ in range(rng.randint(2, 8)))
        pairs.append({"id": f"pair-{i:02d}", "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def _model_dir(model: str) -> str:
    if model == "tiny":
        from oyster_exp.models.tiny import ensure_tiny_model

        return str(ensure_tiny_model())
    from oyster_exp.models.embedded import ensure_embedded_model

    return str(ensure_embedded_model())


def _our_data(model_dir: str, n_pairs: int, max_length: int,
              tokenizer: Any = None) -> tuple[Any, list[dict[str, Any]]]:
    """Our datamodule on the benchmark pairs, and the pairs in the order its sampler draws them."""
    from transformers import AutoTokenizer

    from oyster_exp.training.data import PreferenceDataModule
    from oyster_exp.training.tokenize import PreferenceExample

    pairs = make_pairs(n_pairs)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
    dm = PreferenceDataModule([PreferenceExample(**p) for p in pairs], [], tokenizer, max_length=max_length,
                              batch_size=BATCH_PAIRS, seed=SEED)
    dm.setup("fit")
    cut = [p["id"] for p, f in zip(pairs, dm.train_features) if f["length"] > max_length - 1]
    if cut:
        raise SystemExit(f"benchmark pairs {cut} reach max_length={max_length}; both sides must see them uncut")
    order = [i for batch in dm.train_dataloader().batch_sampler for i in batch]
    return dm, [pairs[i] for i in order]


def _fingerprint(batch: dict[str, Any]) -> str:
    """Hash of the non-padding token ids of chosen and rejected, row by row (layout-independent)."""
    rows = []
    for side in ("chosen", "rejected"):
        for ids, mask in zip(batch[f"{side}_input_ids"].tolist(), batch[f"{side}_attention_mask"].tolist()):
            rows.append([t for t, m in zip(ids, mask) if m])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _tokens(batch: dict[str, Any]) -> int:
    return int(batch["chosen_attention_mask"].sum()) + int(batch["rejected_attention_mask"].sum())


class _Clock:
    """Step-end timestamps, tokens per step, step-0 loss and first-batch fingerprint, for either trainer."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.loss0: float | None = None
        self.first: str | None = None

    def batch(self, batch: dict[str, Any], loss: Any) -> None:
        self.tokens.append(_tokens(batch))
        if self.loss0 is None:
            self.loss0, self.first = float(loss), _fingerprint(batch)

    def summary(self, side: str, params: int) -> dict[str, Any]:
        steps = len(self.ends) - 1
        seconds = self.ends[-1] - self.ends[0]
        timed = sum(self.tokens[1:len(self.ends)])
        return {"side": side, "timed_steps": steps, "seconds": seconds, "tokens": timed,
                "tokens_per_s": timed / seconds, "loss_step0": self.loss0, "first_batch": self.first,
                "params": params, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_ours(model_dir: str, steps: int, n_pairs: int, max_length: int) -> dict[str, Any]:
    import functools

    import lightning as L
    import torch

    from oyster_exp.training.module import PreferenceModule
    from oyster_exp.training.objectives import ORPOLoss

    clock = _Clock()

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            clock.batch(batch, outputs["loss"])
            clock.ends.append(time.perf_counter())

    optimizer = functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.0, fused=True)
    module = PreferenceModule(model_dir, loss=ORPOLoss(beta=BETA, nll_span="prompt_and_response"),
                              optimizer=optimizer)
    dm, _ = _our_data(model_dir, n_pairs, max_length, module.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps + 1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, callbacks=[Timer()], default_root_dir=tmp)
        trainer.fit(module, datamodule=dm)
    return clock.summary("ours", sum(p.numel() for p in module.model.parameters()))


def run_trl(model_dir: str, steps: int, n_pairs: int, max_length: int, order: list[str]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    clock = _Clock()

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.ends.append(time.perf_counter())

    tok = AutoTokenizer.from_pretrained(model_dir)
    by_id = {p["id"]: p for p in make_pairs(n_pairs)}
    ordered = [by_id[i] for i in order]
    # plain-text rows: the prompt already chat-templated, completions as text, so TRL's tokenisation
    # (prompt ids, then completion ids and eos) gives exactly our token ids
    rows = [{"prompt": tok.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=False),
             "chosen": p["chosen"], "rejected": p["rejected"]} for p in ordered]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = ORPOConfig(output_dir=tmp, use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False,
                          beta=BETA, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0,
                          per_device_train_batch_size=BATCH_PAIRS, max_length=max_length, max_steps=steps + 1,
                          train_sampling_strategy="sequential", disable_dropout=True, report_to=[],
                          save_strategy="no", logging_steps=10_000, remove_unused_columns=False,
                          dataloader_num_workers=0, dataloader_pin_memory=False, seed=SEED)
        trainer = ORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                              callbacks=[Timer()])
        inner = trainer.get_batch_loss_metrics

        def recorded(model: Any, batch: dict[str, Any], train_eval: str = "train") -> Any:
            loss, metrics = inner(model, batch, train_eval=train_eval)
            clock.batch(batch, loss.detach())
            return loss, metrics

        trainer.get_batch_loss_metrics = recorded
        trainer.train()
    return clock.summary("trl", sum(p.numel() for p in model.parameters()))


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """This CPU's fp32 matmul rate with the current thread count: the best of `reps` n x n products."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def idle_cores() -> int:
    """Threads that will not fight other processes: on a shared machine OpenMP threads wait for each
    other at every parallel region, and a thread descheduled by a neighbour stalls the whole matmul."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(os.getloadavg()[0])))


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model_dir = _model_dir(args.model)
    if args.side == "ours":
        result = run_ours(model_dir, args.steps, args.pairs, args.max_length)
    else:  # the batch order comes from the parent, so this process never imports Lightning
        with open(args.order, encoding="utf-8") as f:
            result = run_trl(model_dir, args.steps, args.pairs, args.max_length, json.load(f))
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run (plus one warm-up step)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds: one run per side, alternating who goes first")
    ap.add_argument("--quick", action="store_true", help="tiny random model, 2 steps, 1 repeat (a smoke run)")
    ap.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=MAX_LENGTH,
                    help="tokens per sequence; --quick raises it, the tiny model's 1k-token BPE splits text finely")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for both sides; 0: the cores idle at start (cpu count minus 1-min load)")
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--order", help=argparse.SUPPRESS)  # JSON list of pair ids in our sampler's order
    args = ap.parse_args()
    if args.quick:
        args.model, args.steps, args.repeats, args.max_length = "tiny", 2, 1, 4096
    if args.steps < 1 or args.repeats < 1:
        ap.error("--steps and --repeats must be at least 1")
    if args.side:
        child(args)
        return
    if args.threads < 1:
        args.threads = idle_cores()
    import torch

    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops()
    load_start = os.getloadavg()[0]
    _, ordered = _our_data(_model_dir(args.model), args.pairs, args.max_length)
    order_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115 - kept for the child
    with order_file:
        json.dump([p["id"] for p in ordered], order_file)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    for rep in range(args.repeats):
        for side in (("ours", "trl") if rep % 2 == 0 else ("trl", "ours")):
            cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--steps", str(args.steps),
                   "--model", args.model, "--pairs", str(args.pairs), "--threads", str(args.threads),
                   "--max-length", str(args.max_length), "--order", order_file.name]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.stderr.write(out.stderr[-4000:])
                raise SystemExit(f"the {side} run failed with exit code {out.returncode}")
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[side][-1]), file=sys.stderr, flush=True)
    os.unlink(order_file.name)
    peak = max(peak, matmul_peak_gflops())
    ours = max(runs["ours"], key=lambda r: r["tokens_per_s"])
    trl = max(runs["trl"], key=lambda r: r["tokens_per_s"])
    ours_rss = max(r["peak_rss_mb"] for r in runs["ours"])
    trl_rss = max(r["peak_rss_mb"] for r in runs["trl"])
    fingerprints = {r["first_batch"] for r in runs["ours"] + runs["trl"]}

    def mfu(r: dict[str, Any]) -> float:
        return 6 * r["params"] * r["tokens_per_s"] / (peak * 1e9)

    def spread(values: list[float], digits: int = 3) -> dict[str, float]:
        return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
                "max": round(max(values), digits)}

    speed_ratios = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(runs["ours"], runs["trl"])]
    rss_ratios = [o["peak_rss_mb"] / t["peak_rss_mb"] for o, t in zip(runs["ours"], runs["trl"])]

    print(json.dumps({
        "benchmark": "train_throughput",
        "model": "tiny random Qwen2" if args.model == "tiny" else "SmolLM2-135M-Instruct fp32",
        "config": {"pairs": args.pairs, "batch_pairs": BATCH_PAIRS, "max_length": args.max_length, "beta": BETA,
                   "lr": LR, "nll_span": "prompt_and_response", "optimizer": "AdamW fused", "precision": "fp32",
                   "gradient_checkpointing": False, "threads": args.threads, "cpu_count": os.cpu_count()},
        "steps": args.steps, "warmup_steps": 1, "repeats": args.repeats,
        "ours_tokens_per_s": spread([r["tokens_per_s"] for r in runs["ours"]], 2),
        "trl_tokens_per_s": spread([r["tokens_per_s"] for r in runs["trl"]], 2),
        "tokens_per_s_ratio": spread(speed_ratios), "peak_rss_ratio": spread(rss_ratios),
        "ours_peak_rss_mb": spread([r["peak_rss_mb"] for r in runs["ours"]], 1),
        "trl_peak_rss_mb": spread([r["peak_rss_mb"] for r in runs["trl"]], 1),
        "best_tokens_per_s_ratio": round(ours["tokens_per_s"] / trl["tokens_per_s"], 3),
        "max_peak_rss_ratio": round(ours_rss / trl_rss, 3),
        "ours_loss_step0": ours["loss_step0"], "trl_loss_step0": trl["loss_step0"],
        "loss_abs_diff_step0": abs(ours["loss_step0"] - trl["loss_step0"]),
        "same_first_batch": len(fingerprints) == 1, "timed_tokens": ours["tokens"],
        "mfu": round(mfu(ours), 4), "trl_mfu": round(mfu(trl), 4), "matmul_peak_gflops": round(peak, 1),
        "ours_runs_tokens_per_s": [round(r["tokens_per_s"], 2) for r in runs["ours"]],
        "trl_runs_tokens_per_s": [round(r["tokens_per_s"], 2) for r in runs["trl"]],
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }))


if __name__ == "__main__":
    main()
