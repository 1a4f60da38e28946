# The two commands of the contract: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.edgeclip-installed
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeclip demo --out demo_out

test: lint
	$(PY) -m pytest -q -rs --durations=15 tests

# house rules: ruff (lint + format) and the import-layering contract (pyproject.toml [tool.importlinter])
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check -q src tests
	$(VENV)/bin/lint-imports

# the full benchmark as run for the committed results: fixed seed, THREADS torch threads (1), DEVICE (cpu; cuda
# adds the GPU throughput section); the labs themselves are experiment files: edgeclip lab run experiments/NAME.yaml
THREADS ?= 1
DEVICE  ?= cpu
bench: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/edgeclip bench --out benchmarks/results --lab benchmarks/artifacts/lab \
		--threads $(THREADS) --device $(DEVICE)
	rm -rf benchmarks/artifacts/stream    # measured anew each time (the runner would skip a finished stage)
	$(VENV)/bin/edgeclip lab run experiments/stream.yaml
	rm -rf benchmarks/artifacts/int8_speed
	$(VENV)/bin/edgeclip lab run experiments/int8_speed.yaml
	rm -rf benchmarks/artifacts/scale
	$(VENV)/bin/edgeclip lab run experiments/scale.yaml

clean:
	rm -rf demo_out .pytest_cache
