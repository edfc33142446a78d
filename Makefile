# genmesh — one place for every routine command. `make help` lists them.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTOS := $(wildcard protos/genmesh/v1/*.proto)
STAMP := $(VENV)/.installed
# The last published contract: `make lint` fails on a change that would break its clients.
CONTRACT_IMAGE := protos/published/genmesh-v1.binpb
# Pinned code generators (npm) the contract tests compile the protos with; `make codegen-tools`.
NODE_TOOLS := .genmesh/node

.PHONY: help install proto run demo up test mutants lint compose-test contract-publish codegen-tools bench bench-full clean

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
	$(PY) -c "from setup import ROOT, generate_stubs; generate_stubs(ROOT)"  # what a wheel build runs (setup.py)

proto: genmesh/v1/__init__.py  ## generate Python stubs and type stubs from protos/

run: install  ## bring the mesh up, stream one demo answer, keep the mesh up until Ctrl-C
	$(BIN)/genmesh up --demo

demo: install  ## like `make run`, but stop the mesh after the answer (for scripts and CI)
	$(BIN)/genmesh up --demo --exit

up: install  ## start the four services and keep them up until Ctrl-C
	$(BIN)/genmesh up

test: install  ## run the test suite
	$(PY) -m pytest

mutants: install  ## apply each curated one-line mutant of load-bearing code; fail if its tests still pass
	$(PY) scripts/mutants.py

lint: install  ## buf lint, buf breaking (against the published contract), ruff, mypy, hadolint, k8s manifests, Prometheus config and alert rules, mutants still apply
	$(BIN)/buf lint
	$(BIN)/buf breaking --against $(CONTRACT_IMAGE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/hadolint Dockerfile
	$(PY) scripts/validate_k8s.py
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml
	$(PY) scripts/mutants.py --check

compose-test: install  ## build the images (local Debian base, local wheels, no registry) and run docker-compose.yml's stack under podman: one answer, then two inference replicas
	$(PY) scripts/compose_test.py

contract-publish: install  ## make the current protos the published contract that `make lint` checks against
	mkdir -p $(dir $(CONTRACT_IMAGE))
	$(BIN)/buf build --exclude-source-info -o $(CONTRACT_IMAGE)

codegen-tools: $(NODE_TOOLS)/.installed  ## install the pinned TypeScript generators the contract tests use (npm)

$(NODE_TOOLS)/.installed: tests/contracts/node/package.json tests/contracts/node/package-lock.json
	mkdir -p $(NODE_TOOLS)
	cp tests/contracts/node/package.json tests/contracts/node/package-lock.json $(NODE_TOOLS)/
	npm ci --prefix $(NODE_TOOLS) --no-audit --no-fund --loglevel=error
	touch $@

bench: install  ## quick benchmarks (about a minute each), as CI runs them
	$(PY) -m bench.gateway --quick
	$(PY) -m bench.inference --quick
	$(PY) -m bench.tools --quick
	$(PY) -m bench.retrieval --quick
	$(PY) -m bench.jobs --quick
	$(PY) -m bench.resilience --quick
	$(PY) -m bench.scale --quick
	$(PY) -m bench.security --quick
	$(PY) -m bench.observability --quick
	$(PY) -m bench.http --quick
	$(PY) -m bench.stream_interval --quick
	$(PY) -m bench.agents --quick

bench-full: install  ## full benchmarks, the figures of docs/BENCHMARKS.md and docs/RESILIENCE.md
	$(PY) -m bench.gateway
	$(PY) -m bench.inference
	$(PY) -m bench.tools
	$(PY) -m bench.retrieval
	$(PY) -m bench.jobs
	$(PY) -m bench.resilience
	$(PY) -m bench.scale
	$(PY) -m bench.security
	$(PY) -m bench.observability
	$(PY) -m bench.http
	$(PY) -m bench.stream_interval
	$(PY) -m bench.agents

clean:  ## remove the virtual environment and generated stubs
	rm -rf $(VENV) genmesh/v1 *.egg-info .mypy_cache .ruff_cache .pytest_cache
