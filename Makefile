# Two entry points: `make demo` and `make test`. Both create .venv on first use (torch's CPU
# wheel first, then the package with its extras) and are no-ops for set-up afterwards.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

MIN_VENV := build/venv-min
MIN_LOG := $(MIN_VENV)/pip.log

.PHONY: setup demo test lint test-min-versions clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/brainage demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Lint, format and types: ruff and mypy as configured in pyproject.toml (mypy checks src/).
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy src

# The declared floor of every dependency (tools/min_constraints.py) beside the local torch wheel, in a
# second environment, then the fast tests; pip's output goes to $(MIN_LOG), shown only on failure.
# MIN_TESTS: the fast tests of every dependency's users (pandas, openpyxl, nibabel and hypothesis in
# the readers; nilearn in the cohort; ANTs, deepbet, fill-voids in preprocessing; torch, Lightning,
# TorchIO, torchmetrics, TensorBoard in training; scikit-learn, matplotlib, ONNX, pingouin, pydicom,
# the BIDS validators, jupytext; prediction's CSV), not the whole suite again: a few minutes on CI.
MIN_TESTS := tests/test_io_images.py tests/test_bad_input.py tests/test_properties.py tests/test_discovery.py \
	tests/test_cohort.py tests/test_preprocess.py tests/test_prepare_pipeline.py tests/test_models.py \
	tests/test_splits.py tests/test_training.py tests/test_evaluation.py tests/test_predict.py \
	tests/test_baselines.py tests/test_report.py tests/test_export.py tests/test_reliability.py \
	tests/test_dicom.py tests/test_bids_app.py tests/test_bootstrap.py tests/test_adequacy.py tests/test_leakage.py tests/test_evaluate.py \
	tests/test_calibration.py tests/test_zoo.py tests/test_cli_grammar.py tests/test_docs.py::test_the_tutorial_py_and_ipynb_hold_the_same_cells
test-min-versions:
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(PYTHON) tools/min_constraints.py --extra dev --skip torch > $(MIN_VENV)/constraints.txt
	{ $(MIN_VENV)/bin/python -m pip install --upgrade pip \
	  && $(MIN_VENV)/bin/python -m pip install torch==2.13.0 \
	  && $(MIN_VENV)/bin/python -m pip install -c $(MIN_VENV)/constraints.txt -e '.[dev]'; } \
	  > $(MIN_LOG) 2>&1 || { tail -n 40 $(MIN_LOG); exit 1; }
	echo "floors: $$(tr '\n' ' ' < $(MIN_VENV)/constraints.txt)"
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider --disable-warnings -m "not slow" $(MIN_TESTS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
