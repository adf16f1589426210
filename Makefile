# The chatbot mesh. `make help` lists the targets.
#
# Two Python environments: .venv (Python 3.11) for the gateway, dialogue and
# chatlog services and the tools; the NLU service's own (pyenv's Python 3.10,
# Rasa 3.6) in the shared cache, keyed by its requirements so every checkout
# reuses it. Generated stubs go to build/gen/py and build/gen/nlu, one set per
# protobuf runtime.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
CHATBOT_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/chatbot
export CHATBOT_CACHE
export RASA_TELEMETRY_ENABLED := false

PY310 ?= $(shell ls -d $$(pyenv root 2>/dev/null)/versions/3.10.*/bin/python 2>/dev/null | sort -V | tail -1)
NLU_REQ := services/nlu/requirements.txt
NLU_ENV_KEY := $(shell cat $(NLU_REQ) | sha256sum | cut -c1-12)
NLU_VENV := $(CHATBOT_CACHE)/nlu-venv-$(NLU_ENV_KEY)
NLU_PY := $(NLU_VENV)/bin/python

PROTOS := $(shell find protos -name '*.proto' | sort)
GEN_PY := build/gen/py
GEN_NLU := build/gen/nlu
PY_PATH := $(CURDIR):$(CURDIR)/$(GEN_PY)
NLU_PATH := $(CURDIR):$(CURDIR)/$(GEN_NLU)

NLU_PORT ?= 50052

TOXIPROXY_VERSION := v2.5.0
TOXIPROXY := $(CHATBOT_CACHE)/toxiproxy-$(TOXIPROXY_VERSION)/toxiproxy-server

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# ---- environments ---------------------------------------------------------

$(VENV)/.installed: pyproject.toml
	@echo "==> creating $(VENV) (Python 3.11) and installing the project's dependencies"
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --progress-bar off -q -e ".[dev]"
	@touch $@

# No file prerequisites: the requirements' hash is in the path, so a fresh
# checkout (new mtimes) reuses the environment and a changed file makes a new one.
$(NLU_VENV)/.complete:
	@test -n "$(PY310)" || { echo "error: Python 3.10 not found (pyenv install 3.10)"; exit 1; }
	@echo "==> creating the NLU environment in $(NLU_VENV)"
	@echo "    (Rasa 3.6 with TensorFlow, about 2.7 GB: several minutes the first time)"
	@rm -rf $(NLU_VENV)
	$(PY310) -m venv $(NLU_VENV)
	$(NLU_PY) -m pip install -q --upgrade pip
	$(NLU_PY) -m pip install --progress-bar on -r $(NLU_REQ)
	$(NLU_PY) -m pip check
	@touch $@

.PHONY: venv nlu-env
venv: $(VENV)/.installed ## Create the Python 3.11 environment.
nlu-env: $(NLU_VENV)/.complete ## Create the NLU service's Python 3.10 environment (Rasa).

# ---- contracts ------------------------------------------------------------

$(GEN_PY)/.stamp: $(PROTOS) $(VENV)/.installed
	@echo "==> generating Python stubs for protobuf 5+ into $(GEN_PY)"
	@rm -rf $(GEN_PY) && mkdir -p $(GEN_PY)
	$(VPY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN_PY) --grpc_python_out=$(GEN_PY) \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=$(GEN_PY) \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=$(GEN_PY) \
		$(PROTOS)
	@touch $@

$(GEN_NLU)/.stamp: $(PROTOS) | $(NLU_VENV)/.complete
	@echo "==> generating Python stubs for the NLU environment (protobuf 4.23) into $(GEN_NLU)"
	@rm -rf $(GEN_NLU) && mkdir -p $(GEN_NLU)
	$(NLU_PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN_NLU) --grpc_python_out=$(GEN_NLU) $(PROTOS)
	@touch $@

.PHONY: proto
proto: $(GEN_PY)/.stamp $(GEN_NLU)/.stamp ## Generate the stubs for both environments.

# ---- NLU model ------------------------------------------------------------

.PHONY: train
train: $(GEN_NLU)/.stamp ## Train the NLU model (cached by content: retrains only on change).
	PYTHONPATH=$(NLU_PATH) $(NLU_PY) -m services.nlu train

# ---- toxiproxy -------------------------------------------------------------

# Keyed by version in the shared cache, like the NLU environment.
$(TOXIPROXY):
	bash scripts/toxiproxy.sh $(TOXIPROXY_VERSION) >/dev/null

.PHONY: toxiproxy
toxiproxy: $(TOXIPROXY) ## Build toxiproxy (network faults for the partition test) once, cached.

# ---- Kubernetes control plane -----------------------------------------------

# kube-apiserver, -controller-manager, -scheduler, kubectl, etcd and kwok, keyed
# by version in the shared cache; a no-op once built (tests/k8s/test_control_plane.py).
.PHONY: kube
kube: ## Build the local Kubernetes control plane (kwok nodes) once, cached.
	$(PYTHON) scripts/kube_control_plane.py build >/dev/null

