# The two commands a newcomer types:
#   make demo   the main job on the embedded default: a real local control
#               plane with nodes, a local sshd standing in for the VM, the
#               Helm-installed controller, and the agent
#   make test   everything: formatting, lints, unit, integration and
#               end-to-end tests
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
# The controller image the tests and the demo load into the local nodes.
IMAGE_ARCHIVE := target/image/portplane-controller-amd64.tar

.PHONY: demo test prepare deps cluster build image rust lint bench-tunnel bench-controller bench-agents clean

deps:
	scripts/deps

# Go-side binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kubectl, helm) from the Go module proxy; cached in
# ~/.cache/portplane.
cluster:
	scripts/cluster build

build:
	$(CARGO) build --workspace --locked --all-targets

# portplane-controller's container image: a static release binary on an
# empty base (Dockerfile), saved as an archive for the local nodes.
image:
	scripts/image controller $(IMAGE_ARCHIVE)

rust: build image

# The Go build waits on downloads much of the time: build both sides at once.
prepare: deps
	$(MAKE) --no-print-directory -j2 cluster rust

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	CARGO=$(CARGO) scripts/check-core-pure

test: prepare lint
	$(CARGO) test --workspace --locked --no-fail-fast

demo: prepare
	$(CARGO) run --quiet --locked -p portplane-e2e --bin portplane-demo

# Tunnel: the agent against OpenSSH's ssh -L through the same sshd.
bench-tunnel: deps
	scripts/bench-tunnel

# Controller: annotate->OperatorPort latency, converge time + RSS at 100/1k/10k
# Services, resync writes (figures in BENCHMARKS.md).
bench-controller: deps
	scripts/bench-controller

# The agent link: controller CPU/RSS with 100 real agents, TokenReviews per
# report, agent state change -> OperatorPort status (figures in BENCHMARKS.md).
bench-agents: deps
	scripts/bench-agents

clean:
	scripts/cluster down || true
	$(CARGO) clean
