# painav: the two commands the README promises, plus a few for developers.
# Each target sets up what it needs first (apt packages, .venv/, test kit), idempotently.
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup test demo bench lint typecheck unit schemas

setup:
	@scripts/setup.sh

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

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
