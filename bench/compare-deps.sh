#!/usr/bin/env bash
# The peers of `make bench-compare`, installed when missing: supervisord
# (Debian package `supervisor`) and PM2 (npm, global). Needs root or sudo.
# The benchmark runs both with their own config and home in a temp dir; on a
# systemd host the Debian package also enables a system supervisord with an
# empty config, which the benchmark never touches.
set -euo pipefail

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi

if ! command -v supervisord >/dev/null 2>&1; then
  echo "bench-compare: installing supervisor (apt)" >&2
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends supervisor
fi

if ! command -v pm2 >/dev/null 2>&1; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bench-compare: installing nodejs and npm (apt)" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm
  fi
  echo "bench-compare: installing pm2 (npm install -g)" >&2
  $sudo npm install -g pm2
fi

echo "bench-compare: supervisord $(supervisord --version), pm2 at $(command -v pm2), node $(node --version)" >&2
