# The two Quickstart commands: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# The CPU wheel of torch 2.13.0. An unpinned `torch` resolves to a multi-GB CUDA build;
# on a GPU machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint typecheck format setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/td3 demo

# Style, formatting and the layer rules (pyproject.toml [tool.importlinter]).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Everything: lint, types, unit and integration tests.
test: lint typecheck
	$(PY) -m pytest

# Unit tests only (no Postgres, Redis or worker processes): a minute or less.
test-fast: setup
	$(PY) -m pytest -m "not integration and not slow"
