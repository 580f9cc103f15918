#!/usr/bin/env bash
# Installs what building the fixture releases and running the tests needs,
# on Debian/Ubuntu, when it is missing. Idempotent; needs root to install.
set -euo pipefail

need=()
command -v mix >/dev/null 2>&1 || need+=(elixir)
command -v epmd >/dev/null 2>&1 || need+=(erlang-base)
# tests/browser.rs drives the dashboard in headless Chromium (over CDP).
[ -x /usr/bin/chromium ] || need+=(chromium)

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
