"""`dry_run=true`: build every object of a run without weights or work, and estimate what the run will cost.

Why: the paper's runs (14B models, FSDP over 8 GPUs, QwQ-32B as data-engine LLM) cannot run on a laptop,
but their configs should be checked there: the model is built from its architecture on the meta device
(no memory, no download), the optimizer over those meta parameters, the Trainer, loggers and LLM clients
are resolved to their classes without being constructed (constructing an FSDP Trainer needs the GPUs),
and the data set is loaded to count queries. Printed: a table and, last, one JSON line.

The estimates are arithmetic on the config (formulas below), not measurements:
* memory per GPU = (weights + gradients + Adam moments + master copy) / shards + gathered copies + unsharded
  root + activations + logits. Bytes per parameter follow `model.dtype` and `trainer.precision`
  (`precision_policy`: fp32 weights under bf16-mixed are 4 + 4 + 8, bf16 weights 2 + 2 + 4, DeepSpeed's
  16-bit modes 2 + 2 + 8 plus a 4-byte fp32 master); which parts are sharded is
  `training.parallelism.sharded_state` (FSDP all, ZeRO-2 gradients and moments, DDP none). Under FSDP the
  root unit (embeddings, final norm, LM head: 1.56B parameters of Qwen3-14B) stays gathered through
  forward and backward, with its full gradient, in the compute dtype, as do two decoder units at a time;
  without sharding, autocast holds a 16-bit copy of fp32 weights;
  activations per layer ≈ 34·s·b·h bytes (Korthikanti et al. 2022, 16-bit, flash attention so no s² term),
  b = 2 × training.batch_size for ORPO (chosen and rejected), logits b·s·V·(2 + 4) bytes;
* LLM calls: each stage states its own (`Stage.estimate`, next to the code that makes the calls, where it
  says when it is exact and when an upper bound); this module sums them. Per training query that is
  generate 2 (answer, reasoning), assess 1, extract 1, optimize 2 judges for the initial answer + 5 per
  Lingo-BP epoch (edit, recombine, the actor's reasoning with the natural recombiner, two judges), so the
  paper's both×3 is 17 in optimize and 21 in all (14 and 18 with lingo_bp/recombiner=plan_as_system);
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
from oyster_exp.training.parallelism import sharded_state, strategy_label

GIB = 1024**3
GPU_GIB = 80          # the memory of the GPUs the paper configs target (A100/H100 80G)


@dataclass
class MemoryEstimate:
    """Peak training memory per GPU, one field per kind of tensor (GiB), and the policy it was computed under."""

    params: int
    root_params: int
    gpus: int
    strategy: str
    precision: str
    weight_dtype: str
    bytes_per_param: dict[str, int]
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    master_gib: float
    gathered_gib: float
    root_gib: float
    activations_gib: float
    logits_gib: float
    total_gib: float


DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class PrecisionPolicy:
    """Bytes per parameter of each kind of training state, from the weight dtype and the precision setting.

    `weights`, `grads`: the stored (master) weights and their gradients, which PyTorch keeps in the
    weights' dtype; `optimizer`: AdamW's two moments, also in that dtype; `master`: a separate fp32
    copy, which only DeepSpeed keeps (it casts the model to 16 bit itself); `compute`: one parameter in
    the compute dtype (FSDP's all-gathered units, autocast's casted weights, activations).
    """

    weights: int
    grads: int
    optimizer: int
    master: int
    compute: int


def precision_policy(weight_dtype: str, precision: str, strategy: str) -> PrecisionPolicy:
    """What a run stores per parameter: `model.dtype` is what the weights are loaded in; `*-true`
    precisions cast them to that precision (Lightning's `convert_module`); `*-mixed` leaves them and
    computes in 16 bit under autocast (FSDP: gathers and reduces in 16 bit, shards stay as loaded)."""
    if weight_dtype not in DTYPE_BYTES:
        raise ValueError(f"model.dtype={weight_dtype!r}: expected one of {sorted(DTYPE_BYTES)}")
    sixteen = precision.startswith(("bf16", "16"))
    compute = 2 if sixteen else 4
    if "deepspeed" in strategy.lower() and sixteen:
        return PrecisionPolicy(weights=2, grads=2, optimizer=8, master=4, compute=2)
    stored = 2 if precision.endswith("-true") and sixteen else (
        4 if precision.startswith("32") else DTYPE_BYTES[weight_dtype])
    return PrecisionPolicy(weights=stored, grads=stored, optimizer=2 * stored, master=0, compute=compute)


def estimate_memory(params: int, arch: dict[str, Any], gpus: int, strategy: str, precision: str, batch_size: int,
                    seq_len: int, pairs: bool = True, weight_dtype: str = "float32",
                    root_params: int = 0) -> MemoryEstimate:
    """Peak training memory per GPU (GiB) from the formulas in the module docstring.

    `root_params`: parameters outside the decoder layers (embeddings, final norm, LM head). Under FSDP
    they form the root unit, which is gathered for the whole forward and backward (FSDP does not
    reshard the root after forward) and whose full gradient exists before its reduce-scatter; they
    are counted in the `root` row on top of their shards. Gathered decoder units: the running one
    and the prefetched next one, in the compute dtype.
    """
    pol = precision_policy(weight_dtype, precision, strategy)
    sw, sg, so = sharded_state(strategy)
    n = max(1, gpus)
    weights = params * pol.weights / (n if sw else 1)
    grads = params * pol.grads / (n if sg else 1)
    optim = params * pol.optimizer / (n if so else 1)
    master = params * pol.master / (n if so else 1)
    b = batch_size * (2 if pairs else 1)
    h, layers = int(arch.get("hidden_size", 0)), int(arch.get("num_hidden_layers", 0))
    act = pol.compute
    activations = 34 * seq_len * b * h * layers * act / 2
    logits = b * seq_len * int(arch.get("vocab_size", 0)) * (act + 4)
    if sw:
        gathered = 2 * (params - root_params) / max(1, layers) * pol.compute
        root = root_params * (pol.compute + pol.compute)      # gathered weights + unsharded gradient
    else:   # autocast keeps a 16-bit copy of every weight it casts, until the forward ends
        gathered = params * pol.compute if pol.compute < pol.weights else 0
        root = 0
    parts = [x / GIB for x in (weights, grads, optim, master, gathered, root, activations, logits)]
    r = [round(x, 2) for x in parts]
    return MemoryEstimate(params=params, root_params=root_params, gpus=n, strategy=strategy, precision=precision,
                          weight_dtype=weight_dtype, bytes_per_param=asdict(pol),
                          weights_gib=r[0], grads_gib=r[1], optimizer_gib=r[2], master_gib=r[3], gathered_gib=r[4],
                          root_gib=r[5], activations_gib=r[6], logits_gib=r[7], total_gib=round(sum(parts), 2))


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


def build_on_meta(cfg: DictConfig) -> tuple[int, int, dict[str, Any], list[str]]:
    """Model and optimizer on the meta device; Trainer, loggers, LLM clients resolved, not constructed.
    Returns (parameters, parameters outside the decoder layers, architecture, what was built)."""
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
    root = root_parameters(model, int(getattr(config, "num_hidden_layers", 0) or 0))
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
    return params, root, arch, built


def strategy_name(trainer: DictConfig) -> str:
    """`fsdp` for both `strategy: fsdp` and a `_target_` node such as `oyster_exp.training.parallelism.fsdp`."""
    return strategy_label(trainer.get("strategy", "auto"))


def root_parameters(model: Any, layers: int) -> int:
    """Parameters outside the decoder layers (embeddings, final norm, LM head): everything but the
    module list of `layers` blocks, which FSDP wraps one unit per block."""
    import torch

    blocks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
    inside = sum(p.numel() for p in blocks[0].parameters()) if blocks else 0
    return sum(p.numel() for p in model.parameters()) - inside


def _gpus(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    per_node = int(devices) if str(devices).isdigit() else (len(devices) if OmegaConf.is_list(devices) else 1)
    return per_node * int(trainer.get("num_nodes", 1) or 1)


def estimate(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import instantiate

    from oyster_exp.models.resolve import model_source

    params, root, arch, built = build_on_meta(cfg)
    trainer = cfg.trainer
    precision = str(trainer.get("precision", "32-true"))
    mem = estimate_memory(params, arch, _gpus(trainer), strategy_name(trainer), precision,
                          int(cfg.training.batch_size), int(cfg.training.max_length),
                          pairs=instantiate(cfg.objective).uses_rejected, weight_dtype=str(cfg.model.dtype),
                          root_params=root)
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
    console.print(f"memory per GPU: {m['params'] / 1e9:.2f}B params ({m['root_params'] / 1e9:.2f}B outside the "
                  f"decoder layers), {m['strategy']} over {m['gpus']} GPU(s), weights {m['weight_dtype']}, "
                  f"{m['precision']}", soft_wrap=True)
    per = m["bytes_per_param"]
    t = Table()
    for col in ("part", "bytes/param", "GiB"):
        t.add_column(col, justify="left" if col == "part" else "right")
    rows = [("weights", per["weights"], "weights_gib"), ("gradients", per["grads"], "grads_gib"),
            ("optimizer (2 Adam moments)", per["optimizer"], "optimizer_gib"),
            ("fp32 master copy", per["master"], "master_gib"),
            ("gathered units / 16-bit copies", per["compute"], "gathered_gib"),
            ("unsharded root (embeddings, head)", 2 * per["compute"], "root_gib"),
            ("activations", None, "activations_gib"), ("logits", None, "logits_gib"), ("total", None, "total_gib")]
    for label, nbytes, key in rows:
        t.add_row(label, "" if nbytes is None else str(nbytes), f"{m[key]:.2f}")
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
