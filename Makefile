# One target per job; CI calls the same ones.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint unit bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## run: start the proxy (on the embedded in-process store when no Redis answers)
run: $(STAMP)
	$(BIN)/python -m proxy serve

## test: lint, type-check and run the whole test suite
test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check proxy tests
	$(BIN)/ruff format --check proxy tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

.PHONY: smoke
## smoke: build the Docker image with buildah and check it from the host (tests/container/smoke.sh)
smoke: $(STAMP)
	bash tests/container/smoke.sh

.PHONY: bench bench-quick
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) setup.cfg
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

## bench: the benchmark suite, about 12 min (wrk, redis-server on :6379; nginx if installed) -> benchmarks/results/
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

## bench-quick: the same scenarios with short runs and smaller counts, about 5 min
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)
