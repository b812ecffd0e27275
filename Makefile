# flip-ctr developer commands. `make install && make test` is all a fresh clone needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch; an unpinned `torch` would pull a multi-GB CUDA build.
# On a GPU machine: make install TORCH_SPEC="torch==2.13.0 --index-url <cuda wheel index>"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-slow train train-ml1m ids bench mutation clean help

help:
	@grep -E '^[a-z-]+:.*?## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY) ## create .venv and install flip-ctr (editable) with dev extras
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,bench]"

test: ## the default test suite (CPU, < 20 min)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: ## real-data tests (ML-1M/ML-100K, real MiniLM)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# The main job runs these seeds and compares them paired; its runs go to a new TRAIN_DIR each time.
SEEDS ?= 1,2,3
ifndef TRAIN_DIR
TRAIN_DIR := outputs/make_train/$(shell date +%Y-%m-%d_%H-%M-%S)
endif

train: ## the main job: FLIP pipeline (pretrain → scratch / FLIP_ID / FLIP_PLM / FLIP) on ML-100K, CPU scale, 3 seeds, paired table
	$(VENV)/bin/flip-ctr pipeline --multirun seed=$(SEEDS) hydra.sweep.dir=$(TRAIN_DIR) $(ARGS)
	$(VENV)/bin/flip-ctr report $(TRAIN_DIR) --baseline "ID model from scratch" --out $(TRAIN_DIR)/report.md

ids: ## the nine ID baselines on ML-1M and ML-100K, 5 seeds, protocol=refit → results/id_baselines_refit.md (resumable)
	FLIP_CTR=$(VENV)/bin/flip-ctr scripts/id_baselines.sh outputs/id_baselines num_threads=1 $(ARGS)
	FLIP_CTR=$(VENV)/bin/flip-ctr scripts/write_id_results.sh outputs/id_baselines

mutation: ## mutation testing of the core modules (mutmut) → results/mutation.md; not in CI. TARGETS="masking report_stats" for some
	$(PY) -m pip install -q -e ".[mutation]"
	$(PY) scripts/mutation.py $(TARGETS)

bench: ## all benchmarks → results/benchmarks.md (+ results/benchmarks/*.json); ~50 min on 2 cores
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_plm.py
	$(PY) benchmarks/bench_id_models.py
	$(PY) benchmarks/bench_scale.py --text
	$(PY) benchmarks/write_report.py

clean:
	rm -rf outputs multirun .pytest_cache
