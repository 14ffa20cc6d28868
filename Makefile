# Slipway: the two commands are `make demo` and `make test`.
.PHONY: all build deps crds chart-crds lint test demo demo-down testenv testenv-down bench-release \
	image kind-e2e

all: build

deps:
	hack/deps

build:
	cargo build

## Regenerate crds/ from src/api (a test fails when they drift), and the chart's copy.
crds:
	cargo run -q -- crd --out-dir crds
	$(MAKE) chart-crds

## Copy crds/ into the Helm chart (tests/chart.rs fails when the copies differ).
chart-crds:
	cp crds/*.yaml charts/slipway/crds/

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## Everything: lint, unit tests, and integration tests against a real local control plane.
test: deps
	hack/test

## A local control plane, the operator, the examples and their status.
demo: deps
	hack/demo

demo-down:
	tests/testenv/down

## Just the local control plane ("a local cluster without Docker"); prints a kubeconfig path.
testenv: deps
	tests/testenv/up

testenv-down:
	tests/testenv/down

## Benchmark: 200 Releases x 3 services vs. the same Jobs/Deployments created directly.
bench-release: deps
	hack/bench release

## The operator image (Dockerfile). Needs a Docker engine: not available on the dev machines.
image:
	docker build -t slipway:dev .

## kind cluster from kind-config.yaml, image built and loaded, chart installed, tests run on it.
kind-e2e:
	hack/kind-e2e

## Benchmark: 1000 ScaledWorkers polling one Redis every 5 s.
bench-scaling: deps
	hack/bench scaling

## Benchmark: the bench-scaling scenario with Slipway and with KEDA (built from the Go module
## proxy by hack/keda-build) on one local control plane, printed side by side.
.PHONY: bench-scaling-keda
bench-scaling-keda: deps
	hack/keda-bench
