# Two entry points (README quick start): `make demo` and `make test`.
# Each creates the virtual environment from the pinned lock files on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench browser

demo: $(VENV)/.runtime-installed
	$(BIN)/neuroradfm demo --out neuroradfm-demo

test: $(VENV)/.dev-installed browser
	$(BIN)/python -m pytest Testing

# Headless Chromium (Debian's package) renders the evaluation report in one test: installed here when it is
# missing and apt-get can (root); otherwise that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
		echo "chromium is not installed: the report-rendering test will be skipped"

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
