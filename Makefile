# d4s: one-command setup, tests, demo and benchmarks. Everything runs inside a virtualenv this Makefile
# creates from the pinned lock file; override its location with `make test VENV=/path/to/venv`.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.d4s-installed
LOCK := requirements.lock
PYTEST_ARGS ?=
DATASET ?= toy4d
ROOT ?=
OUT ?= data/$(DATASET)
ANNOTATE_ARGS ?=
EVAL_CONFIG ?= configs/tiny/eval.yaml
CKPT ?=
RUN ?=
DEMO_FAST ?=

.PHONY: help install test test-slow demo bench annotate eval lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# -qq: pip still reports errors, but not the per-package index warnings some local mirrors cause
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --requirement $(LOCK)
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation --editable .
	touch $@

install: $(STAMP)  ## create the virtualenv and install the pinned stack (runs once per lock change)

test: $(STAMP)  ## the test suite without its slow tier (CPU, under 15 minutes on 2 cores; includes a smoke run of the demo)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)  ## the slow tier: the fast demo's learning checks, stage-3 motion, DiT memorisation (about 7 minutes on 2 cores; CI runs it after make test)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

demo: $(STAMP)  ## the main job on a CPU: annotate toy4d, train the generator and 3 tiny stages, generate, evaluate -> runs/demo/SUMMARY.md (DEMO_FAST=1: ~7 min)
	$(BIN)/python -m d4s.demo $(if $(DEMO_FAST),--fast)

bench: $(STAMP)  ## benchmarks (renderer, its components, annotation, data loader, models, training steps, generation, the demo): tables on stdout, JSON in bench/results/
	$(BIN)/python bench/render.py
	$(BIN)/python bench/components.py
	$(BIN)/python bench/annotate.py
	$(BIN)/python bench/dataloader.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/demo.py

annotate: $(STAMP)  ## annotate a dataset into shards: make annotate DATASET=tartanair ROOT=/data/tartanair OUT=shards/tartanair [ANNOTATE_ARGS="--set clips.stride=25"]
	$(BIN)/python -m annotation --dataset $(DATASET) $(if $(ROOT),--root $(ROOT)) --out $(OUT) $(ANNOTATE_ARGS)

eval: $(STAMP)  ## evaluate a checkpoint (paper protocol): make eval [EVAL_CONFIG=configs/eval.yaml] [CKPT=...] [RUN=eval/<run>]
	$(BIN)/python -m d4s.eval --config $(EVAL_CONFIG) $(if $(CKPT),--ckpt $(CKPT)) $(if $(RUN),--out $(RUN))

lock:  ## re-resolve the pinned direct dependencies of pyproject.toml into requirements.lock
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -qq ".[viewer,dev]"
	.lock-venv/bin/python -m pip freeze --all --exclude pip --exclude d4s > $(LOCK)
	rm -rf .lock-venv

clean:  ## remove the virtualenv, caches and outputs
	rm -rf $(VENV) .pytest_cache outputs runs bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
