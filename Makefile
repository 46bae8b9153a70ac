# Conventional targets; the logic lives in cargo and `cargo xtask`.
CARGO ?= cargo

.PHONY: test lint fmt demo bench image e2e-kind manifests prereqs

## test: every test of the workspace, root-only (network namespace) tests included when root.
## First checks (and as root on Debian/Ubuntu installs) the tools the tests drive.
test: prereqs
	$(CARGO) test --workspace --all-targets --locked
	$(CARGO) test --workspace --doc --locked

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## demo: needs root; installs what it needs first (Debian/Ubuntu), like `make test`.
demo:
	@$(CARGO) xtask prereqs demo
	$(CARGO) xtask demo

bench:
	$(CARGO) xtask bench

image:
	$(CARGO) xtask image

e2e-kind:
	$(CARGO) xtask e2e-kind

manifests:
	$(CARGO) xtask manifests

## prereqs: iproute2, iptables, nftables, conntrack, procps, curl, ca-certificates (installed
## when missing, as root on Debian/Ubuntu), network namespaces, Go for the Helm chart tests.
prereqs:
	@$(CARGO) xtask prereqs test
