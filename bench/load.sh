#!/usr/bin/env bash
# HTTP load benchmark of the dashboard/API (issue 5) and the same load during
# a rolling deploy (issue 7, scope 6). `make bench-load` runs it.
#
# Starts the release deployex (DEPLOYEX_BIN, default target/release/deployex)
# with 3 replicas of the real fixture release in a temp dir, on free ports,
# with its own ERL_EPMD_PORT; logs in for a bearer token (API) and a session
# cookie (the HTML form, like a browser), then:
#
#   phase 1  wrk -t1 -c64 -d15s --latency on /api/v1/status and on /, one
#            route after the other: requests/s, p50, p99, failures; and on
#            /healthz (no session, no engine query: the HTTP stack's ceiling).
#            One wrk thread drives all 64 connections: on a 2-core machine
#            the generator shares the cores with deployex, and a second wrk
#            thread takes a whole core from the server being measured. The
#            status route is also run with -t2 (one more row) so both
#            set-ups are on record.
#   phase 2  rolling deploys of the 3 replicas (0.1.0 <-> 0.1.1, full
#            deployments), alternately without and with load: two wrk
#            processes (-t1 -c32 each, so 64 connections and 2 threads in
#            all) on /api/v1/status and / from 2 s before the deploy to its
#            end (then SIGINT: wrk stops and prints its summary). Every
#            response must be a 200 (counted by a wrk Lua hook: wrk's own
#            "Non-2xx or 3xx" count would let a 302 to /login pass) and no
#            socket error may occur; deploy time with load vs without.
#
# Prints the tables (markdown) and exits 1 when a request failed in phase 2.
# Knobs: LOAD_DURATION_S (15), LOAD_CONNECTIONS (64), LOAD_THREADS (1),
# LOAD_MIN_READY_MS (DEPLOYEX_MIN_READY_MS of the deploys, 2000),
# LOAD_DEPLOY_ROUNDS (2 deploys per mode; 0 skips phase 2), LOAD_DEPLOYEX_LOG (DEPLOYEX_LOG,
# default info as in production: actions and failures logged, routine reads at debug),
# LOAD_KEEP=1 keeps the temp dir.
# Everything it starts is stopped by pid at exit (deployex, the instances it
# may leave behind, the EPMD on our port).
set -euo pipefail
cd "$(dirname "$0")/.."

readonly APP=dxtest
readonly REPLICAS=3
readonly DURATION_S=${LOAD_DURATION_S:-15}
readonly CONNECTIONS=${LOAD_CONNECTIONS:-64}
readonly THREADS=${LOAD_THREADS:-1}
# Phase 1 runs wrk at the nice value of deployex's web threads (src/main.rs
# WEB_NICE): on a machine where the generator shares the cores with the
# server, a generator at nice 0 would out-prioritise the server it measures.
# Phase 2 runs wrk at nice 0 (the load competes with the deploy as it would).
readonly WRK_NICE=${LOAD_WRK_NICE:-10}
readonly MIN_READY_MS=${LOAD_MIN_READY_MS:-2000}
readonly DEPLOY_ROUNDS=${LOAD_DEPLOY_ROUNDS:-2}
BIN=${DEPLOYEX_BIN:-$PWD/target/release/deployex}

die() {
  echo "bench-load: error: $*" >&2
  exit 1
}
log() { echo "bench-load: $*" >&2; }

for tool in wrk curl jq epmd python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install wrk curl jq erlang-base python3)"
done
[ -x "$BIN" ] || die "$BIN not found: cargo build --release --bin deployex (or set DEPLOYEX_BIN)"

WORK=$(mktemp -d /tmp/dx-load-XXXXXX)
DX_PID=""
EPMD_PORT=""
WRK_PIDS=()

