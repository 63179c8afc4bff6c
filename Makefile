# kdbench — `make run` (quickstart) and `make test` set everything up on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install run test browser test-slow lint sweep table bench models reproduce-hinton reproduce-omitted3 study-topk study-tokens study-cifar10 study-fashion-all gpu-check gpu-wheels clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install kdbench with pinned versions (constraints.txt)

run: $(STAMP) ## quickstart: teacher + KD ablation on the embedded digits data, offline, CPU (ARGS= for overrides)
	$(PY) -m kdbench.quickstart $(ARGS)

test: $(STAMP) browser ## the fast test suite (slow tests excluded), one test file per CPU (up to 4) at a time
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder $(ARGS)

browser: ## a headless Chromium (Debian's package) for the HTML report's test; best effort, needs root + apt
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "note: no chromium (apt-get install chromium): the HTML report's browser test will be skipped"

test-slow: $(STAMP) ## only the slow tests (kill/resume, DDP, wheel install, submitit sweep, ...)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check kdbench tests

sweep: $(STAMP) ## run an ablation grid: default experiment=mnist_ablation; ARGS="experiment=... hydra/launcher=joblib"
	$(PY) -m kdbench.sweep $(ARGS)

table: $(STAMP) ## rebuild tables and plots from run records: ARGS="--experiment mnist_ablation"
	$(PY) -m kdbench.report $(ARGS)

bench: $(STAMP) ## benchmarks that print tables (loss, data, step, signals, harness vs reference loop) and write results/bench/<device>.md
	$(PY) -m kdbench.bench --out $(ARGS)

models: $(STAMP) ## every model's parameters and MACs
	$(PY) -m kdbench.cli models $(ARGS)

reproduce-hinton: $(STAMP) ## Hinton et al. 2015 MNIST: the sweeps (15-epoch students; the paper's regime), then results/hinton_mnist/
	$(PY) -m kdbench.sweep experiment=hinton_mnist $(ARGS)
	$(PY) -m kdbench.sweep experiment=hinton_mnist_tau $(ARGS)
	$(PY) -m kdbench.sweep experiment=hinton_mnist_paper $(ARGS)
	$(PY) -m kdbench.studies.hinton

reproduce-omitted3: $(STAMP) ## Hinton et al. 2015's omitted 3 (and only 7s and 8s): 3 seeds, bias fixed on val; results/hinton_mnist/omitted3.csv
	$(PY) -m kdbench.sweep experiment=hinton_omitted3 $(ARGS)
	$(PY) -m kdbench.studies.omitted --experiment hinton_omitted3
	$(PY) -m kdbench.sweep experiment=hinton_only78 $(ARGS)
	$(PY) -m kdbench.studies.omitted --experiment hinton_only78 --only 7,8
	$(PY) -m kdbench.studies.hinton

study-topk: $(STAMP) ## top-k captured teachers on Fashion-MNIST: capture k=1,2,5,10 (kept if present), then the sweep
	for k in 1 2 5 10; do $(PY) -m kdbench.cli capture --k $$k --out results/captures/fashion_topk-k$$k experiment=fashion_topk || exit 1; done
	$(PY) -m kdbench.sweep experiment=fashion_topk $(ARGS)

study-tokens: $(STAMP) ## token-level KD (markov + bytes_text): capture top-k per position (kept if present), then both sweeps
	for k in 1 8 32; do $(PY) -m kdbench.cli capture --k $$k --tau 1 --out results/captures/tokens_markov-k$$k experiment=tokens_markov || exit 1; done
	for k in 1 8 32 256; do $(PY) -m kdbench.cli capture --k $$k --tau 1 --out results/captures/tokens_bytes-k$$k experiment=tokens_bytes || exit 1; done
	$(PY) -m kdbench.sweep experiment=tokens_markov $(ARGS)
	$(PY) -m kdbench.sweep experiment=tokens_bytes $(ARGS)

study-cifar10: $(STAMP) ## CIFAR-10 (JPEG copy) methods x 2 pairs x 3 seeds, cached teacher; resumable; on a GPU: ARGS="trainer=gpu"
	$(PY) -m kdbench.sweep experiment=cifar10_methods $(ARGS)

study-fashion-all: $(STAMP) ## every method, Fashion-MNIST with 1,000 labelled images, 3 seeds, CPU; resumable (hours on 2 cores)
	$(PY) -m kdbench.sweep experiment=fashion_all $(ARGS)
	$(PY) -m kdbench.sweep experiment=fashion_all distill=fitnet distill.hint_layer=1 seed=0,1,2 $(ARGS)

gpu-check: ## issue 30: CUDA tests, smoke runs, GPU bench, a 10-epoch run killed + resumed, in 8 min (docs/gpu.md; ARGS=--dry-run on CPU)
	$(if $(wildcard $(PY)),$(PY),python3) -m kdbench.gpucheck --out $(or $(OUT),outputs/gpucheck-$(shell date +%Y%m%d-%H%M%S)) $(ARGS)

gpu-wheels: $(STAMP) ## the wheels and data a bare GPU machine lacks, into .gpucarry/ (ignored; name it in the run tool's carry)
	$(PY) -m kdbench.gpucheck --prepare .gpucarry

clean: ## remove the virtualenv, caches and Hydra outputs (keeps results/)
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache wandb
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
