# comfyui-ltx-fp8: one-command host, tests and demo. Everything runs from the repo-root .venv/
# (torch 2.13.0 CPU + the host's requirements) against the pinned ComfyUI in .host/ComfyUI/,
# both made by tools/bootstrap.sh (idempotent; a no-op once done).
#   make run                     set up, demo bundle + example workflows, keep serving on :$(PORT)
#   make demo-check              the same demo, exiting after the printed reports and table
#   make workflows               regenerate example_workflows/*.json and tests/workflows/*.json from their api/
#   make lint                    ruff check + ruff format --check (part of make test)
#   make test                    set up, then lint and all tests (PYTEST_ARGS="-k smoke" to narrow)
#   make serve PORT=8188 ARGS="--verbose DEBUG"   the host with the pack, in the foreground
#   make bench [QUICK=1]         benchmarks (bench/): bench/results.json, BENCHMARKS.md, bench/plots/
#   make bench FULL=1 [FULL_FILE=path]   the full-size profile (the 48-block bundle, 25 GB, written
#                                once if missing): its section of bench/results.json and BENCHMARKS.md
#   make gpu-check               on a CUDA machine: CUDA tests, block forward, full-size model step,
#                                full-size file to the GPU (tools/gpu_check.py; JSON into $OUT when set)
#   make gpu-prep                the host's own packages into .gpu-site/ for a GPU machine without them
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PORT ?= 8188
ARGS ?=
PYTEST_ARGS ?=
PYTEST_TIMEOUT ?= 1800
BENCH_ARGS ?=
FULL_FILE ?=
GPU_CHECK_ARGS ?=
PY := .venv/bin/python

.PHONY: help setup lint test serve run demo-check workflows bench gpu-check gpu-prep clean-work

help:
	@echo "make run | test | serve [PORT=8188 ARGS=...] | demo-check | workflows | bench [QUICK=1|FULL=1] | gpu-check | setup"

setup:
	@bash tools/bootstrap.sh

# ruff (pinned in requirements-dev.txt, configured in pyproject.toml): lint + format check.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# pytest exit codes all fail the target, 5 (no tests collected) included.
test: setup lint
	$(PY) -m pytest tests -q --durations=15 --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)

serve: setup
	PORT=$(PORT) bash tools/run_host.sh $(ARGS)

# tools/demo.py: demo files into .work/host/models (idempotent), the host with the pack and
# tests/nodepack on 127.0.0.1:$(PORT), the example workflows queued, reports + agreement printed.
run: setup
	PORT=$(PORT) HOST_ARGS='$(ARGS)' $(PY) tools/demo.py

demo-check: setup
	DEMO_EXIT=1 PORT=$(PORT) HOST_ARGS='$(ARGS)' $(PY) tools/demo.py

workflows: setup
	$(PY) tools/workflow_ui.py

bench: setup
	@if [ -d bench ]; then \
	  $(PY) -m bench $(if $(filter 1 yes true,$(QUICK)),--quick) \
	    $(if $(filter 1 yes true,$(FULL)),--full $(if $(FULL_FILE),--full-file $(FULL_FILE))) $(BENCH_ARGS); \
	else \
	  echo "[bench] no bench/ yet" >&2; exit 1; \
	fi

# The GPU check (tools/gpu_check.py) needs no set-up: a GPU machine may have no internet. Its
# interpreter: .venv's when that torch sees CUDA, else python3 (a CUDA image's torch). Copy the
# host's own packages first where the GPU machine lacks them: `make gpu-prep` here, then take
# `.host/ComfyUI` and `.gpu-site` along.
GPU_PY ?= $(shell if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then echo .venv/bin/python; else echo python3; fi)

gpu-check:
	$(GPU_PY) tools/gpu_check.py $(GPU_CHECK_ARGS)

gpu-prep: setup
	$(PY) tools/gpu_check.py --prep

clean-work:
	rm -rf .work test-artifacts
