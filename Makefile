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
	@echo "make bench-compare  deployex vs supervisord and PM2, deploy timing, 200 replicas (~6 min; installs supervisor and pm2 if missing; updates docs/BENCHMARKS.md)"
	@echo "make dist    release tarball target/dist/deployex-{version}-x86_64-unknown-linux-gnu.tar.gz"

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
	$(CARGO) build --release --bin deployex
	DEPLOYEX_BIN=$(CURDIR)/target/release/deployex $(CARGO) bench --bench respawn

# Side by side with supervisord (Debian) and PM2 (npm) on the same workload,
# deployment timing and scale (bench/compare/main.rs; knobs documented there
# and in docs/BENCHMARKS.md). Not run by `make test`.
.PHONY: bench-compare bench-compare-smoke
bench-compare: deps
	bash bench/compare-deps.sh
	$(CARGO) build --release --bin deployex
	DEPLOYEX_BIN=$(CURDIR)/target/release/deployex $(CARGO) bench --bench compare

# The same harness, tiny sizes (about 2 minutes), docs untouched.
bench-compare-smoke: deps
	bash bench/compare-deps.sh
	$(CARGO) build --release --bin deployex
	BENCH_KILLS=3 BENCH_IDLE_SECS=3 BENCH_BOOTS=1 BENCH_SCALE=10 BENCH_SCALE_IDLE_SECS=2 \
	BENCH_STATUS_REQUESTS=5 BENCH_DOC=- \
	DEPLOYEX_BIN=$(CURDIR)/target/release/deployex $(CARGO) bench --bench compare

# Certificates for mutual TLS on Erlang distribution (devops/tls/README.md):
# CA, deployex.crt/.key, node.crt/.key and inet_tls.conf in $(TLS_CERTS_DIR).
TLS_CERTS_DIR ?= /tmp
.PHONY: tls-distribution-certs
tls-distribution-certs:
	bash devops/tls/gen-certs.sh $(TLS_CERTS_DIR) $(TLS_HOSTNAME)

# Release tarball for devops/installer/deployex.sh:
# target/dist/deployex-{version}-x86_64-unknown-linux-gnu.tar.gz (files at the
# top level: bin/, config/, devops/, LICENSE, README.md). The binary links
# glibc dynamically: it runs on hosts whose glibc is at least the newest
# GLIBC_x.y symbol version it references (printed below).
DIST_TARGET := x86_64-unknown-linux-gnu

.PHONY: dist
dist:
	$(CARGO) build --release --bin deployex
	@set -euo pipefail; \
	[ "$$(uname -m)" = x86_64 ] || { echo "dist: builds $(DIST_TARGET) only, this is $$(uname -m)" >&2; exit 1; }; \
	version="$$($(CARGO) pkgid -p deployex | sed 's/.*[#@]//')"; \
	name="deployex-$$version-$(DIST_TARGET)"; \
	stage="target/dist/$$name"; \
	rm -rf "$$stage"; \
	mkdir -p "$$stage/bin" "$$stage/config" "$$stage/devops/installer" "$$stage/devops/systemd" "$$stage/devops/logrotate"; \
	install -m 0755 target/release/deployex "$$stage/bin/deployex"; \
	if command -v strip >/dev/null 2>&1; then strip "$$stage/bin/deployex"; fi; \
	install -m 0644 config/deployex.example.toml "$$stage/config/"; \
	install -m 0755 devops/installer/deployex.sh "$$stage/devops/installer/"; \
	install -m 0644 devops/installer/deployex-config.json "$$stage/devops/installer/"; \
	install -m 0644 devops/systemd/deployex.service "$$stage/devops/systemd/"; \
	install -m 0644 devops/logrotate/deployex "$$stage/devops/logrotate/"; \
	install -m 0644 LICENSE "$$stage/"; \
	if [ -f README.md ]; then install -m 0644 README.md "$$stage/"; else echo "dist: warning: no README.md at the top level" >&2; fi; \
	tar --sort=name --owner=0 --group=0 --numeric-owner -czf "target/dist/$$name.tar.gz" -C "$$stage" .; \
	rm -rf "$$stage"; \
	glibc="$$(objdump -T target/release/deployex 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 || true)"; \
	echo "dist: target/dist/$$name.tar.gz ($$(du -h "target/dist/$$name.tar.gz" | cut -f1), $$(stat -c %s "target/dist/$$name.tar.gz") bytes; needs $${glibc:-glibc ?} or newer)"
