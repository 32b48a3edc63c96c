# Depot: `make run` starts the registry, `make test` checks it. Both create the environment first.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Bytecode compiled once, as the environment is made (as in the images): otherwise every process
# compiles what it imports where bytecode is not written (PYTHONDONTWRITEBYTECODE), 1 s per service start.
export UV_COMPILE_BYTECODE := 1
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
CDK_OUT ?= deploy/cdk.out
# Context for the CDK app, the same for `make synth` and `make deploy` (on top of deploy/cdk.json's):
# name=value pairs separated by spaces, e.g. CONTEXT="environment=production alarm_email=ops@example.com".
CONTEXT ?=
# The images' tag (deploy/deploy.sh tag): worked out once, when a deploy first needs it.
ifndef TAG
TAG = $(eval TAG := $(shell deploy/deploy.sh tag))$(TAG)
endif
DEPLOY = TAG=$(TAG) CONTEXT='$(CONTEXT)' PYTHON=$(abspath $(PY)) deploy/deploy.sh

.PHONY: help venv run migrate test test-fast lint typecheck pytest pytest-fast format clean bench synth deploy rollback destroy

help:
	@echo "make run        start Depot on http://127.0.0.1:$${DEPOT_PORT:-8080} (embedded PostgreSQL and S3)"
	@echo "make test       lint, type-check and run every test against real servers"
	@echo "make test-fast  the same without the tests marked slow (make run end to end, containers,"
	@echo "                deploy, outages, large transfers, fuzzing): minutes, every service still tested"
	@echo "make migrate    upgrade every schema (the embedded database unless DEPOT_DATABASE_URL is set)"
	@echo "make format     apply ruff's formatting and safe fixes"
	@echo "make clean      remove the environments (keeps .depot, the data)"
	@echo "make synth      write the AWS CloudFormation templates to \$$CDK_OUT (offline; CONTEXT=\"name=value ...\")"
	@echo "make deploy     build, push and deploy to AWS (needs credentials and Docker; see README)"
	@echo "make rollback TAG=<tag>   return the services to an image they ran before, without migrating"
	@echo "make destroy    remove the Depot stack from AWS (what is safe to remove)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The environment follows the lock file exactly; it is rebuilt only when the lock changes.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

venv: $(VENV)/.synced

run: venv
	$(PY) -m devstack.run

migrate: venv
	$(PY) -m devstack.run --migrate-only

test: lint typecheck pytest

# The tests marked `slow` (see pyproject.toml) left out; every service still answers real HTTP on real servers.
test-fast: lint typecheck pytest-fast

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy

# Workers (pytest-xdist), each with its own PostgreSQL and S3 servers. Most of a test is spent
# waiting on a server, so three keep two cores busy; `PYTEST_WORKERS=0` runs in this one process.
PYTEST_WORKERS ?= 3

pytest: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

pytest-fast: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) -m bench.auth_bench
	$(PY) -m bench.package_bench
	$(PY) -m bench.validator_bench
	$(PY) -m bench.web_bench
	$(PY) -m bench.read_bench
	$(PY) -m bench.client_bench

# deploy/app.py reads deploy/cdk.json's context as `cdk deploy` does, then CONTEXT's pairs.
synth: venv
	cd deploy && CDK_OUT=$(abspath $(CDK_OUT)) ../$(PY) app.py $(foreach pair,$(CONTEXT),-c '$(pair)')
	@echo "templates in $(CDK_OUT)"

# Each step stops the deploy when it fails, and says where to look. `make -n deploy` lists them.
deploy: venv
	$(DEPLOY) prerequisites
	$(DEPLOY) base
	$(DEPLOY) signing-key
	$(DEPLOY) images
	$(DEPLOY) migrate-image
	$(DEPLOY) migrate
	$(DEPLOY) services
	$(DEPLOY) wait-stable
	$(DEPLOY) smoke

# The services only: no image is built and no migration runs (the migration task stays at the newest migrated tag).
rollback: venv
	@if [ "$(origin TAG)" = file ]; then echo "usage: make rollback TAG=<a tag the services ran before>" >&2; exit 2; fi
	$(DEPLOY) rollback
	$(DEPLOY) wait-stable
	$(DEPLOY) smoke

destroy: venv
	$(DEPLOY) destroy

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
