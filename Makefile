# Two entry points (README quick start): `make demo` and `make test`.
# Each creates the virtual environment from the pinned lock files on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-main test-slicer-5.10 lint bench browser

demo: $(VENV)/.runtime-installed
	$(BIN)/neuroradfm demo --out neuroradfm-demo

test: test-main test-slicer-5.10

test-main: $(VENV)/.dev-installed browser
	$(BIN)/python -m pytest Testing

# The core and NeuroRADFMLib tests again with the numpy and SimpleITK that Slicer 5.10 bundles (a second
# environment: requirements.lock with requirements-slicer-5.10.txt's pins instead of its own).
SLICER510 := .venv-slicer-5.10
# Left out there: the training-heavy, process-heavy and packaging tests (demo bundle, pretraining, training jobs,
# output safety, cohort worker pools, torchrun sharding, the card arithmetic swept against torch, the CMake build,
# the tutorial notebook run in a Jupyter kernel, the shortcut lesson's training, the case viewer in WebGL Chromium),
# whose numpy and SimpleITK use the other tests cover; this keeps `make test` near 15 minutes on 2 cores.
SLICER510_TESTS := $(addprefix --ignore=Testing/,test_demo_bundle.py test_output_safety.py test_slicer_training.py \
	test_pretrain.py test_pretrain_ddp.py test_extension_tree.py test_cohort_pipeline.py test_predict_sharding.py \
	test_bundle_info.py test_tutorial_notebook.py test_lesson.py test_teach_viewer.py)
test-slicer-5.10: $(SLICER510)/.installed
	$(SLICER510)/bin/python -m pytest Testing -q $(SLICER510_TESTS)

$(SLICER510)/.installed: requirements.lock requirements-dev.lock requirements-slicer-5.10.txt pyproject.toml
	$(PYTHON) -m venv $(SLICER510)
	grep -viE '^(numpy|simpleitk)==' requirements.lock > $(SLICER510)/requirements.txt
	grep -vE '^(#|$$)' requirements-slicer-5.10.txt >> $(SLICER510)/requirements.txt
	grep -v '^-r' requirements-dev.lock >> $(SLICER510)/requirements.txt
	$(SLICER510)/bin/python -m pip install -q -r $(SLICER510)/requirements.txt
	$(SLICER510)/bin/python -m pip install -q --no-deps -e .
	touch $@

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
