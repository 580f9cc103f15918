# The targets CI calls, step for step (.ci/run). `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help deps build lint fmt test demo bench clean-demo fuzz soak

help:
	@echo "make deps    install what the tests need (Debian: elixir; run as root)"
	@echo "make build   build deployex (debug)"
	@echo "make lint    cargo fmt --check + clippy -D warnings"
	@echo "make test    the whole test suite (unit + end-to-end with real releases; cargo-nextest, 6-8 min on 2 cores)"
	@echo "make demo    build a demo release, publish 0.1.0 locally, run deployex on :5001"
	@echo "make bench   = bench-compare (below)"
	@echo "make bench-respawn  crash->respawn latency and RSS of deployex next to a trivial respawn loop"
	@echo "make bench-apps  RSS, idle CPU and wake-ups of deployex with 1 and 5 apps x 3 replicas (BENCH_APPS, BENCH_IDLE_SECS)"
	@echo "make bench-compare  deployex vs supervisord and PM2, deploy timing, 200 replicas (~6 min; installs supervisor and pm2 if missing; updates docs/BENCHMARKS.md)"
	@echo "make bench-load  HTTP load (wrk) on the API and dashboard, alone and during a rolling deploy"
	@echo "make dist    release tarball target/dist/deployex-{version}-x86_64-unknown-linux-gnu.tar.gz (glibc >= 2.31)"
	@echo "make dist-check-bullseye  make dist, then run the binary in a Debian 11 chroot (glibc 2.31; root)"
	@echo "make fuzz    each cargo-fuzz target for FUZZ_SECONDS (60) from the committed corpus"
	@echo "make soak    SOAK_MINUTES (15) of kills, publishes and polling; checks RSS, fds, orphans"

deps:
	@bash devops/deps.sh

build:
	$(CARGO) build --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# cargo-nextest runs every test binary of the workspace concurrently, each
# test in its own process (.config/nextest.toml: 4 at a time; wall-clock
# sensitive tests each alone; no retries); doc tests, which nextest
# does not run, follow. The test build compiles the deployex binary the
# end-to-end tests run, with the test suite's fault injection (the
# `testhooks` feature); a plain build would be thrown away.
# `make test-serial` is the old runner (cargo test, one binary at a time).
test: deps
	$(CARGO) nextest run --workspace
	$(CARGO) test --doc --workspace

.PHONY: test-serial
test-serial: deps
	$(CARGO) test --workspace -- --test-threads=2

demo: deps
	@bash devops/demo.sh

# The evidence benchmark (issue 7): deployex side by side with supervisord
# and PM2, deploy timing, 200 replicas; one table, docs/BENCHMARKS.md updated.
bench: bench-compare

# crash -> respawn and RSS of deployex next to a trivial wait-and-respawn
# loop (the floor), same machine, same run.
.PHONY: bench-respawn
bench-respawn: deps
	$(CARGO) build --release --bin deployex
	cp target/release/deployex target/deployex-under-test
	DEPLOYEX_BIN=$(CURDIR)/target/deployex-under-test $(CARGO) bench --bench respawn

# RSS, idle CPU and wake-ups of deployex with N apps x 3 replicas from one
# [[apps]] file (bench/apps.rs; BENCH_APPS=1,5, BENCH_REPLICAS=3,
# BENCH_IDLE_SECS=30, BENCH_SETTLE_SECS=5). Not run by `make test`.
.PHONY: bench-apps
bench-apps: deps
	$(CARGO) build --release --bin deployex
	cp target/release/deployex target/deployex-under-test
	DEPLOYEX_BIN=$(CURDIR)/target/deployex-under-test $(CARGO) bench --bench apps

# Side by side with supervisord (Debian) and PM2 (npm) on the same workload,
# deployment timing and scale (bench/compare/main.rs; knobs documented there
# and in docs/BENCHMARKS.md). Not run by `make test`.
.PHONY: bench-compare bench-compare-smoke
bench-compare: deps
	bash bench/compare-deps.sh
	$(CARGO) build --release --bin deployex
	cp target/release/deployex target/deployex-under-test
	DEPLOYEX_BIN=$(CURDIR)/target/deployex-under-test $(CARGO) bench --bench compare

# The same harness, tiny sizes (about 2 minutes), docs untouched.
bench-compare-smoke: deps
	bash bench/compare-deps.sh
	$(CARGO) build --release --bin deployex
	cp target/release/deployex target/deployex-under-test
	BENCH_KILLS=3 BENCH_IDLE_SECS=3 BENCH_BOOTS=1 BENCH_SCALE=10 BENCH_SCALE_IDLE_SECS=2 \
	BENCH_STATUS_REQUESTS=5 BENCH_DOC=- \
	DEPLOYEX_BIN=$(CURDIR)/target/deployex-under-test $(CARGO) bench --bench compare
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
	cp target/release/deployex target/deployex-under-test
	SOAK_MINUTES=$(SOAK_MINUTES) DEPLOYEX_BIN=$(CURDIR)/target/deployex-under-test $(CARGO) bench --bench soak

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
	cp target/release/deployex target/deployex-under-test
	DEPLOYEX_BIN=$(CURDIR)/target/deployex-under-test bash bench/load.sh
