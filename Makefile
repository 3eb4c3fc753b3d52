# cryopilot — every command a developer or CI needs. `make demo` and `make test` set up what they use.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV        := .venv
TOOLS_VENV  := .venv-tools
PY          := $(VENV)/bin/python
NODE_TOOLS  := tools/node_modules/.bin
export AWS_DEFAULT_REGION ?= us-east-1
# Never talk to AWS from here: no telemetry, no credentials, no real endpoints.
export SAM_CLI_TELEMETRY := 0
export AWS_ACCESS_KEY_ID := testing
export AWS_SECRET_ACCESS_KEY := testing
export AWS_SESSION_TOKEN := testing
export AWS_EC2_METADATA_DISABLED := true
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements/dev.txt requirements/pcluster.txt layers/cryopilot/requirements.txt pyproject.toml
	@echo "==> setting up $(VENV) (Python 3.12)"
	@test -x $(PY) || "$$(scripts/python312.sh)" -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -r requirements/dev.txt
	@$(PY) -m pip install -q --no-deps -r requirements/pcluster.txt
	@$(PY) -m pip install -q --no-deps -e .
	@touch $@

$(TOOLS_VENV)/.installed: requirements/tools.txt
	@echo "==> setting up $(TOOLS_VENV) (aws-sam-cli, cfn-lint)"
	@test -x $(TOOLS_VENV)/bin/python || "$$(scripts/python312.sh)" -m venv $(TOOLS_VENV)
	@$(TOOLS_VENV)/bin/python -m pip install -q --upgrade pip
	@$(TOOLS_VENV)/bin/python -m pip install -q -r requirements/tools.txt
	@touch $@

tools/node_modules/.installed: tools/package.json tools/package-lock.json
	@echo "==> installing node tools (asl-validator)"
	@cd tools && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: setup
setup: $(VENV)/.installed $(TOOLS_VENV)/.installed tools/node_modules/.installed ## install everything

.PHONY: lint
lint: $(VENV)/.installed ## ruff (lint and format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: validate
validate: $(TOOLS_VENV)/.installed tools/node_modules/.installed ## sam validate --lint and asl-validator
	$(TOOLS_VENV)/bin/sam validate --lint --template template.yaml
	@for f in statemachines/*.asl.json; do $(NODE_TOOLS)/asl-validator --json-path "$$f"; done

.PHONY: security
security: $(TOOLS_VENV)/.installed ## checkov on template.yaml, offline; fails on any failed check
	env -u BC_API_KEY -u PRISMA_API_URL BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE \
	  $(TOOLS_VENV)/bin/checkov --file template.yaml --framework cloudformation \
	  --skip-download --compact --quiet

.PHONY: build
build: $(TOOLS_VENV)/.installed $(VENV)/.installed $(SAM_TRANSLATED) ## sam build (no Docker: uses the venv's python3.12)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(TOOLS_VENV)/bin/sam build --template template.yaml

# Test processes: CI has 2 cores; each process runs its own local stack (moto is per process).
PYTEST_WORKERS ?= 2

# template.yaml as `sam deploy` sends it to CloudFormation (SAM policy templates expanded): the
# local stack creates every role from it. The translator pins its own pydantic: tools venv.
SAM_TRANSLATED := build/sam/translated.json
$(SAM_TRANSLATED): template.yaml scripts/sam_translate.py $(TOOLS_VENV)/.installed
	@mkdir -p $(@D)
	$(TOOLS_VENV)/bin/python scripts/sam_translate.py template.yaml > $@.tmp && mv $@.tmp $@

.PHONY: translate
translate: $(SAM_TRANSLATED) ## template.yaml translated by the pinned aws-sam-translator

.PHONY: pytest
pytest: $(VENV)/.installed $(SAM_TRANSLATED) ## the test suite with coverage, in PYTEST_WORKERS processes
	@rm -rf build/iam/used
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup --cov --cov-report=term-missing:skip-covered

.PHONY: iam-report
iam-report: $(VENV)/.installed $(SAM_TRANSLATED) ## per role: actions granted vs used by the test runs (after pytest)
	PYTHONPATH=$(CURDIR)/sim:$(CURDIR)/layers/cryopilot $(PY) scripts/iam_report.py

.PHONY: test-fast
test-fast: $(VENV)/.installed ## the tests not marked slow, while editing (under a minute)
	$(VENV)/bin/pytest -m "not slow" -n 2 --dist loadgroup

# The three installs run at once (they wait on the network and on unpacking), then the static
# checks two at a time (CI has 2 cores), then the suite, which needs both cores to itself.
.PHONY: test
test: ## everything CI runs
	@$(MAKE) --no-print-directory -j3 --output-sync=target setup
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint validate security build
	@$(MAKE) --no-print-directory pytest
	@$(MAKE) --no-print-directory iam-report

.PHONY: demo
demo: $(VENV)/.installed ## one whole run, locally (DEMO_ARGS="--profile spike --fail job")
	$(VENV)/bin/cryopilot demo $(DEMO_ARGS)

.PHONY: bench
bench: $(VENV)/.installed ## the white paper's 3 datasets x 2 layouts, and CGRP and GLP-1R as repeat structures, through the state machine; writes build/bench/results.json
	@mkdir -p build/bench
	$(PY) -m cryopilot_sim.bench --log build/bench/bench.log $(BENCH_ARGS)
	@if [ -d .aws-sam/build ]; then $(PY) -m cryopilot_sim.coldstart; \
	else echo "cold start: no .aws-sam/build; run \`make build\` first to measure the handlers' import times"; fi

.PHONY: clean
clean: ## remove build output and local state
	rm -rf .aws-sam build .cryopilot .coverage htmlcov
