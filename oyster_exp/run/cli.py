"""`oyster-exp`: the Hydra entry point. Thin: validate, print the config, run the stage graph.

Config errors (wrong type, out-of-range value, unknown option) are caught before any model
loads and reported as one line with exit code 2, no traceback; so are data errors (a malformed
query file, benchmark file or taxonomy workbook: `core.errors.DataError`), found when their stage runs.
A stage that cannot run, or one over `failure_policy.max_failed_share`, ends the run with one line on
stderr and exit code 1. A run that finished with transiently failed records under that threshold exits 0
with status `partial` in `manifest.json` and one warning line per such stage on stderr.
"""
from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from pathlib import Path

from oyster_exp.core.env import apply_offline_defaults

apply_offline_defaults()

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from oyster_exp.config.errors import (
    ConfigError,
    one_line,
)
from oyster_exp.config.locate import conf_dir, project_root
from oyster_exp.config.structured import register_configs, validate_config
from oyster_exp.run.components import register_all

log = logging.getLogger("oyster_exp")
CONF_DIR = conf_dir()
EXIT_CONFIG = 2
EXIT_STAGE = 1


def register_resolvers() -> None:
    from oyster_exp.tracking.wandb import wandb_offline

    if not OmegaConf.has_resolver("oyster.root"):
        OmegaConf.register_new_resolver("oyster.root", project_root)
        OmegaConf.register_new_resolver("oyster.wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("oyster.sweep_group"):
        from oyster_exp.run.sweep_arm import gpus_per_node, sqlite_url, wandb_group, wandb_job_type, wandb_run_name

        OmegaConf.register_new_resolver("oyster.sweep_group", wandb_group)
        OmegaConf.register_new_resolver("oyster.arm_job_type", wandb_job_type)
        OmegaConf.register_new_resolver("oyster.arm_run_name", wandb_run_name)
        OmegaConf.register_new_resolver("oyster.gpus_per_node", gpus_per_node)
        OmegaConf.register_new_resolver("oyster.sqlite_url", sqlite_url)


register_configs()
register_all()
register_resolvers()


def config_fail(message: str) -> None:
    print(f"oyster-exp: config error: {message}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


_PASSTHROUGH_FLAGS = {"-m", "--multirun"}


def precheck(argv: list[str]) -> None:
    """Compose (and validate) every job's config before Hydra starts, so errors are one line."""
    if any(a.startswith("-") and a not in _PASSTHROUGH_FLAGS for a in argv):
        return  # --help, --cfg, -cn ...: Hydra's own handling
    overrides = [a for a in argv if a not in _PASSTHROUGH_FLAGS]
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        config_fail(one_line(e))
    combos: list[list[str]] = []
    base: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:
                values = []
            if not values:
                base.append("")
                continue
            prefix = o.get_key_element() + "="
            base.append(prefix + values[0])
            sweeps.append((i, [prefix + v for v in values]))
        else:
            base.append(o.input_line)
    combos.append(base)
    for i, options in sweeps:
        for opt in options[1:]:
            combo = list(base)
            combo[i] = opt
            combos.append(combo)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="oyster-exp"):
        for combo in combos:
            try:
                cfg = compose(config_name="config", overrides=[c for c in combo if c])
                validate_config(cfg, resolve=False)
            except ConfigError as e:
                config_fail(str(e))
            except Exception as e:
                config_fail(one_line(e))


def print_config_tree(cfg: DictConfig, path: Path, show: bool) -> None:
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    from oyster_exp.core.redaction import strip_secrets

    tree = Tree("config", guide_style="dim")
    data = strip_secrets(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    for key, value in data.items():
        branch = tree.add(f"[bold]{key}")
        text = OmegaConf.to_yaml(value) if isinstance(value, (dict, list)) else str(value)
        branch.add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    if show:
        Console().print(tree)
    with open(path, "w") as fh:
        Console(file=fh, width=120, color_system=None).print(tree)


def build_loggers(cfg: DictConfig) -> list[object]:
    from hydra.utils import instantiate

    from oyster_exp.core.redaction import strip_secrets

    loggers = []
    hparams = strip_secrets(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    for node in (cfg.logger or {}).values():
        if node is None or "_target_" not in node:
            continue
        if str(node._target_).endswith("WandbLogger"):
            # config goes to wandb.init, so the W&B run starts on first use: a resumed train stage can
            # still point the logger at the run id stored beside its checkpoint
            loggers.append(instantiate(node, _partial_=True)(config=hparams))
            continue
        lg = instantiate(node)
        lg.log_hyperparams(hparams)
        loggers.append(lg)
    return loggers


def finish_loggers(loggers: list[object], ok: bool) -> None:
    for lg in loggers:
        with contextlib.suppress(Exception):   # a logger that cannot finalise must not hide the run's own error
            lg.finalize("success" if ok else "failed")  # type: ignore[attr-defined]
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0 if ok else 1)
    except Exception:
        pass


def run(cfg: DictConfig) -> float:
    """Run the stage graph; return the report headline named by `sweep.objective` (Optuna's objective)."""
    from oyster_exp.core.errors import DataError, EndpointError, StageError
    from oyster_exp.llm.factory import clear_local_clients
    from oyster_exp.llm.usage_report import log_run_usage
    from oyster_exp.pipeline.runner import RunContext, partial_stages, run_pipeline
    from oyster_exp.run.manifest import write_manifest
    from oyster_exp.stages import default_stages

    started = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    print_config_tree(cfg, run_dir / "config_tree.txt", bool(cfg.print_config))
    ctx = RunContext(cfg=cfg, run_dir=run_dir, cache_root=Path(str(cfg.paths.cache_dir)))
    status, reason = "failed", None
    try:
        ctx.loggers = build_loggers(cfg)
        from oyster_exp.run.sweep_arm import arm_overrides, inject_test_fault, objective_value

        stages = inject_test_fault(default_stages(), arm_overrides())
        run_pipeline(ctx, stages)
        from oyster_exp.run.wandb_artifacts import publish_artifacts

        publish_artifacts(ctx, stages)
        partial = partial_stages(ctx)
        if partial:
            status, reason = "partial", "; ".join(partial)
            for line in partial:
                print(f"oyster-exp: {line}; the next run of the same command retries them", file=sys.stderr)
            log.info("run partial: %s", run_dir)
        else:
            status = "completed"
            log.info("run complete: %s", run_dir)
    except (DataError, StageError, EndpointError) as e:
        reason = str(e)
        log.error("%s", e)
        kind = ("data error: " if isinstance(e, DataError) else
                "endpoint error: " if isinstance(e, EndpointError) else "")   # subclasses say their kind too
        print(f"oyster-exp: {kind}{' '.join(reason.split())}", file=sys.stderr)
        raise SystemExit(EXIT_STAGE if isinstance(e, StageError) else EXIT_CONFIG) from None
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}"
        raise
    finally:
        write_manifest(ctx, status, started, reason)
        log_run_usage(ctx)  # LLM calls/tokens/failures/retries per stage and role into the W&B run
        finish_loggers(ctx.loggers, status == "completed")
        clear_local_clients()
    return objective_value(run_dir, str(cfg.sweep.objective))


def _validated(cfg: DictConfig) -> DictConfig:
    try:
        validate_config(cfg, resolve=True)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError("config", one_line(e)) from None
    return cfg


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from oyster_exp.run.sweep_arm import is_multirun, run_arm

    if is_multirun() and not cfg.dry_run:  # an arm records its failure (config errors too); the sweep goes on
        return run_arm(cfg, lambda c: run(_validated(c)))
    try:
        validate_config(cfg, resolve=True)
    except ConfigError as e:
        config_fail(str(e))
    except Exception as e:
        config_fail(one_line(e))
    if cfg.dry_run:
        from oyster_exp.run.dry_run import dry_run

        return dry_run(cfg)
    return run(cfg)


_HELP_FLAGS = {"--help", "-h"}


def without_schema_options(help_text: str) -> str:
    """Hydra's group listing without the structured-config schemas (`*_schema`): they are the types behind an
    option's YAML (`defaults: [<option>_schema, _self_]`), not options to choose; a group of schemas only goes."""
    lines = []
    for line in help_text.splitlines():
        key, sep, options = line.partition(": ")
        if sep and options and re.fullmatch(r"[\w/@.-]+", key) and "schema" in options:
            kept = [o for o in options.split(", ") if not o.endswith("schema")]
            if not kept:
                continue
            line = f"{key}: {', '.join(kept)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    if _HELP_FLAGS & set(sys.argv[1:]):   # Hydra prints the help (conf/hydra/help/oyster.yaml) and exits
        import io

        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                _app()
        finally:
            sys.stdout.write(without_schema_options(buf.getvalue()))
        return
    precheck(sys.argv[1:])
    _app()
    from oyster_exp.run.hydra_callbacks import failed_arms

    if failed_arms():
        print(f"oyster-exp: {failed_arms()} arm(s) of the sweep failed; see ledger.jsonl in the sweep directory",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
