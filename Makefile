# The two commands a newcomer types:
#   make demo   the main job on the embedded default: a real local control
#               plane, a local sshd standing in for the VM, controller and agent
#   make test   everything: unit, integration and end-to-end tests
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: demo test prepare deps cluster build lint bench-tunnel bench-controller clean

deps:
	scripts/deps

# Go-side binaries (etcd, kube-apiserver, kube-controller-manager, kubectl,
# helm) from the Go module proxy; cached in ~/.cache/portplane.
cluster:
	scripts/cluster build

build:
	$(CARGO) build --workspace --locked --all-targets

# The Go build waits on downloads much of the time: build both sides at once.
prepare: deps
	$(MAKE) --no-print-directory -j2 cluster build

test: prepare
	$(CARGO) test --workspace --locked --no-fail-fast

demo: deps cluster
	$(CARGO) build --workspace --locked
	$(CARGO) run --quiet --locked -p portplane-e2e --bin portplane-demo

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Controller: annotate->OperatorPort latency, converge time + RSS at 100/1k/10k
# Services, resync writes (figures in BENCHMARKS.md).
bench-controller: deps
	scripts/bench-controller

clean:
	scripts/cluster down || true
	$(CARGO) clean
