# nq-dagster: `make demo` sets everything up and runs the demo; `make test` runs the tests.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines get the small CPU build of torch; machines with an NVIDIA driver get the default (CUDA) build.
TORCH_SPEC := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then echo "torch>=2.3,<=2.14.1"; else echo "torch==2.13.0"; fi)

.PHONY: setup demo test lint bench clean

$(BIN)/nq: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)" || $(BIN)/pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.3,<=2.14.1"
	$(BIN)/pip install -q -e ".[dev,k8s,stream,shared]"
	touch $(BIN)/nq

setup: $(BIN)/nq

demo: setup
	$(BIN)/nq demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m bench.run_all

clean:
	rm -rf .nq
