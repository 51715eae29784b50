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
* LLM calls per training query: generate 2 (answer, reasoning) [×K with Stackelberg], assess 1, extract 1,
  optimize 2 judges for the initial answer + 4 per Lingo-BP epoch (edit, recombine, two judges), so the
  paper's both×3 is 14 in optimize and 18 in all; evaluation: 2 judge calls per held-out query and model,
  1 per Strata-Sword prompt and model. Retries come on top. Tokens: prompt ≈ characters / 3.5, completion
  = the role's max_tokens (an upper bound).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from oyster_exp.csa.lingo_bp import lingo_schedule

GIB = 1024**3
GPU_GIB = 80          # the memory of the GPUs the paper configs target (A100/H100 80G)
CHARS_PER_TOKEN = 3.5


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
                          weights_gib=round(parts[0], 2), grads_gib=round(parts[1], 2), optimizer_gib=round(parts[2], 2),
                          activations_gib=round(parts[3], 2), logits_gib=round(parts[4], 2),
                          total_gib=round(sum(parts), 2))


def _tokens(text_chars: float) -> int:
    return int(math.ceil(text_chars / CHARS_PER_TOKEN))


def _template_chars(name: str) -> int:
    path = Path(str(resources.files("oyster_exp") / "csa" / "prompts" / "en" / f"{name}.j2"))
    return len(path.read_text()) if path.exists() else 400


def estimate_llm(cfg: DictConfig, n_train: int, n_heldout: int, n_strata: int, query_chars: float) -> dict[str, Any]:
    """LLM calls and tokens per stage from the dataset size and the config (formulas: module docstring)."""
    roles = cfg.llm.roles

    def out_tokens(role: str) -> int:
        return int(roles[role].max_tokens) if role in roles else 0

    q = query_chars
    resp = out_tokens("actor") * CHARS_PER_TOKEN
    chain = out_tokens("editor") * CHARS_PER_TOKEN
    k = int(instantiate(cfg.stackelberg).candidates)   # the leader rule: 1 unless stackelberg=on
    epochs = len(lingo_schedule(cfg.lingo_bp))
    # (stage, role, calls per item, prompt chars per call)
    per_query = [
        ("generate", "actor", 2 * k, q + _template_chars("actor_think") / 2),
        ("assess", "safety_judge", 1, q + _template_chars("assess")),
        ("extract", "editor", 1, q + resp + _template_chars("extract")),
        ("optimize", "user_judge", 1 + epochs, q + resp + _template_chars("user_judge")),
        ("optimize", "safety_judge", 1 + epochs, q + resp + _template_chars("safety_judge") + 400),
        ("optimize", "editor", epochs, q + resp + chain + 2 * 400 + _template_chars("edit")),
        ("optimize", "actor", epochs, q + chain + _template_chars("recombine")),
    ]
    if k > 1:   # every Stackelberg candidate is judged before the leader chooses
        per_query += [("generate", "user_judge", k, q + resp + _template_chars("user_judge")),
                      ("generate", "safety_judge", k, q + resp + _template_chars("safety_judge"))]
    models = len(cfg.eval.models)
    gen_out = int(cfg.eval.generation.max_new_tokens) * CHARS_PER_TOKEN
    per_eval = [("evaluate", "user_judge", n_heldout * models, q + gen_out + _template_chars("user_judge")),
                ("evaluate", "safety_judge", n_heldout * models, q + gen_out + _template_chars("safety_judge")),
                ("evaluate", "safety_judge", n_strata * models, 600 + gen_out + _template_chars("strata_judge"))]
    rows: dict[str, dict[str, int]] = {}
    for stage, role, calls, chars in per_query:
        r = rows.setdefault(stage, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
        r["calls"] += calls * n_train
        r["tokens_in"] += calls * n_train * _tokens(chars)
        r["tokens_out"] += calls * n_train * out_tokens(role)
    for stage, role, calls, chars in per_eval:
        r = rows.setdefault(stage, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
        r["calls"] += calls
        r["tokens_in"] += calls * _tokens(chars)
        r["tokens_out"] += calls * out_tokens(role)
    engine = {k2: sum(v[k2] for s, v in rows.items() if s != "evaluate") for k2 in ("calls", "tokens_in", "tokens_out")}
    return {
        "per_stage": rows,
        "calls_per_train_query": sum(c for _, _, c, _ in per_query),
        "optimize_calls_per_query": sum(c for s, _, c, _ in per_query if s == "optimize"),
        "llm_calls": engine["calls"], "tokens_in": engine["tokens_in"], "tokens_out": engine["tokens_out"],
        "eval_llm_calls": rows["evaluate"]["calls"],
        "eval_subject_generations": (n_heldout + n_strata) * models,
    }


def _dataset(cfg: DictConfig) -> tuple[int, int, float]:
    """(train queries, held-out queries, mean query characters) as the queries stage would split them:
    the same `data` component gives the same rows."""
    from hydra.utils import instantiate

    from oyster_exp.data.seed import heldout_split

    source = instantiate(cfg.data)
    rows = source.rows()
    splits = [heldout_split(r["id"], int(cfg.seed), float(source.heldout_fraction)) for r in rows]
    chars = sum(len(r["query"]) for r in rows) / max(1, len(rows))
    return splits.count("train"), splits.count("heldout"), chars


def _strata_count(cfg: DictConfig) -> int:
    ss = cfg.eval.strata_sword
    if not ss.enabled:
        return 0
    files = len(ss.languages) * len(ss.levels)
    per_file = {1: 100, 2: 100, 3: 200}           # Strata-Sword: EN 100/100/200, CN 100/100/100 per level
    total = sum(per_file.get(int(lvl), 100) if lang == "en" else 100 for lang in ss.languages for lvl in ss.levels)
    return min(total, int(ss.limit) * files) if ss.limit else total


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
    n_train, n_heldout, qchars = _dataset(cfg)
    llm = estimate_llm(cfg, n_train, n_heldout, _strata_count(cfg), qchars)
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
