# Slipway: the two commands are `make demo` and `make test`.
.PHONY: all build deps crds lint test demo demo-down testenv testenv-down image kind-e2e

all: build

deps:
	hack/deps

build:
	cargo build

## Regenerate crds/ from src/api (a test fails when they drift).
crds:
	cargo run -q -- crd --out-dir crds

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
