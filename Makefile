# deps-orch: `make quickstart` runs the main job on a local Ray cluster; `make test` runs the checks and tests;
# `make test-fast` the unit tier alone (no Ray cluster, no Slurm).
# Both set up .venv first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

quickstart: setup
	$(BIN)/deps-orch submit jobspecs/quickstart.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The unit tier runs on both cores (pytest-xdist); the end-to-end runs one at a time, since each already keeps
# every core busy with its Ray workers.
test: test-fast
	$(BIN)/pytest -q -m ray --durations=15

test-fast: lint
	$(BIN)/pytest -q -n 2 -m "not ray" --durations=10

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis .import_linter_cache
