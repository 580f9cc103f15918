# The targets CI calls, step for step (.ci/run). `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help deps build lint fmt test demo bench clean-demo

help:
	@echo "make deps    install what the tests need (Debian: elixir; run as root)"
	@echo "make build   build deployex (debug)"
	@echo "make lint    cargo fmt --check + clippy -D warnings"
	@echo "make test    the whole test suite (unit + end-to-end with real releases)"
	@echo "make demo    build a demo release, publish 0.1.0 locally, run deployex on :5001"
	@echo "make bench   crash->respawn latency and RSS benchmark (prints a table)"

deps:
	@bash devops/deps.sh

build:
	$(CARGO) build --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace -- --test-threads=2

demo: deps
	@bash devops/demo.sh

bench: deps
	$(CARGO) build --release --bins
	$(CARGO) run --release --example bench_respawn

# Certificates for mutual TLS on Erlang distribution (devops/tls/README.md):
# CA, deployex.crt/.key, node.crt/.key and inet_tls.conf in $(TLS_CERTS_DIR).
TLS_CERTS_DIR ?= /tmp
.PHONY: tls-distribution-certs
tls-distribution-certs:
	bash devops/tls/gen-certs.sh $(TLS_CERTS_DIR) $(TLS_HOSTNAME)
