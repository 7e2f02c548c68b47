# kubernetes-nmstate in Rust. `make test` is what CI runs (.ci/run); it installs and builds
# everything the tests need on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
CARGO ?= cargo
# The environment `make cluster-up` starts for people, and the separate one `make test` uses
# (and stops), so a test run never takes down a cluster someone is working with.
LOCALENV_DIR ?= $(CURDIR)/target/localenv
TEST_LOCALENV_DIR ?= $(CURDIR)/target/localenv-test
TOOLS_BIN := $(HOME)/.cache/kubernetes-nmstate/bin
BENCH_LOCALENV_DIR ?= $(CURDIR)/target/localenv-bench
# The peer `make bench` measures against: nmstatectl 2.2 from crates.io, built once.
NMSTATECTL_ROOT := $(HOME)/.cache/kubernetes-nmstate/nmstatectl-2.2
NMSTATECTL := $(NMSTATECTL_ROOT)/bin/nmstatectl
LOCALENV := $(CURDIR)/target/debug/localenv
export PATH := $(TOOLS_BIN):$(PATH)

.PHONY: all test bench nmstatectl deps kube-build tools localenv fmt-check clippy unit integration crds crds-check \
        cluster-up cluster-down cluster-status build release help

all: build

help:
	@echo "make test            fmt, clippy, unit tests, integration tests (installs what they need)"
	@echo "make bench           handler vs nmstatectl 2.2, rollouts, webhook latency (figures)"
	@echo "make cluster-up      start the local control plane; prints export KUBECONFIG=..."
	@echo "make cluster-down    stop it and every sandbox node"
	@echo "make cluster-status  show what runs"
	@echo "make crds            regenerate manifests/crds from the API types"
	@echo "make deps            install the Debian packages, kubectl and helm"
	@echo "make kube-build      build kube-apiserver v1.20.2 once (cached in ~/.cache)"

## Dependencies -----------------------------------------------------------------------------

deps: tools
	@config/local/install-deps.sh

tools:
	@config/local/install-kubectl-helm.sh

kube-build: deps
	@config/local/build-kube.sh

localenv:
	@$(CARGO) build -q -p nmstate-localenv --bin localenv

## Build and checks ----------------------------------------------------------------------------

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --workspace --release

crds:
	$(CARGO) run -q -p nmstate-operator --bin crdgen

crds-check:
	$(CARGO) run -q -p nmstate-operator --bin crdgen -- --check

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Pure and fast: no API server, no NetworkManager.
unit:
	$(CARGO) test --workspace --lib --bins

# Against the real API server and real NetworkManager nodes, in an environment of their own
# that is stopped afterwards whatever the outcome.
integration: kube-build localenv
	@set -euo pipefail; \
	export NMSTATE_LOCALENV_DIR=$(TEST_LOCALENV_DIR); \
	trap '$(LOCALENV) --dir $(TEST_LOCALENV_DIR) cluster down' EXIT; \
	$(LOCALENV) --dir $(TEST_LOCALENV_DIR) cluster up >/dev/null; \
	$(CARGO) test --workspace --test '*'

test: deps kube-build fmt-check clippy unit integration

## Benchmarks (figures printed, never asserted) ----------------------------------------------

nmstatectl:
	@[ -x $(NMSTATECTL) ] || $(CARGO) install nmstatectl --version '~2.2' --locked --root $(NMSTATECTL_ROOT)

# The handler (release build) against nmstatectl on the same sandbox node, side by side; the
# rollouts, the webhook and the operator.
bench: kube-build localenv nmstatectl
	@set -euo pipefail; \
	export NMSTATE_LOCALENV_DIR=$(BENCH_LOCALENV_DIR) NMSTATECTL=$(NMSTATECTL); \
	trap '$(LOCALENV) --dir $(BENCH_LOCALENV_DIR) cluster down' EXIT; \
	$(LOCALENV) --dir $(BENCH_LOCALENV_DIR) cluster up >/dev/null; \
	$(CARGO) bench -q -p nmstate-handler --bench node --bench rollout --bench webhook; \
	$(CARGO) bench -q -p nmstate-operator --bench operator

## Local cluster for people -----------------------------------------------------------------

cluster-up: kube-build localenv
	@$(LOCALENV) --dir $(LOCALENV_DIR) cluster up

cluster-down: localenv
	@$(LOCALENV) --dir $(LOCALENV_DIR) cluster down

cluster-status: localenv
	@$(LOCALENV) --dir $(LOCALENV_DIR) cluster status
