#!/usr/bin/env bash
# Installs what building the fixture releases and running the tests needs,
# on Debian/Ubuntu, when it is missing. Idempotent; needs root to install.
set -euo pipefail

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
  "$pip" install -q 'moto[server]' 2>/dev/null \
    || "$pip" install -q --break-system-packages 'moto[server]'
  if ! command -v moto_server >/dev/null 2>&1; then
    echo "deps: moto_server is not on PATH after pip install" >&2
    exit 1
  fi
fi
