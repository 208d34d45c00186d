# comfy-workshop: every entry point a person types. `make help` lists them.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV        ?= uv
PY        := .venv/bin/python
# The local stack keeps its Pulumi state in this folder: no Pulumi Cloud account needed.
LOCAL_BACKEND := file://$(CURDIR)/.pulumi-local
APT_PACKAGES  := redis-server nginx-light shellcheck cloud-init chromium

.PHONY: help dev local local-down test deps deps-python system-deps lint typecheck unit bench preview-workshop

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

dev: ## run the platform from this checkout as processes (no Docker): Redis, queue manager, a worker; Ctrl-C stops
	$(MAKE) --no-print-directory deps-python
	$(PY) -m devkit.dev $(if $(COMFYUI_URL),--comfyui-url $(COMFYUI_URL)) $(if $(PORT),--port $(PORT))

local: ## run the whole platform on this machine's Docker (the `local` stack, no cloud account)
	$(MAKE) --no-print-directory deps-python
	port=$$(sed -n 's/^ *comfy-workshop:httpPort: *\([0-9]*\).*/\1/p' Pulumi.local.yaml); port=$${port:-8080}
	running=--no-running; [ -f .pulumi-local/.pulumi/stacks/comfy-workshop/local.json ] && running=--running
	$(PY) -m infra.prereqs local --port "$$port" "$$running"
	mkdir -p .pulumi-local
	export PULUMI_BACKEND_URL=$(LOCAL_BACKEND) PULUMI_CONFIG_PASSPHRASE="$${PULUMI_CONFIG_PASSPHRASE-local}"
	pulumi stack select --create local
	pulumi up --yes --stack local

local-down: ## stop the local platform (files and queue snapshot are kept in Docker volumes)
	export PULUMI_BACKEND_URL=$(LOCAL_BACKEND) PULUMI_CONFIG_PASSPHRASE="$${PULUMI_CONFIG_PASSPHRASE-local}"
	pulumi destroy --yes --stack local

test: deps ## install everything (apt, uv, Python deps) and run lint, type checks and every test
	$(MAKE) --no-print-directory lint typecheck unit

deps: system-deps deps-python ## install everything the tests need

system-deps: ## Debian packages the tests run for real (redis-server, nginx, cloud-init, shellcheck, chromium)
	missing=""
	for bin in redis-server nginx shellcheck cloud-init chromium; do command -v $$bin >/dev/null || missing="$$missing $$bin"; done
	if [ -z "$$missing" ]; then exit 0; fi
	echo "installing Debian packages for:$$missing"
	SUDO=""; if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi
	$$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null

deps-python:
	command -v $(UV) >/dev/null || python3 -m pip install --quiet uv
	$(UV) sync --frozen --quiet

lint: ## ruff lint and format check
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

typecheck: ## mypy (strict on infra/, services/ and devkit/)
	$(UV) run --frozen mypy infra services bench devkit

unit: ## the test suite only (assumes `make deps` ran)
	$(UV) run --frozen pytest

bench: ## every benchmark, one JSON object each
	for b in program queue faults worker workshop workspaces push; do \
	  if [ -f bench/$$b.py ]; then echo "== bench.$$b"; $(PY) -m bench.$$b; fi; done

preview-workshop: ## pulumi preview of the workshop stack (needs Pulumi login and provider credentials)
	pulumi preview --stack workshop --diff
