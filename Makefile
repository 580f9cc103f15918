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
	@echo "make bench-load  HTTP load (wrk) on the API and dashboard, alone and during a rolling deploy"
	@echo "make dist    release tarball target/dist/deployex-{version}-x86_64-unknown-linux-gnu.tar.gz (glibc >= 2.31)"
	@echo "make dist-check-bullseye  make dist, then run the binary in a Debian 11 chroot (glibc 2.31; root)"

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
# glibc dynamically, against glibc $(DIST_GLIBC)'s symbol versions: zig
# (through cargo-zigbuild, both from PyPI in the venv $(DIST_TOOLS), pinned in
# devops/deps.sh) supplies that glibc's stubs, so it runs on Ubuntu 20.04
# (2.31), 22.04, 24.04 and Debian 11+. dist fails when the binary references a
# newer GLIBC_x.y symbol (devops/check-glibc.sh); `make dist-check-bullseye`
# also runs it in a Debian 11 chroot (glibc 2.31).
DIST_TARGET := x86_64-unknown-linux-gnu
DIST_GLIBC := 2.31
DIST_TOOLS ?= $(CURDIR)/target/dist-tools
DIST_BIN := target/$(DIST_TARGET)/release/deployex

.PHONY: dist deps-dist dist-check-bullseye
deps-dist:
	@bash devops/deps.sh --dist $(DIST_TOOLS)

dist: deps-dist
	@[ "$$(uname -m)" = x86_64 ] || { echo "dist: builds $(DIST_TARGET) only, this is $$(uname -m)" >&2; exit 1; }
	PATH="$(DIST_TOOLS)/bin:$$PATH" cargo-zigbuild zigbuild --release --bin deployex --target $(DIST_TARGET).$(DIST_GLIBC)
	@bash devops/check-glibc.sh $(DIST_BIN) $(DIST_GLIBC)
	@set -euo pipefail; \
	version="$$($(CARGO) pkgid -p deployex | sed 's/.*[#@]//')"; \
	name="deployex-$$version-$(DIST_TARGET)"; \
	stage="target/dist/$$name"; \
	rm -rf "$$stage"; \
	mkdir -p "$$stage/bin" "$$stage/config" "$$stage/devops/installer" "$$stage/devops/systemd" "$$stage/devops/logrotate"; \
	install -m 0755 $(DIST_BIN) "$$stage/bin/deployex"; \
	if command -v strip >/dev/null 2>&1; then strip "$$stage/bin/deployex"; fi; \
	install -m 0644 config/deployex.example.toml "$$stage/config/"; \
	install -m 0755 devops/installer/deployex.sh "$$stage/devops/installer/"; \
	install -m 0644 devops/installer/deployex-config.json "$$stage/devops/installer/"; \
	install -m 0644 devops/systemd/deployex.service "$$stage/devops/systemd/"; \
	install -m 0644 devops/logrotate/deployex "$$stage/devops/logrotate/"; \
	install -m 0644 LICENSE "$$stage/"; \
	if [ -f README.md ]; then install -m 0644 README.md "$$stage/"; else echo "dist: warning: no README.md at the top level" >&2; fi; \
	bash devops/check-glibc.sh "$$stage/bin/deployex" $(DIST_GLIBC) >/dev/null; \
	tar --sort=name --owner=0 --group=0 --numeric-owner -czf "target/dist/$$name.tar.gz" -C "$$stage" .; \
	rm -rf "$$stage"; \
	echo "dist: target/dist/$$name.tar.gz ($$(du -h "target/dist/$$name.tar.gz" | cut -f1), $$(stat -c %s "target/dist/$$name.tar.gz") bytes; needs glibc >= $(DIST_GLIBC))"

# Runs the dist binary in a debootstrapped Debian 11 chroot (glibc 2.31):
# root, network the first time (~220 MB rootfs in target/bullseye-rootfs).
dist-check-bullseye: dist
	@bash devops/deps.sh --bullseye
	@version="$$($(CARGO) pkgid -p deployex | sed 's/.*[#@]//')"; \
	bash devops/check-bullseye.sh "target/dist/deployex-$$version-$(DIST_TARGET).tar.gz"

# HTTP load on /api/v1/status and / (wrk, 64 connections), alone and during
# rolling deploys (bench/load.sh; numbers in docs/BENCHMARKS.md).
.PHONY: bench-load
bench-load: deps
	@bash devops/deps.sh --bench-load
	$(CARGO) build --release --bin deployex
	DEPLOYEX_BIN=$(CURDIR)/target/release/deployex bash bench/load.sh
