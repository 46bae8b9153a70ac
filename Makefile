# Conventional targets; the logic lives in cargo and `cargo xtask`.
CARGO ?= cargo

.PHONY: test lint fmt demo bench image e2e-kind manifests

## test: every test of the workspace, root-only (network namespace) tests included when root
test:
	$(CARGO) test --workspace --all-targets --locked
	$(CARGO) test --workspace --doc --locked

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

demo:
	$(CARGO) xtask demo

bench:
	$(CARGO) xtask bench

image:
	$(CARGO) xtask image

e2e-kind:
	$(CARGO) xtask e2e-kind

manifests:
	$(CARGO) xtask manifests