# ---- system packages ------------------------------------------------------

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: system-deps
system-deps: ## Install the system packages the stack and its tests need when missing.
	@command -v redis-server >/dev/null || { \
		echo "==> installing redis-server from Debian"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }
	@command -v chromium >/dev/null || { \
		echo "==> installing chromium from Debian (the admin console's browser tests)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }
	@command -v dot >/dev/null || { \
		echo "==> installing graphviz from Debian (make docs)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq graphviz; }

# ---- running --------------------------------------------------------------

CASSANDRA_DIR ?= $(CURDIR)/.data/cassandra

.PHONY: cassandra
cassandra: ## Run a local Cassandra 5.0 node on 127.0.0.1:9042 in the foreground.
	$(PYTHON) scripts/cassandra.py run --data-dir $(CASSANDRA_DIR)

.PHONY: run-chatlog run-dialogue run-gateway
run-chatlog: $(GEN_PY)/.stamp ## Serve the chatlog service on CHATLOG_PORT (50053).
	PYTHONPATH=$(PY_PATH) $(VPY) -m services.chatlog serve

run-dialogue: $(GEN_PY)/.stamp ## Serve the dialogue service on DIALOGUE_PORT (50051).
	PYTHONPATH=$(PY_PATH) $(VPY) -m services.dialogue serve

run-gateway: $(GEN_PY)/.stamp ## Serve the gateway on GATEWAY_PORT (8080).
	PYTHONPATH=$(PY_PATH) $(VPY) -m services.gateway serve

.PHONY: run-nlu
run-nlu: train ## Serve the NLU service on NLU_PORT (50052).
	PYTHONPATH=$(NLU_PATH) NLU_PORT=$(NLU_PORT) $(NLU_PY) -m services.nlu serve

.PHONY: run
run: system-deps proto train ## Start the whole stack locally (Ctrl-C stops it).
	NLU_PYTHON=$(NLU_PY) $(VENV)/bin/chatbot run

.PHONY: simulate
simulate: $(GEN_PY)/.stamp ## Play Messenger against the running stack (`make run` first).
	$(VENV)/bin/chatbot simulate

# ---- checks ---------------------------------------------------------------

.PHONY: lint
lint: proto ## Lint the contracts (buf), the code (ruff) and the types (mypy).
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	MYPYPATH=$(GEN_PY) $(VENV)/bin/mypy mesh services tests cli harness bench

.PHONY: breaking
breaking: $(VENV)/.installed ## Check the contracts against main for breaking changes.
	@if git rev-parse -q --verify main >/dev/null && git ls-tree -r --name-only main -- protos | grep -q '\.proto$$'; then \
		echo "==> buf breaking against main"; \
		$(VENV)/bin/buf breaking --against '.git#branch=main'; \
	else echo "==> buf breaking skipped: main has no contracts yet"; fi

.PHONY: k8s-check
k8s-check: $(VENV)/.installed ## Lint the Dockerfiles; render, validate and policy-scan the Kubernetes manifests.
	bash scripts/k8s_check.sh

.PHONY: test
test: system-deps proto train toxiproxy kube lint breaking k8s-check ## Install what is missing and run every test.
	NLU_PYTHON=$(NLU_PY) TOXIPROXY_SERVER=$(TOXIPROXY) $(VENV)/bin/pytest

.PHONY: bench-chatlog bench-dialogue bench-gateway
bench-chatlog: $(GEN_PY)/.stamp ## Benchmark the chatlog on SQLite and Cassandra.
	PYTHONPATH=$(PY_PATH) $(VPY) -m bench.chatlog

bench-dialogue: $(GEN_PY)/.stamp train ## Benchmark the dialogue service with 1-3 replicas.
	PYTHONPATH=$(PY_PATH) NLU_PYTHON=$(NLU_PY) $(VPY) -m bench.dialogue

bench-gateway: $(GEN_PY)/.stamp ## Benchmark the gateway's webhook acknowledgements.
	PYTHONPATH=$(PY_PATH) $(VPY) -m bench.gateway

.PHONY: bench-nlu
bench-nlu: train ## Benchmark the NLU service: gRPC vs in-process Rasa.
	PYTHONPATH=$(NLU_PATH) $(NLU_PY) -m bench.nlu

# FUZZ_EXAMPLES sets the long run's total (110000 by default), shared among the properties.
.PHONY: fuzz
fuzz: system-deps proto train ## Long fuzzing run of the webhook and every gRPC service.
	NLU_PYTHON=$(NLU_PY) $(VENV)/bin/pytest -m fuzz tests/fuzz tests/gateway/test_fuzz.py

# BENCH_E2E_ARGS passes options, e.g. BENCH_E2E_ARGS="--rates 10,40,80 --step-seconds 20
# --rasa-workers 1 --json bench/results/mine.json"; `python -m bench.e2e --help` explains them.
.PHONY: bench-e2e bench-latency
bench-e2e: system-deps proto train ## The whole stack vs Rasa's own server: latency, ordering, capacity curve.
	PYTHONPATH=$(PY_PATH) NLU_PYTHON=$(NLU_PY) $(VPY) -m bench.e2e $(BENCH_E2E_ARGS)

bench-latency: system-deps proto train ## One user on an idle system: this stack vs Rasa's own server.
	PYTHONPATH=$(PY_PATH) NLU_PYTHON=$(NLU_PY) $(VPY) -m bench.e2e --modes latency --no-bare $(BENCH_E2E_ARGS)

# ---- documentation --------------------------------------------------------

DOCS_DOT := $(sort $(wildcard docs/pictures/*.dot) docs/pictures/message-sequence.dot docs/pictures/lease-fencing.dot)

# The two sequence pictures are generated (Graphviz has no sequence diagrams).
docs/pictures/message-sequence.dot docs/pictures/lease-fencing.dot: docs/pictures/sequences.py
	$(PYTHON) docs/pictures/sequences.py

docs/pictures/%.svg: docs/pictures/%.dot
	@command -v dot >/dev/null || { echo "error: Graphviz is missing (apt-get install graphviz)"; exit 1; }
	dot -Tsvg $< -o $@

.PHONY: docs
docs: $(DOCS_DOT:.dot=.svg) ## Render the pictures of docs/ (Graphviz .dot to .svg).

.PHONY: clean
clean: ## Remove generated files (keeps the shared cache).
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
