# painav: the two commands the README promises, plus a few for developers.
# Each target sets up what it needs first (apt packages, .venv/, test kit), idempotently.
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup test check demo bench lint typecheck unit schemas

setup:
	@scripts/setup.sh

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

# The quick loop while editing: lint, types, and the tests that start no broker, database or
# subprocess (tests/conftest.py marks those "integration"), spread over the CPUs. `make test` is
# the whole suite, one test at a time, and what CI runs.
check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q -n auto -m "not integration and not slow"

demo: setup
	$(BIN)/painav demo $(DEMO_ARGS)

bench: setup
	$(PY) -m tests.bench.run --readme README.md

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

schemas: setup
	$(PY) -m protocol.schemas --write