# Stop by pid only: wrk, deployex (SIGTERM stops its instances), then any
# instance still named in a pid file of ours, then our EPMD.
cleanup() {
  local pid f deadline
  for pid in "${WRK_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$DX_PID" ] && kill -0 "$DX_PID" 2>/dev/null; then
    kill -TERM "$DX_PID" 2>/dev/null || true
    deadline=$((SECONDS + 30))
    while kill -0 "$DX_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$DX_PID" 2>/dev/null || true
  fi
  for f in "$WORK"/var/service/"$APP"/*/pid; do
    [ -f "$f" ] || continue
    pid=$(jq -r '.pid // empty' "$f" 2>/dev/null || true)
    # Only a process still running from our temp dir.
    if [ -n "$pid" ] && readlink "/proc/$pid/cwd" 2>/dev/null | grep -q "^$WORK/"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ -n "$EPMD_PORT" ]; then epmd -port "$EPMD_PORT" -kill >/dev/null 2>&1 || true; fi
  if [ "${LOAD_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N consecutive free TCP ports on loopback (each bound once to prove it).
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
if n == 1:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close(); sys.exit(0)
for _ in range(500):
    base = random.randint(20000, 50000)
    if all(free(base + i) for i in range(n)):
        print(base); sys.exit(0)
sys.exit("no free port range")
PY
}

# Seconds since the epoch with nanoseconds, as a float for awk.
now() { date +%s.%N; }

log "fixture releases (cached after the first build)..."
FIXTURES=$(bash tests/fixtures/build.sh --app "$APP" | tail -n 1)
[ -f "$FIXTURES/$APP-0.1.0.tar.gz" ] || die "no fixture tarballs in $FIXTURES"

STORE=$WORK/store
mkdir -p "$STORE/dist/$APP" "$STORE/versions/$APP/local" "$WORK/logs"
cp "$FIXTURES/$APP-0.1.0.tar.gz" "$FIXTURES/$APP-0.1.1.tar.gz" "$STORE/dist/$APP/"

publish() { # version
  local tmp
  tmp=$(mktemp "$STORE/versions/$APP/local/.current.json.XXXXXX")
  printf '{"version":"%s","pre_commands":[],"hash":"bench-%s"}\n' "$1" "$1" >"$tmp"
  mv "$tmp" "$STORE/versions/$APP/local/current.json"
}

API_PORT=$(free_ports 1)
APP_PORT=$(free_ports "$REPLICAS")
EPMD_PORT=$(free_ports 1)
BASE=http://127.0.0.1:$API_PORT

publish 0.1.0
env -i PATH="$PATH" HOME="$WORK" \
  DEPLOYEX_MONITORED_APP_NAME="$APP" \
  DEPLOYEX_RELEASE_DIR="$STORE" \
  DEPLOYEX_VAR_DIR="$WORK/var" \
  DEPLOYEX_LOG_DIR="$WORK/logs" \
  DEPLOYEX_MONITORED_REPLICAS="$REPLICAS" \
  DEPLOYEX_MONITORED_APP_PORT="$APP_PORT" \
  DEPLOYEX_PHX_PORT="$API_PORT" \
  ERL_EPMD_PORT="$EPMD_PORT" \
  DEPLOYEX_ERLANG_COOKIE=bench-cookie \
  DEPLOYEX_SECRET_KEY_BASE="$(od -An -vtx1 -N 32 /dev/urandom | tr -d ' \n')" \
  DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS=200 \
  DEPLOYEX_MIN_READY_MS="$MIN_READY_MS" \
  DEPLOYEX_LOG="${LOAD_DEPLOYEX_LOG:-info}" \
  "$BIN" >"$WORK/deployex.log" 2>&1 &
DX_PID=$!

wait_for() { # deadline_s description command...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    kill -0 "$DX_PID" 2>/dev/null || { tail -n 30 "$WORK/deployex.log" >&2; die "deployex exited while waiting for $what"; }
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$WORK/deployex.log" >&2; die "timed out waiting for $what"; }
    sleep 0.05
  done
}

healthy() { curl -fsS -o /dev/null "$BASE/healthz" 2>/dev/null; }
wait_for 30 "/healthz" healthy

TOKEN=$(curl -fsS "$BASE/api/v1/login" -H 'content-type: application/json' \
  -d '{"username":"admin","password":"deployex"}' | jq -r .token)
if [ -z "$TOKEN" ] || [ "$TOKEN" = null ]; then die "API login failed"; fi
# The browser way: the HTML form sets the session cookie.
curl -fsS -o /dev/null -c "$WORK/cookies" -H "origin: $BASE" \
  --data-urlencode username=admin --data-urlencode password=deployex "$BASE/login"
COOKIE=$(awk '$6 == "deployex_session" { print $7 }' "$WORK/cookies")
[ -n "$COOKIE" ] || die "form login set no deployex_session cookie"
AUTH_H="authorization: Bearer $TOKEN"
COOKIE_H="cookie: deployex_session=$COOKIE"

code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
[ "$(code -H "$AUTH_H" "$BASE/api/v1/status")" = 200 ] || die "/api/v1/status with the token is not 200"
[ "$(code -H "$COOKIE_H" "$BASE/")" = 200 ] || die "/ with the session cookie is not 200"

status_json() { curl -fsS -H "$AUTH_H" "$BASE/api/v1/status"; }
# All replicas running `version`, nothing deploying.
converged() { # version
  status_json 2>/dev/null | jq -e --arg v "$1" --argjson n "$REPLICAS" \
    '.deploying == null and (.instances | length == $n and all(.version == $v and .state == "running"))' >/dev/null 2>&1
}
wait_for 120 "3 replicas running 0.1.0" converged 0.1.0
log "deployex pid $DX_PID: $REPLICAS replicas of $APP 0.1.0 running; API on $BASE"

# wrk Lua hook: counts responses whose status is not 200, over all threads.
LUA=$WORK/count.lua
cat >"$LUA" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("not-200: %d\n", total))
end
LUA

# wrk output -> "req/s p50_ms p99_ms requests not200 socket_errors".
parse_wrk() { # file
  awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    / requests in / { n = $1 }
    /^not-200:/ { bad = $2 }
    /Socket errors:/ { gsub(",", ""); sock = $4 + $6 + $8 + $10 }
    END { printf "%.0f %.2f %.2f %d %d %d\n", rps, p50, p99, n, bad, sock + 0 }
  ' "$1"
}

run_wrk() { # out threads conns duration header path
  nice -n "$WRK_NICE" wrk -t"$2" -c"$3" -d"$4"s --latency -s "$LUA" -H "$5" "$BASE$6" >"$1" 2>&1
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$DX_PID/status"; }

# ---- phase 1: throughput and latency, one route at a time ----------------
log "phase 1: wrk -t$THREADS -c$CONNECTIONS -d${DURATION_S}s on /api/v1/status and /"
P1=()
for route in /healthz /api/v1/status /; do
  header=$AUTH_H
  [ "$route" = / ] && header=$COOKIE_H
  out=$WORK/wrk-p1-${route//\//_}.txt
  run_wrk "$out" "$THREADS" "$CONNECTIONS" "$DURATION_S" "$header" "$route"
  P1+=("$route $(parse_wrk "$out") $(loadavg | cut -d' ' -f1)")
done
if [ "$THREADS" != 2 ]; then
  out=$WORK/wrk-p1-status-t2.txt
  run_wrk "$out" 2 "$CONNECTIONS" "$DURATION_S" "$AUTH_H" /api/v1/status
  P1+=("/api/v1/status(wrk_-t2) $(parse_wrk "$out") $(loadavg | cut -d' ' -f1)")
fi
P1_RSS=$(rss_mib)

# ---- phase 2: rolling deploys without and with load ------------------------
deploy() { # version -> prints seconds from publish to converged
  local t0 t1
  t0=$(now)
  publish "$1"
  wait_for 300 "the rolling deploy to $1" converged "$1"
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f\n", b - a }'
}

# Warm-up: 0.1.1 gets fetched, verified and cached once, so that every
# measured deploy below starts from a cached tarball.
version=0.1.0
if [ "$DEPLOY_ROUNDS" -gt 0 ]; then
  log "phase 2: warm-up deploy to 0.1.1"
  deploy 0.1.1 >/dev/null
  version=0.1.1
fi
next() { [ "$version" = 0.1.0 ] && echo 0.1.1 || echo 0.1.0; }

P2=()
P2_FAIL=0
# Modes alternate (none, load, load, none, ...) so drift cancels out.
modes=()
for ((r = 0; r < DEPLOY_ROUNDS; r++)); do
  if ((r % 2 == 0)); then modes+=(none load); else modes+=(load none); fi
done
for mode in "${modes[@]}"; do
  target=$(next)
  if [ "$mode" = none ]; then
    log "phase 2: deploy $version -> $target without load"
    secs=$(deploy "$target")
    P2+=("none $version $target $secs - - - - -")
  else
    # wrk runs until the deploy is over, then gets SIGINT (it stops and
    # prints its summary); the duration is only a bound.
    dur=600
    log "phase 2: deploy $version -> $target under load"
    a=$WORK/wrk-p2-api-$target-$SECONDS.txt
    b=$WORK/wrk-p2-page-$target-$SECONDS.txt
    WRK_PIDS=()
    # wrk itself in the background (not a function: $! must be wrk's pid).
    wrk -t1 -c$((CONNECTIONS / 2)) -d"$dur"s --latency -s "$LUA" -H "$AUTH_H" "$BASE/api/v1/status" >"$a" 2>&1 &
    WRK_PIDS+=($!)
    wrk -t1 -c$((CONNECTIONS / 2)) -d"$dur"s --latency -s "$LUA" -H "$COOKIE_H" "$BASE/" >"$b" 2>&1 &
    WRK_PIDS+=($!)
    sleep 2 # let the load reach steady state before publishing (not a sync)
    secs=$(deploy "$target")
    kill -INT "${WRK_PIDS[@]}"
    wait "${WRK_PIDS[@]}" || die "wrk failed: $(cat "$a" "$b")"
    WRK_PIDS=()
    read -r rps_a _ p99_a _ bad_a sock_a <<<"$(parse_wrk "$a")"
    read -r rps_b _ p99_b _ bad_b sock_b <<<"$(parse_wrk "$b")"
    P2+=("load $version $target $secs $rps_a $p99_a $rps_b $p99_b $((bad_a + bad_b))/$((sock_a + sock_b))")
    if [ $((bad_a + bad_b + sock_a + sock_b)) -ne 0 ]; then P2_FAIL=1; fi
  fi
  version=$target
done

# ---- report ----------------------------------------------------------------
echo
echo "deployex $("$BIN" --version 2>/dev/null | head -n 1), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load average now $(loadavg)"
echo
echo "Phase 1: wrk -t$THREADS -c$CONNECTIONS -d${DURATION_S}s --latency, $REPLICAS replicas running (deployex RSS after: $P1_RSS MiB)"
echo
echo "| route | requests/s | p50 (ms) | p99 (ms) | requests | not 200 | socket errors | load avg (1 min) |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${P1[@]}"; do
  read -r route rps p50 p99 n bad sock la <<<"$row"
  route=${route//_/ }
  echo "| $route | $rps | $p50 | $p99 | $n | $bad | $sock | $la |"
done
[ "$DEPLOY_ROUNDS" -gt 0 ] || exit 0
echo
echo "Phase 2: rolling deploy of $REPLICAS replicas (full deployments, DEPLOYEX_MIN_READY_MS=$MIN_READY_MS); under load: wrk -t1 -c$((CONNECTIONS / 2)) on each route at once"
echo
echo "| load | deploy | time (s) | status req/s | status p99 (ms) | / req/s | / p99 (ms) | not 200 / socket errors |"
echo "|---|---|---|---|---|---|---|---|"
sum_none=0
n_none=0
sum_load=0
n_load=0
for row in "${P2[@]}"; do
  read -r mode from to secs rps_a p99_a rps_b p99_b fails <<<"$row"
  echo "| $mode | $from → $to | $secs | $rps_a | $p99_a | $rps_b | $p99_b | $fails |"
  if [ "$mode" = none ]; then
    sum_none=$(awk -v a="$sum_none" -v b="$secs" 'BEGIN { print a + b }')
    n_none=$((n_none + 1))
  else
    sum_load=$(awk -v a="$sum_load" -v b="$secs" 'BEGIN { print a + b }')
    n_load=$((n_load + 1))
  fi
done
echo
awk -v sn="$sum_none" -v nn="$n_none" -v sl="$sum_load" -v nl="$n_load" 'BEGIN {
  a = sn / nn; b = sl / nl
  printf "Mean deploy time: %.2f s without load, %.2f s with load (%+.1f %%; target within 10 %%)\n", a, b, (b - a) / a * 100
}'
if [ "$P2_FAIL" != 0 ]; then
  echo "FAILED: some requests failed during a deploy (see the table)"
  exit 1
fi
