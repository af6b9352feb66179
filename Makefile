# statekit — `make demo` and `make test` each work as the first command on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check statekit tests bench scripts fixtures
	$(BIN)/ruff format --check statekit tests bench scripts fixtures
	$(BIN)/mypy

bench: install
	$(BIN)/python -m compileall -q statekit  # as `pip install .` does: no source compile at every start
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
