# nas-cli developer tasks. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# `mlflow ui` lives in an environment of its own: its server needs SQLAlchemy 2, the optuna extra's storage 1.4
UI_VENV := .venv-mlflow-ui
SMOKE  := outputs/smoke
QUIET  := progress=false threads=1

.DEFAULT_GOAL := help
.PHONY: help install test test-fast smoke bench bench-gpu bench-env lint config-docs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/nas-cli: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(UI_VENV)/bin/mlflow: $(BIN)/nas-cli
	$(PYTHON) -m venv $(UI_VENV)
	$(UI_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(UI_VENV)/bin/python -m pip install --quiet \
		"mlflow==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("mlflow-skinny"))')"
	@touch $@

install: $(BIN)/nas-cli $(UI_VENV)/bin/mlflow  ## create .venv (nas-cli, its dev extras) and .venv-mlflow-ui (`mlflow ui`)

test: install  ## the whole test suite (CPU, includes slow tests)
	$(BIN)/python -m pytest

test-fast: install  ## the inner loop (under 3 min): the suite without the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

smoke: install  ## one tiny run of every command (prep-imagenet needs the archives: see tests/test_prep_imagenet.py)
	rm -rf $(SMOKE)
	$(BIN)/nas-cli train -m data=synthetic data.shape=[1,12,12] model.width=4,8 optim.weight_decay=0,1e-4 \
		trainer.epochs=2 ema.decay=0.9 $(QUIET) hydra.sweep.dir=$(SMOKE)/train
	$(BIN)/nas-cli report $(SMOKE)/train --rows model.width --cols optim.weight_decay --plot
	$(BIN)/nas-cli report $(SMOKE)/train --rows model.width
	$(BIN)/nas-cli fuse-bn source=$(SMOKE)/train/0 batch_sizes=[1,8] repeats=5 $(QUIET) hydra.run.dir=$(SMOKE)/fuse_bn
	$(BIN)/nas-cli dqn total_steps=2000 eval.every=1000 eval.episodes=2 agent.learning_starts=500 $(QUIET) \
		hydra.run.dir=$(SMOKE)/dqn
	$(BIN)/nas-cli pg total_steps=4000 eval.every=2000 eval.episodes=3 $(QUIET) hydra.run.dir=$(SMOKE)/pg
	$(BIN)/nas-cli ga generations=2 agent.population=32 agent.episodes=2 agent.elite_episodes=5 $(QUIET) \
		hydra.run.dir=$(SMOKE)/ga
	$(BIN)/nas-cli search-darts trainer.epochs=1 data.subset=200 $(QUIET) hydra.run.dir=$(SMOKE)/search_darts
	$(BIN)/nas-cli train model=darts model.genotype=$(SMOKE)/search_darts/genotype.json data=digits \
		trainer.epochs=1 data.subset=200 $(QUIET) hydra.run.dir=$(SMOKE)/darts_retrain
	$(BIN)/nas-cli search-rl search.children=4 child.epochs=1 child.subset=100 $(QUIET) hydra.run.dir=$(SMOKE)/search_rl
	$(BIN)/nas-cli search-rl reward=shared space=enas_macro enas.epochs=1 enas.controller_steps=5 enas.final_samples=2 \
		data.subset=200 $(QUIET) hydra.run.dir=$(SMOKE)/search_rl_shared
	$(BIN)/nas-cli search-rl reward=proxy proxy.name=naswot controller=evolution search.children=8 $(QUIET) \
		hydra.run.dir=$(SMOKE)/search_rl_proxy
	$(BIN)/nas-cli detect data.n_train=300 data.n_val=50 trainer.epochs=2 $(QUIET) hydra.run.dir=$(SMOKE)/detect
	$(BIN)/python -c "from nas_cli.data.shapes import shapes, save_images; d = shapes(n_train=1, n_val=4); \
		save_images((next(iter(d.val))[0] * d.val.std + d.val.mean).clamp(0, 1).mul(255).byte(), '$(SMOKE)/images')"
	$(BIN)/nas-cli detect mode=predict source=$(SMOKE)/detect images=$(SMOKE)/images $(QUIET) \
		hydra.run.dir=$(SMOKE)/detect_predict
	$(BIN)/nas-cli grad-bench num_dims=[2] num_init=1 num_batch=1 batch_size=200 nes.population=[40] $(QUIET) \
		hydra.run.dir=$(SMOKE)/grad_bench
	$(BIN)/nas-cli train -m experiment=init_study model.init=zeros,kaiming data.subset=600 trainer.epochs=1 \
		model.width=32 $(QUIET) hydra.sweep.dir=$(SMOKE)/init_study
	$(BIN)/nas-cli report $(SMOKE)/init_study
	$(BIN)/nas-cli report $(SMOKE)

bench: install bench-env  ## side-by-side benchmarks (print ratios)
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/nes_batched.py
	$(BIN)/python bench/fuse_bn.py
	$(BIN)/python bench/prep_imagenet.py
	$(BIN)/python bench/darts_search.py
	$(BIN)/python bench/darts_vs_random.py
	$(BIN)/python bench/detect.py
	$(BIN)/python bench/rl_search.py
	$(BIN)/python bench/cheap_search.py
	$(BIN)/python bench/dqn_cartpole.py
	$(BIN)/python bench/dqn_speed.py
	$(BIN)/python bench/pg_cartpole.py
	$(BIN)/python bench/ga_cartpole.py

bench-gpu: install  ## every GPU figure beside its reference, in one process (one line and exit 0 without CUDA)
	$(BIN)/python bench/gpu.py

# CleanRL, for bench/dqn_speed.py only: its own venv, since its pins predate ours
# (it declares Python < 3.11 but its dqn.py runs on 3.11).
CLEANRL := .venv-cleanrl
bench-env: $(CLEANRL)/bin/python  ## the separate venv with CleanRL that bench/dqn_speed.py compares against
$(CLEANRL)/bin/python:
	$(PYTHON) -m venv $(CLEANRL)
	$(CLEANRL)/bin/python -m pip install --quiet --no-deps --ignore-requires-python cleanrl==1.2.0
	$(CLEANRL)/bin/python -m pip install --quiet torch gymnasium==0.29.1 stable-baselines3==2.3.2 tensorboard

config-docs: install  ## CONFIG.md: every key of every shipped config, from the YAML (a test keeps it current)
	$(BIN)/python -m nas_cli.schema > CONFIG.md

lint: install  ## ruff's rules and formatting, and mypy's type check (CI runs them before the tests)
	$(BIN)/ruff check nas_cli tests bench
	$(BIN)/ruff format --check nas_cli tests bench
	$(BIN)/mypy

clean:  ## remove the venv, caches and run outputs
	rm -rf $(VENV) $(UI_VENV) $(CLEANRL) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
