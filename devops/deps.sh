#!/usr/bin/env bash
# Installs what the Makefile targets need on Debian/Ubuntu, when it is
# missing. Idempotent; needs root only when something must be installed.
#
#   deps.sh                  building the fixture releases and the tests (make test),
#                            cargo-nextest (pinned) that runs them
#   deps.sh --dist DIR       make dist: objdump, and zig + cargo-zigbuild (PyPI,
#                            pinned) in a Python venv at DIR, to link the
#                            release binary against glibc 2.31
#   deps.sh --bullseye       make dist-check-bullseye: debootstrap
#   deps.sh --bench-load     make bench-load: wrk, curl (after the test deps)
set -euo pipefail

# The dist toolchain, pinned: a new zig can change the C/link behaviour.
readonly ZIGLANG_VERSION=0.17.1
readonly CARGO_ZIGBUILD_VERSION=0.24.1
# The test runner of `make test` (.config/nextest.toml), installed with
# `cargo install --locked` when missing. An installed one is kept when it
# is at least the config's `nextest-version` (nextest itself checks that).
readonly CARGO_NEXTEST_VERSION=0.9.143

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing $*; run as root (apt-get install $*)" >&2
    exit 1
  fi
  echo "deps: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

dist_tools() { # venv dir
  local venv=$1 need=()
  command -v objdump >/dev/null 2>&1 || need+=(binutils)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  # Debian splits ensurepip (needed by `python3 -m venv`) into python3-venv.
  if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need+=(python3-venv)
  fi
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
  if [ -x "$venv/bin/cargo-zigbuild" ] && "$venv/bin/python3" -m ziglang version 2>/dev/null | grep -qx "$ZIGLANG_VERSION" &&
    "$venv/bin/cargo-zigbuild" --version 2>/dev/null | grep -q " $CARGO_ZIGBUILD_VERSION\b"; then
    return 0
  fi
  echo "deps: installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check \
    "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
  "$venv/bin/python3" -m ziglang version >/dev/null
  "$venv/bin/cargo-zigbuild" --version >/dev/null
}

case "${1:-}" in
  --dist)
    [ $# -eq 2 ] || {
      echo "usage: deps.sh --dist VENV_DIR" >&2
      exit 2
    }
    dist_tools "$2"
    exit 0
    ;;
  --bullseye)
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    exit 0
    ;;
  --bench-load)
    need=()
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: deps.sh [--dist VENV_DIR | --bullseye | --bench-load]" >&2
    exit 2
    ;;
esac

need=()
command -v mix >/dev/null 2>&1 || need+=(elixir)
command -v epmd >/dev/null 2>&1 || need+=(erlang-base)
# tests/browser.rs drives the dashboard in headless Chromium (over CDP).
[ -x /usr/bin/chromium ] || need+=(chromium)
# TLS certificates for the mTLS tests (devops/tls/gen-certs.sh).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# The installer and its tests: jq parses the config, shellcheck lints,
# systemd-analyze verifies the unit, logrotate runs the rule.
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v logrotate >/dev/null 2>&1 || need+=(logrotate)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need[*]}; run 'sudo make deps' (apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# rebar3 (Debian's 3.19) for the rebar3/relx fixture releases
# (tests/fixtures/build-rebar3.sh). The rebar3 package depends on
# erlang-reltool and erlang-common-test, which pull wxWidgets and X11 (76
# packages); the escript itself runs on the Erlang that elixir brings. So
# only the escript is installed, from the Debian package.
if ! command -v rebar3 >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing rebar3; run 'sudo make deps'" >&2
    exit 1
  fi
  echo "deps: installing rebar3 (the escript from Debian's package, without its X11 dependencies)"
  export DEBIAN_FRONTEND=noninteractive
  rebar3_tmp=$(mktemp -d)
  chmod 755 "$rebar3_tmp"
  apt-get update -qq
  (cd "$rebar3_tmp" && apt-get download -qq rebar3)
  dpkg-deb -x "$rebar3_tmp"/rebar3_*.deb "$rebar3_tmp/root"
  install -m 0755 "$rebar3_tmp/root/usr/bin/rebar3" /usr/local/bin/rebar3
  rm -rf "$rebar3_tmp"
  hash -r
  rebar3 version >/dev/null || {
    echo "deps: the installed rebar3 does not run" >&2
    exit 1
  }
fi

# moto_server (Python moto): real S3 and Secrets Manager HTTP APIs on
# loopback for the AWS tests (actors/tests/s3_store.rs, tests/s3_e2e.rs,
# src/secrets.rs). Debian 12's Python is "externally managed": fall back to
# --break-system-packages (root, CI machine).
if ! command -v moto_server >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing moto_server; run 'sudo make deps' (pip install 'moto[server]')" >&2
    exit 1
  fi
  if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  pip=$(command -v pip3 || command -v pip)
  echo "deps: installing moto[server] with $pip"
  # Verified on a fresh Debian 12 (debootstrap): the first attempt fails
  # (externally managed), the second installs /usr/local/bin/moto_server.
  if ! first=$("$pip" install -q 'moto[server]' 2>&1); then
    if ! "$pip" install -q --break-system-packages 'moto[server]'; then
      echo "deps: pip install 'moto[server]' failed; first attempt said:" >&2
      echo "$first" >&2
      exit 1
    fi
  fi
  hash -r
  if ! command -v moto_server >/dev/null 2>&1; then
    echo "deps: moto_server is not on PATH after pip install" >&2
    exit 1
  fi
fi

# cargo-nextest runs the test binaries concurrently (make test). Built from
# crates.io with its lock file (checksummed), into cargo's own bin dir: no
# root needed.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "deps: installing cargo-nextest $CARGO_NEXTEST_VERSION (cargo install --locked; several minutes)"
  cargo install --locked --quiet cargo-nextest --version "$CARGO_NEXTEST_VERSION"
  cargo nextest --version >/dev/null || {
    echo "deps: the installed cargo-nextest does not run" >&2
    exit 1
  }
fi
