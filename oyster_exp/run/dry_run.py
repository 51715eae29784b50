"""`dry_run=true`: build every object of a run without weights or work, and estimate what the run will cost.

Why: the paper's runs (14B models, FSDP over 8 GPUs, QwQ-32B as data-engine LLM) cannot run on a laptop,
but their configs should be checked there: the model is built from its architecture on the meta device
(no memory, no download), the optimizer over those meta parameters, the Trainer, loggers and LLM clients
are resolved to their classes without being constructed (constructing an FSDP Trainer needs the GPUs),
and the data set is loaded to count queries. Printed: a table and, last, one JSON line.

The estimates are arithmetic on the config (formulas below), not measurements:
* memory per GPU = (weights + gradients + Adam moments) / shards + activations + logits, where FSDP and
  ZeRO-3 shard all three over every GPU, ZeRO-2 shards gradients and moments, DDP shards nothing;
  activations per layer ≈ 34·s·b·h bytes (Korthikanti et al. 2022, 16-bit, flash attention so no s² term),
  b = 2 × training.batch_size for ORPO (chosen and rejected), logits b·s·V·(2 + 4) bytes;
* LLM calls: each stage states its own (`Stage.estimate`, next to the code that makes the calls, where it
  says when it is exact and when an upper bound); this module sums them. Per training query that is
  generate 2 (answer, reasoning), assess 1, extract 1, optimize 2 judges for the initial answer + 4 per
  Lingo-BP epoch (edit, recombine, two judges), so the paper's both×3 is 14 in optimize and 18 in all;
  Stackelberg with K candidates multiplies optimize's recombinations and judgements by K. Evaluation:
  one subject answer per item and model, then its judges. First attempts only: retries come on top, and
  `tests/run/test_dry_run.py` holds the estimate equal to a real tiny run's requests per stage. Tokens:
  prompt ≈ characters / 3.5, completion = the role's max_tokens (an upper bound).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from oyster_exp.core.estimates import CHARS_PER_TOKEN, CallEstimate, Workload
from oyster_exp.csa.lingo_bp import lingo_schedule
from oyster_exp.run.manifest import EVAL_STAGES

GIB = 1024**3
GPU_GIB = 80          # the memory of the GPUs the paper configs target (A100/H100 80G)


@dataclass
class MemoryEstimate:
    params: int
    gpus: int
    strategy: str
    precision: str
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    total_gib: float


def _bytes_per_param(precision: str) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per parameter for AdamW under a Lightning precision setting."""
    if precision.startswith(("bf16-mixed", "16-mixed")):
        return 4, 4, 8        # fp32 master weights and grads (cast to 16 bit for compute), two fp32 moments
    if precision.startswith(("bf16", "16")):
        return 2, 2, 4        # everything in 16 bit, moments included
    return 4, 4, 8


def _sharding(strategy: str) -> tuple[bool, bool, bool]:
    """Which of (weights, grads, optimizer) are sharded over GPUs."""
    s = strategy.lower()
    if "fsdp" in s or "stage_3" in s:
        return True, True, True
    if "stage_2" in s:
        return False, True, True
    if "stage_1" in s:
        return False, False, True
    return False, False, False


def estimate_memory(params: int, arch: dict[str, Any], gpus: int, strategy: str, precision: str, batch_size: int,
                    seq_len: int, pairs: bool = True) -> MemoryEstimate:
    """Peak training memory per GPU (GiB) from the formulas in the module docstring."""
    w, g, o = _bytes_per_param(precision)
    sw, sg, so = _sharding(strategy)
    n = max(1, gpus)
    weights = params * w / (n if sw else 1)
    grads = params * g / (n if sg else 1)
    optim = params * o / (n if so else 1)
    b = batch_size * (2 if pairs else 1)
    h, layers = int(arch.get("hidden_size", 0)), int(arch.get("num_hidden_layers", 0))
    act_bytes = 2 if "16" in precision else 4
    activations = 34 * seq_len * b * h * layers * act_bytes / 2
    logits = b * seq_len * int(arch.get("vocab_size", 0)) * (act_bytes + 4)
    if sw:   # FSDP gathers one layer's full 16-bit weights at a time
        weights += params / max(1, layers) * act_bytes
    parts = [x / GIB for x in (weights, grads, optim, activations, logits)]
    return MemoryEstimate(params=params, gpus=n, strategy=strategy, precision=precision,
                          weights_gib=round(parts[0], 2), grads_gib=round(parts[1], 2),
                          optimizer_gib=round(parts[2], 2),
                          activations_gib=round(parts[3], 2), logits_gib=round(parts[4], 2),
                          total_gib=round(sum(parts), 2))


def _tokens(text_chars: float) -> int:
    return int(math.ceil(text_chars / CHARS_PER_TOKEN))


