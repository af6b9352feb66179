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

# The benchmarks run statekit as `pip install statekit` leaves it: installed (compiled) into a venv of its
# own, which takes the dependencies from $(VENV). The editable install's import hook, loaded by a .pth file at
# every interpreter start, costs each statekit process about 10 ms that no user pays.
BENCH_VENV := $(VENV)/bench

bench: install
	rm -rf $(BENCH_VENV)
	$(BIN)/python -m venv --without-pip $(BENCH_VENV)
	$(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
		"$$($(BENCH_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/statekit-deps.pth"
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps .
	$(BENCH_VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo bench/out
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
