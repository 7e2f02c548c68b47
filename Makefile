# kubernetes-nmstate in Rust. `make test` is what CI runs (.ci/run); it installs and builds
# everything the tests need on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
CARGO ?= cargo
# The environment `make cluster-up` starts for people, and the separate one `make test` uses
# (and stops), so a test run never takes down a cluster someone is working with.
LOCALENV_DIR ?= $(CURDIR)/target/localenv
TEST_LOCALENV_DIR ?= $(CURDIR)/target/localenv-test
TEST_OLDEST_LOCALENV_DIR ?= $(CURDIR)/target/localenv-test-oldest
TOOLS_BIN := $(HOME)/.cache/kubernetes-nmstate/bin
BENCH_LOCALENV_DIR ?= $(CURDIR)/target/localenv-bench
SOAK_LOCALENV_DIR ?= $(CURDIR)/target/localenv-soak
# The peer `make bench` measures against: nmstatectl 2.2 from crates.io, built once.
NMSTATECTL_ROOT := $(HOME)/.cache/kubernetes-nmstate/nmstatectl-2.2
NMSTATECTL := $(NMSTATECTL_ROOT)/bin/nmstatectl
# Where cargo builds: CARGO_TARGET_DIR when set (.ci/run keeps one in the cache), else target/.
BUILD_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
LOCALENV := $(BUILD_DIR)/debug/localenv
export PATH := $(TOOLS_BIN):$(PATH)

.PHONY: all test test-oldest bench soak nmstatectl deps kube-build kube-build-oldest tools localenv fmt-check clippy unit integration generate \
        crates-check generate-check crds cluster-up cluster-down cluster-status build build-release release images help \
        demo demo-down fuzz fuzz-short third-party-check

all: build

help:
	@echo "make test            fmt, clippy, unit tests, integration tests (installs what they need)"
	@echo "make bench           handler vs nmstatectl 2.2, rollouts, webhook latency (figures)"
	@echo "make fuzz            cargo fuzz every parser of user input, FUZZ_SECONDS (300) per target"
	@echo "make demo            the whole system on this machine: 3 nodes, the operator, a tour of policies"
	@echo "make demo-down       stop everything make demo started"
	@echo "make cluster-up      start the local control plane; prints export KUBECONFIG=..."
	@echo "make cluster-down    stop it and every sandbox node"
	@echo "make cluster-status  show what runs"
	@echo "make generate        regenerate the CRDs, Helm chart, OLM bundle and catalog, plain manifest"
	@echo "make release VERSION=x.y.z   set the version, record the release, regenerate everything"
	@echo "make images          build the operator, handler and bundle images (needs podman)"
	@echo "make deps            install the Debian packages, kubectl and helm"
	@echo "make test-oldest     the compatibility subset against Kubernetes v1.20.2, the oldest supported"
	@echo "make kube-build      build the pinned Kubernetes (config/kube/go.mod) once (cached in ~/.cache)"
	@echo "make kube-build-oldest  build kube-apiserver v1.20.2 once (cached in ~/.cache)"

## Dependencies -----------------------------------------------------------------------------

deps: tools
	@config/localenv/scripts/install-deps.sh

tools:
	@config/localenv/scripts/install-kubectl-helm.sh

# The Kubernetes the local environment runs (NMSTATE_KUBE_RELEASE=current, the default): the
# release config/kube/go.mod pins, built from the Go module proxy. And v1.20.2, the oldest
# supported (NMSTATE_KUBE_RELEASE=oldest), from Debian's source package.
kube-build: deps
	@config/kube/build.sh

kube-build-oldest: deps
	@config/localenv/scripts/build-kube.sh

localenv:
	@$(CARGO) build -q -p nmstate-localenv --bin localenv

## Build and checks ----------------------------------------------------------------------------

build:
	$(CARGO) build --workspace

build-release:
	$(CARGO) build --workspace --release

# Everything generated from the types and the install objects (operator/packaging): the
# CRDs, manifests/kubernetes-nmstate-operator.yaml, the Helm chart and the OLM bundle and catalog.
generate:
	$(CARGO) run -q -p nmstate-packaging --bin generate

crds: generate

generate-check:
	$(CARGO) run -q -p nmstate-packaging --bin generate -- --check

