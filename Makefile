# The targets CI calls, step for step (.ci/run). `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help deps build lint fmt test demo bench clean-demo fuzz soak

help:
	@echo "make deps    install what the tests need (Debian: elixir; run as root)"
	@echo "make build   build deployex (debug)"
	@echo "make lint    cargo fmt --check + clippy -D warnings"
	@echo "make test    the whole test suite (unit + end-to-end with real releases)"
	@echo "make demo    build a demo release, publish 0.1.0 locally, run deployex on :5001"
	@echo "make bench   crash->respawn latency and RSS benchmark (prints a table)"
	@echo "make fuzz    each cargo-fuzz target for FUZZ_SECONDS (60) from the committed corpus"
	@echo "make soak    SOAK_MINUTES (15) of kills, publishes and polling; checks RSS, fds, orphans"
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

# Fuzzing (fuzz/README.md): cargo-fuzz on the stable toolchain through
# RUSTC_BOOTSTRAP (libFuzzer needs -Z flags), no sanitizer (the code under
# test is safe Rust). The committed seeds in fuzz/corpus/<target> are read
# only; libFuzzer's finds go to fuzz/target/corpus/<target>, crashes to
# fuzz/artifacts/<target>/ (replay: cd fuzz && cargo fuzz run <target> <file>).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= current_json unpack term_decode config
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@set -euo pipefail; cd fuzz; \
	export RUSTC_BOOTSTRAP=1; \
	$(CARGO) fuzz build --sanitizer none; \
	for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  mkdir -p target/corpus/$$t; \
	  log=target/fuzz-$$t.log; \
	  if $(CARGO) fuzz run --sanitizer none $$t target/corpus/$$t corpus/$$t -- \
	      -max_total_time=$(FUZZ_SECONDS) -timeout=10 -max_len=65536 -rss_limit_mb=2048 \
	      -print_final_stats=1 >"$$log" 2>&1; then \
	    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' "$$log" || true; \
	  else \
	    tail -n 60 "$$log"; echo "fuzz: $$t FAILED (full log fuzz/$$log, input in fuzz/artifacts/$$t)"; exit 1; \
	  fi; \
	done; \
	echo "fuzz: every target ran $(FUZZ_SECONDS) s without a crash"

# Soak (bench/soak.rs): release build, 3 replicas, random kills and
# publishes for SOAK_MINUTES; SOAK_SEED replays a run's events.
SOAK_MINUTES ?= 15
soak: deps
	$(CARGO) build --release --bin deployex
	SOAK_MINUTES=$(SOAK_MINUTES) DEPLOYEX_BIN=$(CURDIR)/target/release/deployex $(CARGO) bench --bench soak

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
