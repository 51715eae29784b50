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


class ResumeMode(str, Enum):
    auto = "auto"                  # continue from the train stage's last.ckpt when one exists
    never = "never"                # always start from the base weights (the old checkpoints are ignored)


class Quantization(str, Enum):
    none = "none"                  # LoRA on the model in its own dtype
    nf4 = "nf4"                    # QLoRA: 4-bit NormalFloat base weights (bitsandbytes, CUDA only)


def _r(ge: float | None = None, le: float | None = None, gt: float | None = None) -> dict[str, float]:
    return {k: v for k, v in {"ge": ge, "le": le, "gt": gt}.items() if v is not None}


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING
    shared_data_dir: str = MISSING


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
class ModelCardConfig:
    """Front matter of the exported model's card (`training.card.CardMeta`); written into the export."""

    base_model: str | None = None         # Hub repo id of the base model; null: model.model_id without "@..."
    license: str | None = None            # Hub licence id (the base model's licence usually binds the fine-tune)
    pipeline_tag: str = "text-generation"
    datasets: list[str] = field(default_factory=list)   # Hub dataset ids besides the run's own pairs
    tags: list[str] = field(default_factory=list)       # extra Hub tags


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
    card: ModelCardConfig = field(default_factory=ModelCardConfig)


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
    # the report headline key a job returns (Optuna maximises it)
    objective: str = "trained/construction/constructive@beta=2"
    skip_finished: bool = True            # multirun: an arm whose config already finished is skipped on a rerun
    fail_fast: bool = False               # multirun: stop the sweep at the first failed arm (Hydra's behaviour)
    # the arm every other arm is compared with in summary.md (paired CI on shared items): the override(s) that
    # select it, e.g. "lingo_bp=off"; None: the first arm of the sweep
    baseline: str | None = None


@dataclass
class FailurePolicyConfig:
    """When failed LLM work stops a run (`pipeline.runner`): a stage whose transiently failed records are
    over this share of its records, or all of them, ends the run with exit code 1. Under it the run goes on
    and ends `partial`; either way the next run of the same command retries exactly those records."""

    max_failed_share: float = field(default=0.2, metadata=_r(ge=0.0, le=1.0))


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: Any = MISSING                  # a model source component (conf/model; oyster_exp.models.sources)
    llm: LLMConfig = field(default_factory=LLMConfig)
    data: Any = MISSING                   # a query source component (conf/data; oyster_exp.data.sources)
    # component groups: the node is the schema registered by the component's module (oyster_exp.run.components)
    risk: Any = MISSING                   # csa.assessment.RiskSettings
    stackelberg: Any = MISSING            # a csa.stackelberg.LeaderRule
    lingo_bp: Any = MISSING               # csa.lingo_bp.LingoBPSettings (with similarity and recombiner components)
    pairs: Any = MISSING                  # a csa.pairs.PairPolicy
    objective: Any = MISSING              # a TrainingLoss component (conf/objective; training.objectives)
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
    failure_policy: FailurePolicyConfig = field(default_factory=FailurePolicyConfig)
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
    skipped: they are checked when they resolve. A schema with a static `check_config(node, key)`
    (a component's cross-field checks) is called with its node.
    """
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    hook = getattr(schema, "check_config", None)   # a component's own cross-field checks
    if callable(hook):
        hook(node, prefix)
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


def _check_required(cfg: DictConfig, group: str) -> None:
    """A component knob without a default (`???`, e.g. `model=local_path` without `model.path`)."""
    node = cfg[group]
    for key in node:
        if not OmegaConf.is_interpolation(node, str(key)) and OmegaConf.is_missing(node, str(key)):
            target = str(node.get("_target_", "?")).rsplit(".", 1)[-1]
            raise ConfigError(f"{group}.{key}", f"required by {group} ({target}): it has no default")


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
    names: dict[str, str] = {}
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
            from hydra.utils import instantiate

            obj = instantiate(node, _convert_="all")   # the component itself: its schema has no methods
            for knob, msg in getattr(obj, "config_problems", lambda: [])():
                raise ConfigError(f"eval.{key}.{knob}", msg)
            name = str(getattr(obj, "name", "") or key)   # records and rows are told apart by this name
            if name in names:
                raise ConfigError(f"eval.{key}.name", f"{name!r} is also the name of eval.{names[name]}; every "
                                  f"benchmark of a suite needs its own name")
            names[name] = str(key)


def validate_config(cfg: DictConfig, resolve: bool = True) -> None:
    """Range and cross-field checks that OmegaConf's type system cannot express."""
    for group in ("model", "data", "objective"):
        _check_required(cfg, group)
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
    for required in ("actor", "user_judge", "safety_judge", "editor"):
        if required not in cfg.llm.roles:
            raise ConfigError(f"llm.roles.{required}", "missing role; every LLM role needs a client")
    if resolve:
        for key in cfg:
            if key not in ("logger",):  # logger nodes use ${hydra:...}, resolved inside the job
                OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
