# dem-bench: `make run` runs the embedded default comparison, `make test` runs the test suite.
# Both create .venv on first use: torch (CPU wheel) first, then the project with its dev extra.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: run test lint bench clean

$(BIN)/dem-bench: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(VENV)/.test-extra: $(BIN)/dem-bench
	$(BIN)/pip install --quiet -e ".[dev,test]"
	touch $@

run: $(BIN)/dem-bench
	$(BIN)/dem-bench $(ARGS)

test: $(VENV)/.test-extra
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(BIN)/dem-bench
	$(BIN)/ruff check .

clean:
	rm -rf runs .cache outputs
