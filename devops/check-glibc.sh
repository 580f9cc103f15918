#!/usr/bin/env bash
# Proves that an x86_64 ELF binary runs on glibc MAX_GLIBC or newer: prints
# the newest GLIBC_x.y symbol version it references and fails when that is
# newer than MAX_GLIBC. A static binary (no GLIBC_ version) passes.
#
#   check-glibc.sh BINARY MAX_GLIBC        e.g. check-glibc.sh target/.../deployex 2.31
#
# The dynamic loader refuses to start a binary that references a symbol
# version its glibc lacks ("version `GLIBC_2.34' not found"), so the newest
# version referenced is the binary's real minimum glibc.
set -euo pipefail

die() {
  echo "check-glibc: $*" >&2
  exit 1
}

[ $# -eq 2 ] || die "usage: check-glibc.sh BINARY MAX_GLIBC"
bin=$1
max=$2
[ -f "$bin" ] || die "$bin: no such file"
[[ "$max" =~ ^[0-9]+\.[0-9]+$ ]] || die "MAX_GLIBC must look like 2.31, not $max"

header=$(readelf -h "$bin" 2>/dev/null) || die "$bin is not an ELF file"
grep -q 'Machine:.*X86-64' <<<"$header" || die "$bin is not an x86_64 binary"

# Version references of the dynamic symbols (undefined ones are what the
# binary needs from glibc), e.g. "GLIBC_2.17".
versions=$(readelf --dyn-syms --version-info -W "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV)
if [ -z "$versions" ]; then
  if readelf -d "$bin" | grep -q NEEDED; then
    die "$bin is dynamically linked but references no GLIBC_ symbol version: cannot tell its minimum glibc"
  fi
  echo "check-glibc: $bin is statically linked: runs on any glibc"
  exit 0
fi
newest=$(tail -n 1 <<<"$versions")
if [ "$(printf '%s\n%s\n' "$newest" "$max" | sort -V | tail -n 1)" != "$max" ]; then
  culprits=$(readelf --dyn-syms -W "$bin" | awk -v v="GLIBC_$newest" 'index($0, v) { print $8 }' | sort -u | head -n 10 | tr '\n' ' ')
  die "$bin needs GLIBC_$newest (symbols: ${culprits:-?}), newer than the allowed $max"
fi
echo "check-glibc: $bin needs glibc >= $newest (allowed: $max)"