def _out_tokens(cfg: DictConfig, role: str) -> int:
    """A role's completion budget: the data-engine roles' max_tokens, the eval subject's and judge's own."""
    from oyster_exp.evaluation.generation import SUBJECT_ROLE
    from oyster_exp.evaluation.judges import EVAL_JUDGE_ROLE

    if role == SUBJECT_ROLE:
        return int(cfg.eval.generation.max_new_tokens)
    if role == EVAL_JUDGE_ROLE:
        return int(cfg.eval.judge.max_tokens)
    return int(cfg.llm.roles[role].max_tokens) if role in cfg.llm.roles else 0


def stage_estimates(cfg: DictConfig, work: Workload) -> dict[str, list[CallEstimate]]:
    """Each stage's own estimate (`Stage.estimate`) for `work`, by stage, in graph order (the stages of this
    config's graph: with pairs from the data source, the data-engine stages make no call)."""
    from oyster_exp.pipeline.runner import graph_stages
    from oyster_exp.stages import default_stages

    return {s.name: s.estimate(cfg, work) for s in graph_stages(cfg, default_stages())}


def estimate_llm(cfg: DictConfig, work: Workload) -> dict[str, Any]:
    """LLM requests and tokens per stage, summed from the stages' own estimates (first attempts)."""
    from oyster_exp.evaluation.generation import SUBJECT_ROLE

    rows: dict[str, dict[str, int]] = {}
    subject = 0
    for stage, calls in stage_estimates(cfg, work).items():
        for c in calls:
            if c.role == SUBJECT_ROLE:             # the model under test answering, not a data-engine call
                subject += c.calls
                continue
            r = rows.setdefault(stage, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
            r["calls"] += c.calls
            r["tokens_in"] += c.calls * _tokens(c.prompt_chars)
            r["tokens_out"] += c.calls * _out_tokens(cfg, c.role)
    per_query = stage_estimates(cfg, Workload(train=1, heldout=0, query_chars=work.query_chars))
    engine = {k: sum(v[k] for s, v in rows.items() if s not in EVAL_STAGES) for k in ("calls", "tokens_in",
                                                                                       "tokens_out")}
    return {
        "per_stage": rows,
        "calls_per_train_query": sum(c.calls for s, cs in per_query.items() if s not in EVAL_STAGES for c in cs),
        "optimize_calls_per_query": sum(c.calls for c in per_query.get("optimize", [])),
        "llm_calls": engine["calls"], "tokens_in": engine["tokens_in"], "tokens_out": engine["tokens_out"],
        "eval_llm_calls": sum(v["calls"] for s, v in rows.items() if s in EVAL_STAGES),
        "eval_subject_generations": subject,
    }


def workload(cfg: DictConfig) -> Workload:
    """Train and held-out queries and the mean query length, as the queries stage would split them:
    the same `data` component gives the same rows."""
    from hydra.utils import instantiate

    from oyster_exp.data.seed import heldout_split

    source = instantiate(cfg.data)
    rows = source.rows()
    splits = [heldout_split(r["id"], int(cfg.seed), float(source.heldout_fraction)) for r in rows]
    chars = sum(len(r["query"]) for r in rows) / max(1, len(rows))
    return Workload(train=splits.count("train"), heldout=splits.count("heldout"), query_chars=chars)


def _architecture(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """The model's config kwargs: from `model.architecture`, else the checkpoint's config.json."""
    if cfg.model.get("architecture") is not None:
        return dict(OmegaConf.to_container(cfg.model.architecture, resolve=True)), "model.architecture"
    from oyster_exp.models.resolve import resolve_model_dir

    path = resolve_model_dir(cfg.model) / "config.json"
    return json.loads(path.read_text()), str(path)


def build_on_meta(cfg: DictConfig) -> tuple[int, dict[str, Any], list[str]]:
    """Model and optimizer on the meta device; Trainer, loggers, LLM clients resolved, not constructed."""
    import torch
    from hydra.utils import get_class, get_method
    from transformers import AutoConfig, AutoModelForCausalLM

    arch, source = _architecture(cfg)
    kwargs = {k: v for k, v in arch.items() if k not in ("model_type", "architectures", "transformers_version",
                                                          "torch_dtype", "dtype")}
    config = AutoConfig.for_model(arch["model_type"], **kwargs)
    built = []
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    built.append(f"model {type(model).__name__} on {next(model.parameters()).device} from {source}")
    optimizer = instantiate(cfg.training.optimizer)(model.parameters())
    built.append(f"optimizer {type(optimizer).__name__} over {params:,} meta parameters")
    trainer_cls = get_class(str(cfg.trainer._target_))
    built.append(f"trainer {trainer_cls.__name__}(strategy={strategy_name(cfg.trainer)}, "
                 f"devices={cfg.trainer.get('devices')}, num_nodes={cfg.trainer.get('num_nodes', 1)}) resolved")
    for name, node in (cfg.logger or {}).items():
        if node is not None and "_target_" in node:
            built.append(f"logger {name}: {get_class(str(node._target_)).__name__} resolved")
    for role, node in cfg.llm.roles.items():
        target = str(node.client._target_)
        try:
            get_method(target)
            built.append(f"llm role {role}: {target} resolved")
        except ImportError:   # reported, not fatal: a dry run should show every problem at once
            built.append(f"llm role {role}: {target} NOT IMPORTABLE (that backend is not in this checkout)")
    loss = instantiate(cfg.objective)
    built.append(f"loss {loss.describe()}: {type(loss).__module__}.{type(loss).__qualname__}")
    del model, optimizer
    return params, arch, built


def strategy_name(trainer: DictConfig) -> str:
    """`fsdp` for both `strategy: fsdp` and a `_target_` node such as `oyster_exp.training.parallelism.fsdp`."""
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        return str(strategy.get("_target_", "auto")).rsplit(".", 1)[-1]
    return str(strategy)


def _gpus(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    per_node = int(devices) if str(devices).isdigit() else (len(devices) if OmegaConf.is_list(devices) else 1)
    return per_node * int(trainer.get("num_nodes", 1) or 1)


def estimate(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from oyster_exp.models.resolve import model_source

    params, arch, built = build_on_meta(cfg)
    trainer = cfg.trainer
    precision = str(trainer.get("precision", "32-true"))
    mem = estimate_memory(params, arch, _gpus(trainer), strategy_name(trainer), precision,
                          int(cfg.training.batch_size), int(cfg.training.max_length),
                          pairs=instantiate(cfg.objective).uses_rejected)
    work = workload(cfg)
    llm = estimate_llm(cfg, work)
    n_train, n_heldout = work.train, work.heldout
    return {"experiment": cfg.get("experiment"), "model": str(cfg.model.model_id),
            "weights": model_source(cfg.model).weights_status(),
            "data_engine_llm": str(cfg.llm.name), "lingo_bp": lingo_schedule(cfg.lingo_bp),
            "train_queries": n_train, "heldout_queries": n_heldout, "built": built,
            "memory_per_gpu": {**asdict(mem), "fits_80gib": mem.total_gib <= GPU_GIB}, "llm": llm}


def render(est: dict[str, Any]) -> str:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=110, record=True, color_system=None)
    console.print(f"dry run: {est['experiment'] or 'config'} — model {est['model']} (weights: {est['weights']})")
    for line in est["built"]:
        console.print(f"  built: {line}")
    m = est["memory_per_gpu"]
    # titles go on their own line: a table title wraps to the table's width and splits the phrase
    console.print(f"memory per GPU: {m['params'] / 1e9:.2f}B params, {m['strategy']} over {m['gpus']} GPU(s), "
                  f"{m['precision']}")
    t = Table()
    for col in ("weights", "grads", "Adam", "activations", "logits", "total"):
        t.add_column(col + " (GiB)", justify="right")
    t.add_row(*(f"{m[k]:.2f}" for k in ("weights_gib", "grads_gib", "optimizer_gib", "activations_gib", "logits_gib",
                                        "total_gib")))
    console.print(t)
    if m["total_gib"] > GPU_GIB:
        console.print(f"  WARNING: {m['total_gib']:.1f} GiB per GPU exceeds {GPU_GIB} GiB (A100/H100-80G): lower "
                      f"training.batch_size or training.max_length, or add GPUs")
    llm = est["llm"]
    console.print(f"LLM ({est['data_engine_llm']}): {est['train_queries']} train + {est['heldout_queries']} held-out "
                  f"queries, Lingo-BP {est['lingo_bp']}, {llm['calls_per_train_query']} calls per train query "
                  f"({llm['optimize_calls_per_query']} in optimize)", soft_wrap=True)
    t2 = Table()
    for col in ("stage", "calls", "tokens in", "tokens out (max)"):
        t2.add_column(col, justify="right" if col != "stage" else "left")
    for stage, r in llm["per_stage"].items():
        t2.add_row(stage, f"{r['calls']:,}", f"{r['tokens_in']:,}", f"{r['tokens_out']:,}")
    console.print(t2)
    return console.export_text()


def dry_run(cfg: DictConfig) -> None:
    """Print the estimates (a table, then one JSON line) and return; nothing is trained or called."""
    est = estimate(cfg)
    print(render(est), end="")
    print(json.dumps({"dry_run": {k: v for k, v in est.items() if k != "built"}}, default=str))
