#!/usr/bin/env bash
# Runs the dist tarball's deployex inside a Debian 11 "bullseye" chroot
# (glibc 2.31, the glibc of Ubuntu 20.04): --version, --help, check-config,
# then a real start serving /healthz. Proof that `make dist` output runs on
# the oldest glibc the installer supports. Needs root and debootstrap.
#
#   check-bullseye.sh TARBALL [ROOTFS]
#
# ROOTFS (default target/bullseye-rootfs) is made once with
# `debootstrap --variant=minbase bullseye` (~1-2 min, ~220 MB) and reused.
# Everything it starts is stopped by pid; /proc is unmounted at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "check-bullseye: $*" >&2
  exit 1
}
log() { echo "check-bullseye: $*"; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then die "usage: check-bullseye.sh TARBALL [ROOTFS]"; fi
tarball=$(realpath "$1")
rootfs=${2:-$PWD/target/bullseye-rootfs}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
[ -f "$tarball" ] || die "$tarball: no such file"
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found: bash devops/deps.sh --bullseye"

if [ ! -x "$rootfs/usr/bin/ldd" ]; then
  log "debootstrap bullseye into $rootfs (once)"
  rm -rf "$rootfs.partial"
  debootstrap --variant=minbase bullseye "$rootfs.partial" "$mirror" >"$rootfs.log" 2>&1 ||
    die "debootstrap failed, see $rootfs.log"
  mv "$rootfs.partial" "$rootfs"
fi
glibc=$(chroot "$rootfs" ldd --version | head -n 1)
log "chroot: $glibc"

opt=/opt/deployex-check
rm -rf "${rootfs:?}$opt"
mkdir -p "$rootfs$opt" "$rootfs/tmp"
tar -xzf "$tarball" -C "$rootfs$opt" --no-same-owner

pid=""
mounted=0
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [ "$mounted" = 1 ]; then umount "$rootfs/proc" || true; fi
  rm -rf "${rootfs:?}$opt" "$rootfs/tmp/deployex-check"
}
trap cleanup EXIT

# tokio and the process code read /proc.
if ! mountpoint -q "$rootfs/proc"; then
  mount -t proc proc "$rootfs/proc"
  mounted=1
fi

in_chroot() { chroot "$rootfs" env -i PATH=/usr/bin:/bin HOME=/tmp/deployex-check "$@"; }

in_chroot "$opt/bin/deployex" --version
in_chroot "$opt/bin/deployex" --help >/dev/null
log "--help ok"
mkdir -p "$rootfs/tmp/deployex-check"
in_chroot DEPLOYEX_MONITORED_REPLICAS=1 "$opt/bin/deployex" check-config >/dev/null
log "check-config ok"

# A real start: tokio, warp, the actor tree; an empty local store, one replica
# that has nothing to run. The chroot shares the host's network namespace.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chroot "$rootfs" env -i PATH=/usr/bin:/bin HOME=/tmp/deployex-check \
  DEPLOYEX_MONITORED_REPLICAS=1 \
  DEPLOYEX_PHX_PORT="$port" \
  DEPLOYEX_RELEASE_DIR=/tmp/deployex-check/store \
  DEPLOYEX_VAR_DIR=/tmp/deployex-check/var \
  DEPLOYEX_LOG_DIR=/tmp/deployex-check/log \
  "$opt/bin/deployex" >"$rootfs/tmp/deployex-check/deployex.log" 2>&1 &
pid=$!
deadline=$((SECONDS + 20))
until curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || die "deployex exited in the chroot: $(cat "$rootfs/tmp/deployex-check/deployex.log")"
  [ "$SECONDS" -lt "$deadline" ] || die "deployex did not answer /healthz in 20 s: $(cat "$rootfs/tmp/deployex-check/deployex.log")"
  sleep 0.1
done
log "deployex (pid $pid) serves /healthz on :$port under $glibc"
kill -TERM "$pid"
deadline=$((SECONDS + 15))
while kill -0 "$pid" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || die "deployex did not stop on SIGTERM"
  sleep 0.1
done
wait "$pid" || die "deployex exited with status $? on SIGTERM"
pid=""
log "ok: $(basename "$tarball") runs on $glibc"
