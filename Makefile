# genmesh — one place for every routine command. `make help` lists them.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/genmesh/v1/*.proto)
STAMP := $(VENV)/.installed

.PHONY: help install proto run demo up test lint bench bench-full clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "genmesh needs $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[inference,retrieval,dev]'
	touch $(STAMP)

install: $(STAMP) proto  ## create .venv, install genmesh with its dev tools, generate stubs

genmesh/v1/__init__.py: $(PROTOS) | $(STAMP)
	rm -rf genmesh/v1
	$(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=. \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=. \
		$(PROTOS)
	echo '"""Generated from protos/genmesh/v1 by `make proto`; do not edit."""' > genmesh/v1/__init__.py

proto: genmesh/v1/__init__.py  ## generate Python stubs and type stubs from protos/

run: install  ## bring the mesh up, stream one demo answer, keep the mesh up until Ctrl-C
	$(BIN)/genmesh up --demo

demo: install  ## like `make run`, but stop the mesh after the answer (for scripts and CI)
	$(BIN)/genmesh up --demo --exit

up: install  ## start the four services and keep them up until Ctrl-C
	$(BIN)/genmesh up

test: install  ## run the test suite
	$(PY) -m pytest

lint: install  ## buf lint, ruff, mypy, hadolint
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/hadolint Dockerfile

bench: install  ## quick benchmarks (about a minute each), as CI runs them
	$(PY) bench/gateway.py --quick
	$(PY) bench/inference.py --quick
	$(PY) bench/tools.py --quick
	$(PY) bench/retrieval.py --quick
	$(PY) bench/jobs.py --quick
	$(PY) bench/resilience.py --quick

bench-full: install  ## full benchmarks, the figures of docs/BENCHMARKS.md and docs/RESILIENCE.md
	$(PY) bench/gateway.py
	$(PY) bench/inference.py
	$(PY) bench/tools.py
	$(PY) bench/retrieval.py
	$(PY) bench/jobs.py
	$(PY) bench/resilience.py

clean:  ## remove the virtual environment and generated stubs
	rm -rf $(VENV) genmesh/v1 *.egg-info .mypy_cache .ruff_cache .pytest_cache
