# Two entry points (README quick start): `make demo` and `make test`.
# Each creates the virtual environment from the pinned lock files on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench

demo: $(VENV)/.runtime-installed
	$(BIN)/neuroradfm demo --out neuroradfm-demo

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest Testing

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

$(VENV)/.runtime-installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.lock
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	touch $@
