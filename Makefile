# drn-lightning: every target sets up its own environment, so a fresh clone needs no hand steps.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
TRAIN_ARGS ?=
EXPERIMENTS_ARGS ?=

.PHONY: install lint test test-slow test-all train experiments bench eval clean

install: $(STAMP)

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

lint: install
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m ruff format --check src tests benchmarks scripts
	$(PY) -m mypy

test: install
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -n 2 -m slow $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -n 2 -m 'slow or not slow' $(PYTEST_ARGS)

train: install
	$(PY) -m drn_lightning.train experiment=demo $(TRAIN_ARGS)

# The paper's ablations at CPU scale (dual on/off, PSNR vs rho, adaptation): about an hour on 2 cores.
experiments: install
	$(PY) scripts/experiments.py $(EXPERIMENTS_ARGS)

eval: install
	$(PY) -m drn_lightning.eval $(EVAL_ARGS)

bench: install
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