# The version lives in one place, the workspace's Cargo.toml; this sets it, records the
# release in bundle/releases.yaml (the upgrade graph) and regenerates every channel.
release:
	@[ -n "$(VERSION)" ] || { echo "usage: make release VERSION=x.y.z" >&2; exit 2; }
	@[[ "$(VERSION)" =~ ^[0-9]+\.[0-9]+\.[0-9]+$$ ]] || { echo "VERSION must be x.y.z, got $(VERSION)" >&2; exit 2; }
	sed -i -E '/^\[workspace.package\]/,/^\[/ s/^version = "[^"]*"/version = "$(VERSION)"/' Cargo.toml
	$(CARGO) run -q -p nmstate-packaging --bin generate -- --add-release $$(date -u +%F)
	@echo "release $(VERSION) prepared: review, commit, tag v$(VERSION), then make images on a release machine"

# Images: the release binaries with the shared libraries they link, FROM scratch
# (operator/Containerfile, handler/Containerfile); podman builds them offline.
IMAGE_REGISTRY ?= quay.io/nmstate
IMAGE_TAG ?= v$(shell sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
images: build-release
	@command -v podman >/dev/null || { echo "make images needs podman (apt-get install podman)" >&2; exit 1; }
	config/images/rootfs.sh target/images/operator $(BUILD_DIR)/release/nmstate-operator
	config/images/rootfs.sh target/images/handler $(addprefix $(BUILD_DIR)/release/,nmstate-handler nmstate-cluster nmstate-webhook)
	podman build -f operator/Containerfile -t $(IMAGE_REGISTRY)/kubernetes-nmstate-rs-operator:$(IMAGE_TAG) target/images/operator
	podman build -f handler/Containerfile -t $(IMAGE_REGISTRY)/kubernetes-nmstate-rs-handler:$(IMAGE_TAG) target/images/handler
	podman build -f bundle/bundle.Dockerfile -t $(IMAGE_REGISTRY)/kubernetes-nmstate-rs-operator-bundle:$(IMAGE_TAG) .

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Each crate built alone, with only the features its own dependencies ask for: a workspace build
# unifies features, so a crate that uses one it does not ask for (nix's hostname) builds in the
# workspace and breaks alone (`make generate`, an image build). Those
# build libraries and programs only, so tests and benches are left to the workspace's checks.
CRATES = $(shell $(CARGO) metadata --no-deps --format-version 1 | grep -o '"name":"[^"]*","version"' | cut -d'"' -f4)
crates-check:
	@for crate in $(CRATES); do $(CARGO) check -q -p $$crate || exit 1; done

# third_party/nmstate is nmstate $(NMSTATE_VENDORED) as crates.io publishes it (a checksum of each
# of its files) with third_party/nmstate.patch applied, and nothing else (third_party/README.md).
NMSTATE_VENDORED := 2.2.62
third-party-check:
	@copy=$$(mktemp -d) && trap 'rm -rf "$$copy"' EXIT && cp -r third_party/nmstate/. "$$copy" && \
	(cd "$$copy" && git apply -R "$(CURDIR)/third_party/nmstate.patch" && find . -type f | LC_ALL=C sort | xargs sha256sum) | \
	diff -u third_party/nmstate-$(NMSTATE_VENDORED).sha256 - && \
	echo "third_party/nmstate: nmstate $(NMSTATE_VENDORED) and third_party/nmstate.patch"

# Pure and fast: no API server, no NetworkManager. Then nmstate's own unit tests with the
# project's patch in (third_party/README.md), but one that reads upstream's examples/ directory,
# which the published crate does not ship.
unit:
	$(CARGO) test --workspace --lib --bins --no-fail-fast
	$(CARGO) test --locked --manifest-path third_party/nmstate/Cargo.toml --target-dir $(BUILD_DIR)/third-party \
		--lib -- --skip test_policy_examples

# cargo fuzz (libFuzzer) over everything that parses user input: the webhook's reviews,
# captures, variables, IP pools, the node state report (fuzz/src/lib.rs says what each target
# checks). Each first runs the inputs that once failed (fuzz/regressions). A nightly compiler
# and cargo-fuzz are installed when missing; FUZZ_SECONDS per target.
FUZZ_TARGETS := admission_review capture variables ip_pool node_state
FUZZ_SECONDS ?= 300
fuzz:
	@config/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# The short run `make test` includes: from the seeds, with a fixed seed, so it tries the same
# inputs every time.
fuzz-short:
	@FUZZ_SEED=1 config/fuzz/run.sh 15 $(FUZZ_TARGETS)

# $(call in_cluster,DIR,RELEASE,COMMANDS): COMMANDS (no commas) in an environment of their own at
# DIR, on Kubernetes RELEASE (current or oldest), stopped afterwards whatever the outcome, with
# DIR-pods for the tests that install the product on real pods (started by the first of them).
in_cluster = set -euo pipefail; \
	export NMSTATE_LOCALENV_DIR=$(1) NMSTATE_KUBE_RELEASE=$(2) NMSTATE_PODS_LOCALENV_DIR=$(1)-pods; \
	trap '$(LOCALENV) --dir $(1) cluster down; [ ! -d $(1)-pods ] || $(LOCALENV) --dir $(1)-pods cluster down' EXIT; \
	$(LOCALENV) --dir $(1) cluster up >/dev/null; \
	$(3)

# What the integration tests select, and so the features each dependency is built with: every
# command of `integration` and `test-oldest` selects the same, so none rebuilds what another
# built (`cargo build --workspace --bins`, or a `-p` selection, unifies other features and
# compiled the project's crates once more).
TESTED := --workspace --exclude nmstate-packaging

# Against the real API server and real NetworkManager nodes. Tests start the programs of other
# packages (the cluster controller, the webhook, the operator's operands), so every binary is
# built first, with the tests' features: `--bins` beside the tests, as `cargo test` builds only
# the binaries of packages that have tests (not nmstate-cluster's). The install tests
# (nmstate-packaging: Helm chart, plain manifest, OLM bundle, upgrades) run last, on real pods:
# their kubelet node then runs beside no other test.
integration: kube-build
	@$(CARGO) build -q $(TESTED) --bins --test '*'
	@$(call in_cluster,$(TEST_LOCALENV_DIR),current,failed=0; \
	$(CARGO) test $(TESTED) --test '*' --no-fail-fast || failed=1; \
	$(CARGO) test -p nmstate-packaging --test '*' --no-fail-fast || failed=1; \
	exit $$failed)

# Every part runs even when an earlier one fails (and every test binary within a part), so one
# failure never hides another; the exit status is non-zero if any part failed, and the last line
# names those parts (the one before says how long each part took). The short fuzz run goes
# beside the integration tests at the lowest CPU priority (nice 19): those mostly wait on
# NetworkManager and the API server (58% of this 2-core machine busy on average), and what they
# leave builds and runs the fuzzers, 3 minutes on their own. Its output follows theirs.
# A failing test's own words (its panic, its assertion) are printed again at the end, from each
# part's output kept in target/test-output: a run's log is long, and whoever reads only its
# tail should still read why it failed.
TEST_PARTS := fmt-check clippy crates-check third-party-check unit integration test-oldest
BESIDE_INTEGRATION := fuzz-short
TEST_OUTPUT := target/test-output
test: deps kube-build
	@set -o pipefail; failed=(); took=(); rm -rf $(TEST_OUTPUT); mkdir -p $(TEST_OUTPUT); beside=$(TEST_OUTPUT)/$(BESIDE_INTEGRATION); \
	for part in $(TEST_PARTS); do \
		started=$$(date +%s); \
		if [ $$part = integration ]; then \
			{ nice -n 19 $(MAKE) --no-print-directory $(BESIDE_INTEGRATION) > $$beside.log 2>&1; \
			  echo "$$? $$(( $$(date +%s) - started ))" > $$beside.status; } & \
		fi; \
		$(MAKE) --no-print-directory $$part 2>&1 | tee $(TEST_OUTPUT)/$$part.log || failed+=($$part); \
		took+=("$$part $$(( $$(date +%s) - started )) s"); \
	done; \
	wait; if [ -f $$beside.status ]; then \
		cat $$beside.log; read -r status seconds < $$beside.status; \
		took+=("$(BESIDE_INTEGRATION) $$seconds s (beside integration)"); \
		[ "$$status" = 0 ] || failed+=($(BESIDE_INTEGRATION)); \
	fi; \
	for part in "$${failed[@]}"; do [ ! -f $(TEST_OUTPUT)/$$part.log ] || config/test-failures.sh $(TEST_OUTPUT)/$$part.log; done; \
	echo "make test: time per part: $$(IFS=,; echo "$${took[*]}" | sed 's/,/, /g')"; \
	if [ $${#failed[@]} -gt 0 ]; then echo "make test: failed: $${failed[*]}" >&2; exit 1; fi; \
	echo "make test: $(TEST_PARTS) $(BESIDE_INTEGRATION) passed"

# What must keep working on the oldest supported server, v1.20.2: the CRDs install in their
# old-server form (no CEL) and are served, the operator reconciles and its render follows the
# server, the Helm chart installs (with the operator as a process: no kubelet of v1.20.2 is built
# here), the webhook admits and refuses with its own messages, a policy is enacted on a node, and
# an unusable maxUnavailable (which current servers refuse) is reported.
OLDEST_TESTS := --test cluster --test reconcile --test enactment --test preview --test revert \
	--test ordering --test webhook
test-oldest: kube-build-oldest
	@$(CARGO) build -q $(TESTED) --bins --test '*'
	@$(call in_cluster,$(TEST_OLDEST_LOCALENV_DIR),oldest,failed=0; \
	$(CARGO) test $(TESTED) $(OLDEST_TESTS) --no-fail-fast || failed=1; \
	$(CARGO) test -p nmstate-packaging --test helm with_the_operator_as_a_process || failed=1; \
	$(CARGO) test $(TESTED) --test rollout an_unusable_max_unavailable || failed=1; \
	exit $$failed)

## Benchmarks (figures printed, never asserted) ----------------------------------------------

nmstatectl:
	@[ -x $(NMSTATECTL) ] || $(CARGO) install nmstatectl --version '~2.2' --locked --root $(NMSTATECTL_ROOT)

# The handler (release build) against nmstatectl on the same sandbox node, side by side; the
# rollouts, the webhook and the operator.
bench: kube-build localenv nmstatectl
	@$(CARGO) build -q --release --workspace --bins
	@$(call in_cluster,$(BENCH_LOCALENV_DIR),current,export NMSTATECTL=$(NMSTATECTL); \
	$(CARGO) bench -q -p nmstate-handler --bench node --bench idle --bench rollout; \
	$(CARGO) bench -q -p nmstate-webhook --bench webhook; \
	$(CARGO) bench -q -p nmstate-operator --bench operator)

# Churn on five sandbox nodes (handler/tests/soak.rs): seeded policies, label flips and restarts
# for SOAK_SECONDS (SOAK_SEED replays a run), the invariants checked every minute, figures and
# memory printed. `make test` runs the same test for 120 s.
SOAK_SECONDS ?= 1200
soak: kube-build localenv
	@$(CARGO) build -q --workspace --bins
	@$(call in_cluster,$(SOAK_LOCALENV_DIR),current,SOAK_SECONDS=$(SOAK_SECONDS) \
	$(CARGO) test -q -p nmstate-handler --test soak -- --nocapture)

## Local cluster for people -----------------------------------------------------------------

cluster-up: kube-build localenv
	@$(LOCALENV) --dir $(LOCALENV_DIR) cluster up

cluster-down: localenv
	@$(LOCALENV) --dir $(LOCALENV_DIR) cluster down

cluster-status: localenv
	@$(LOCALENV) --dir $(LOCALENV_DIR) cluster status

## The demo: the whole product on this machine ------------------------------------------------

# Control plane, three sandbox nodes, the Helm chart, the operator and what it installs run as
# processes, then a tour of examples/ policies; all left running (in the cluster-up environment).
demo: deps kube-build
	@start=$$(date +%s); echo "make demo: building the workspace (cargo build --workspace)"; \
	$(CARGO) build -q --workspace && echo "make demo: built in $$(( $$(date +%s) - start )) s"
	@$(LOCALENV) --dir $(LOCALENV_DIR) demo up

demo-down: localenv
	@$(LOCALENV) --dir $(LOCALENV_DIR) demo down
