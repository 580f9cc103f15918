#!/usr/bin/env bash
# deployex installer for Ubuntu 20.04 / 22.04 / 24.04 (x86_64, systemd).
#
#   deployex.sh --install CONFIG   install (or re-install: idempotent) and start
#   deployex.sh --update CONFIG    replace the binary, rewrite config, restart
#   deployex.sh --uninstall [--purge]
#
# CONFIG is JSON (example: deployex-config.json next to this script), parsed
# with jq (installed with apt-get when missing). The systemd unit and the
# logrotate rule are templates shipped in the release tarball
# (devops/systemd/deployex.service, devops/logrotate/deployex): one source of
# truth, versioned with the binary. When the tarball lacks them, the copies
# next to this script (../systemd, ../logrotate) are used.
#
# --root DIR prefixes every path with DIR (tests) and, like
# DEPLOYEX_INSTALLER_DRY_RUN=1, echoes instead of running the privileged
# system commands (useradd, chown, systemctl).
set -euo pipefail

readonly TARGET="x86_64-unknown-linux-gnu"
readonly SERVICE="deployex.service"
readonly USER_NAME="deployex"
# The apps' own user (CONFIG "app_user"; "" runs them as deployex).
readonly DEFAULT_APP_USER="deployex-app"
# What deployex (User=deployex) needs to run the apps as that user; the
# unit grants exactly these (deployex refuses to start without them).
readonly APP_USER_CAPS="CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_KILL CAP_SETGID CAP_SETUID CAP_SYS_PTRACE"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

ROOT=""
MODE=""
CONFIG=""
PURGE=0
DRY_RUN="${DEPLOYEX_INSTALLER_DRY_RUN:-0}"
WORK=""

usage() {
  cat <<EOF
Usage: $(basename "$0") --install CONFIG | --update CONFIG | --uninstall [--purge] | --help
                  [--root DIR]

  --install CONFIG  create the deployex user and the apps' user (deployex-app),
                    folders, binary, environment file
                    /etc/deployex/deployex.env, systemd unit and logrotate rule
                    from the JSON CONFIG, then enable and (re)start deployex.
                    Safe to run again: files are rewritten identically and
                    generated secrets are kept.
  --update CONFIG   same as --install on an installed host: replaces the binary
                    (the old one is kept as deployex.previous) and restarts
                    deployex; the application instances keep running and are
                    adopted (KillMode=process, DEPLOYEX_STOP_APPS_ON_EXIT=false).
  --uninstall       stop and disable deployex and its instances, remove the unit,
                    /opt/deployex, /etc/deployex and the logrotate rule. State
                    (/var/lib/deployex) and logs are kept unless --purge is given
                    (which also removes the deployex and deployex-app users).
  --root DIR        operate under DIR instead of / (tests); system commands
                    (useradd, chown, systemctl) are echoed, not run.
  --help            this text.

Environment: DEPLOYEX_INSTALLER_DRY_RUN=1 echoes the system commands instead of
running them (files are still written under --root, default /).
The release tarball is deployex-{version}-${TARGET}.tar.gz (CONFIG "release":
a local path or an https URL; "{version}" is replaced by "deployex_version").
EOF
}

log() { echo "deployex-installer: $*"; }
die() {
  echo "deployex-installer: error: $*" >&2
  exit 1
}

# A system command with effects outside the files we write: echoed in dry-run.
sys() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry-run: $*"
  else
    "$@"
  fi
}

p() { printf '%s%s' "$ROOT" "$1"; }

cleanup() {
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

parse_args() {
  [ $# -gt 0 ] || {
    usage >&2
    exit 2
  }
  while [ $# -gt 0 ]; do
    case "$1" in
      --install | --update)
        [ -z "$MODE" ] || die "only one of --install, --update, --uninstall"
        MODE="${1#--}"
        [ $# -ge 2 ] || die "$1 needs a CONFIG file"
        CONFIG="$2"
        shift 2
        ;;
      --uninstall)
        [ -z "$MODE" ] || die "only one of --install, --update, --uninstall"
        MODE="uninstall"
        shift
        ;;
      --purge)
        PURGE=1
        shift
        ;;
      --root)
        [ $# -ge 2 ] || die "--root needs a directory"
        ROOT="${2%/}"
        shift 2
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *)
        usage >&2
        die "unknown argument: $1"
        ;;
    esac
  done
  [ -n "$MODE" ] || die "one of --install, --update, --uninstall is required"
  if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
    DRY_RUN=1
  fi
  if [ "$DRY_RUN" != 1 ] && [ "$(id -u)" != 0 ]; then
    die "must run as root (sudo $0 ...)"
  fi
}

check_os() {
  [ -z "$ROOT" ] || return 0
  local id="" version=""
  if [ -r /etc/os-release ]; then
    # shellcheck source=/dev/null
    id="$(. /etc/os-release && echo "${ID:-}")"
    # shellcheck source=/dev/null
    version="$(. /etc/os-release && echo "${VERSION_ID:-}")"
  fi
  case "$id:$version" in
    ubuntu:20.04 | ubuntu:22.04 | ubuntu:24.04) ;;
    *) log "warning: tested on Ubuntu 20.04, 22.04, 24.04; this is ${id:-unknown} ${version:-}" ;;
  esac
  command -v systemctl >/dev/null 2>&1 || [ "$DRY_RUN" = 1 ] || die "systemctl not found: deployex needs systemd"
}

need_jq() {
  command -v jq >/dev/null 2>&1 && return 0
  if [ "$DRY_RUN" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing jq"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null ||
      die "cannot install jq (apt-get install jq); it is needed to read $CONFIG"
    return 0
  fi
  die "jq is required to read $CONFIG: apt-get install jq"
}

# Read a scalar from CONFIG; empty when missing or null. Objects/arrays fail.
cfg() {
  local v
  v="$(jq -r --arg k "$1" '.[$k] // empty | if type == "object" or type == "array" then error("\($k) must be a string, number or boolean") else tostring end' "$CONFIG")" ||
    die "$CONFIG: cannot read \"$1\""
  printf '%s' "$v"
}

cfg_secret() {
  jq -r --arg k "$1" '(.secrets // {})[$k] // empty | tostring' "$CONFIG" || die "$CONFIG: cannot read secrets.$1"
}

valid_value() { # name value: one line, no single quote (systemd and bash quoting)
  case "$2" in
    *"'"* | *$'\n'* | *$'\r'*) die "$CONFIG: $1 must not contain a single quote or a line break" ;;
  esac
}

valid_path() { # name value
  [[ "$2" =~ ^/[A-Za-z0-9._/-]*$ ]] || die "$CONFIG: $1=\"$2\" must be an absolute path of letters, digits, . _ - /"
}

valid_number() { # name value
  [[ "$2" =~ ^[0-9]+$ ]] || die "$CONFIG: $1=\"$2\" must be a whole number"
}

load_config() {
  [ -f "$CONFIG" ] || die "config file $CONFIG not found"
  jq -e 'type == "object"' "$CONFIG" >/dev/null 2>&1 || die "$CONFIG is not a JSON object"

  jq -e '(.env // {} | type) == "object"' "$CONFIG" >/dev/null || die "$CONFIG: \"env\" must be an object of variables"
  jq -e '(.secrets // {} | type) == "object"' "$CONFIG" >/dev/null || die "$CONFIG: \"secrets\" must be an object"
  jq -e '(.read_write_paths // [] | type) == "array"' "$CONFIG" >/dev/null || die "$CONFIG: \"read_write_paths\" must be a list of paths"

  # Values are written single-quoted (literal for systemd and bash alike).
  local re bad
  re="['"$'\n'$'\r'"]"
  bad="$(jq -r --arg re "$re" '([paths(type == "string" and test($re))] | first) // empty | map(tostring) | join(".")' "$CONFIG")"
  [ -z "$bad" ] || die "$CONFIG: $bad must not contain a single quote or a line break"

  # "apps": several applications (a list of objects); the first names the
  # unit's log dir and secrets. Without it, the single-app form.
  MULTI=0
  if jq -e 'has("apps")' "$CONFIG" >/dev/null; then
    jq -e '(.apps | type) == "array" and (.apps | length) > 0 and all(.apps[]; type == "object" and ((.env // {}) | type) == "object")' "$CONFIG" >/dev/null ||
      die "$CONFIG: \"apps\" must be a non-empty list of objects (each with app_name; env an object)"
    MULTI=1
    APP="$(jq -r '.apps[0].app_name // empty | tostring' "$CONFIG")"
  else
    APP="$(cfg app_name)"
  fi
  [[ "$APP" =~ ^[a-z][a-z0-9_]{0,63}$ ]] ||
    die "$CONFIG: app_name=\"$APP\" must be a release name: lower-case letters, digits and _, starting with a letter"
  CLOUD_ENV="$(cfg cloud_environment)"
  CLOUD_ENV="${CLOUD_ENV:-prod}"
  [[ "$CLOUD_ENV" =~ ^[A-Za-z0-9_-]+$ ]] || die "$CONFIG: cloud_environment=\"$CLOUD_ENV\" must be letters, digits, - and _"
  REPLICAS="$(cfg replicas)"
  REPLICAS="${REPLICAS:-3}"
  valid_number replicas "$REPLICAS"

  VERSION="$(cfg deployex_version)"
  RELEASE="$(cfg release)"
  [ -n "$RELEASE" ] || die "$CONFIG: \"release\" (path or https URL of deployex-{version}-${TARGET}.tar.gz) is required"
  if [[ "$RELEASE" == *"{version}"* ]]; then
    [ -n "$VERSION" ] || die "$CONFIG: release contains {version} but deployex_version is not set"
    RELEASE="${RELEASE//\{version\}/$VERSION}"
  fi
  RELEASE_SHA256="$(cfg release_sha256)"

  OTP_TLS="$(cfg otp_tls_cert_path)"
  [ -z "$OTP_TLS" ] || valid_path otp_tls_cert_path "$OTP_TLS"
  RELEASE_DIR="$(cfg release_dir)"
  # app_user: missing = the default user, "" = the apps run as deployex.
  if jq -e 'has("app_user")' "$CONFIG" >/dev/null; then
    APP_USER="$(cfg app_user)"
  else
    APP_USER="$DEFAULT_APP_USER"
  fi
  [ -z "$APP_USER" ] || [[ "$APP_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] ||
    die "$CONFIG: app_user=\"$APP_USER\" must be a user name (lower-case letters, digits, _ and -), or \"\" to run the apps as deployex"
  if [ "$APP_USER" = "$USER_NAME" ] || [ "$APP_USER" = root ]; then
    die "$CONFIG: app_user=\"$APP_USER\": the apps' user must not be deployex's own user nor root (\"\" runs them as deployex)"
  fi
  [ -z "$RELEASE_DIR" ] || valid_path release_dir "$RELEASE_DIR"

  EXTRA_RW=()
  local path
  while IFS= read -r path; do
    [ -n "$path" ] || continue
    valid_path read_write_paths "$path"
    EXTRA_RW+=("$path")
  done < <(jq -r '(.read_write_paths // [])[] | tostring' "$CONFIG")

  # The extra environment: exported to deployex, inherited by the instances.
  EXTRA_KEYS=()
  local key
  while IFS= read -r key; do
    [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$CONFIG: env key \"$key\" is not a variable name"
    EXTRA_KEYS+=("$key")
  done < <(jq -r '(.env // {}) | keys_unsorted[]' "$CONFIG")
}

# The value of KEY in the currently installed environment file, if any.
installed_value() {
  local file
  file="$(p /etc/deployex/deployex.env)"
  [ -f "$file" ] || return 0
  sed -n "s/^$1='\\(.*\\)'\$/\\1/p" "$file" | tail -n 1
}

random_hex() { # bytes
  od -An -vtx1 -N "$1" /dev/urandom | tr -d ' \n'
}

fetch_release() {
  WORK="$(mktemp -d)"
  local tarball="$WORK/release.tar.gz"
  case "$RELEASE" in
    https://*)
      log "downloading $RELEASE"
      curl -fsSL --proto '=https' --retry 3 -o "$tarball" "$RELEASE" || die "cannot download $RELEASE"
      ;;
    http://* | ftp://*) die "release $RELEASE: only https URLs or local paths are accepted" ;;
    *)
      [ -f "$RELEASE" ] || die "release tarball $RELEASE not found"
      cp "$RELEASE" "$tarball"
      ;;
  esac
  if [ -n "$RELEASE_SHA256" ]; then
    echo "$RELEASE_SHA256  $tarball" | sha256sum -c --status - || die "release $RELEASE: sha256 mismatch (expected $RELEASE_SHA256)"
  fi
  mkdir "$WORK/x"
  tar -xzf "$tarball" -C "$WORK/x" --no-same-owner || die "release $RELEASE is not a readable .tar.gz"
  [ -f "$WORK/x/bin/deployex" ] || die "release $RELEASE has no bin/deployex"
  UNIT_TEMPLATE="$WORK/x/devops/systemd/deployex.service"
  [ -f "$UNIT_TEMPLATE" ] || UNIT_TEMPLATE="$SCRIPT_DIR/../systemd/deployex.service"
  LOGROTATE_TEMPLATE="$WORK/x/devops/logrotate/deployex"
  [ -f "$LOGROTATE_TEMPLATE" ] || LOGROTATE_TEMPLATE="$SCRIPT_DIR/../logrotate/deployex"
  [ -f "$UNIT_TEMPLATE" ] || die "no systemd unit template in the release nor in $SCRIPT_DIR/../systemd"
  [ -f "$LOGROTATE_TEMPLATE" ] || die "no logrotate template in the release nor in $SCRIPT_DIR/../logrotate"
  local err
  err="$("$WORK/x/bin/deployex" --version 2>&1 >/dev/null)" ||
    die "the release binary does not run here (x86_64 Linux, glibc at least the build host's; this host has $(ldd --version 2>/dev/null | head -n 1)): $err"
}

ensure_user() {
  if getent passwd "$USER_NAME" >/dev/null 2>&1 && [ -z "$ROOT" ]; then
    return 0
  fi
  sys useradd --system --user-group --home-dir /var/lib/deployex --no-create-home \
    --shell /usr/sbin/nologin --comment "deployex release supervisor" "$USER_NAME"
}

# The apps' user: a system user without login shell nor home, created
# when missing (an existing user of that name is used as it is).
ensure_app_user() {
  [ -n "$APP_USER" ] || return 0
  if getent passwd "$APP_USER" >/dev/null 2>&1 && [ -z "$ROOT" ]; then
    return 0
  fi
  sys useradd --system --user-group --home-dir /nonexistent --no-create-home \
    --shell /usr/sbin/nologin --comment "deployex applications" "$APP_USER"
}

# mkdir with mode and owner; owner change is a system command (dry-run aware).
make_dir() { # path mode owner
  mkdir -p "$(p "$1")"
  chmod "$2" "$(p "$1")"
  sys chown "$3" "$(p "$1")"
}

# Atomically replace DEST with the content of SRC, with mode and owner.
put_file() { # src dest mode owner
  local dest tmp
  dest="$(p "$2")"
  tmp="$(dirname "$dest")/.$(basename "$dest").new"
  mkdir -p "$(dirname "$dest")"
  cp "$1" "$tmp"
  chmod "$3" "$tmp"
  sys chown "$4" "$tmp"
  mv -f "$tmp" "$dest"
}

write_env_file() {
  local out="$WORK/deployex.env"
  local skb="" cookie="" admin="" secrets_from
  secrets_from="$(cfg_secret source)"
  case "$secrets_from" in
    "" | env) secrets_from="env" ;;
    aws)
      # deployex reads them from AWS Secrets Manager at start; a value in the
      # env file would win over the secret, so none may be written.
      [ "$CLOUD_ENV" != local ] || die "$CONFIG: secrets.source=aws needs a cloud_environment other than local"
      local k
      for k in secret_key_base erlang_cookie admin_hashed_password; do
        [ -z "$(cfg_secret "$k")" ] || die "$CONFIG: secrets.$k must be empty with secrets.source=aws (it lives in deployex-$APP-$CLOUD_ENV-secrets)"
      done
      ;;
    *) die "$CONFIG: secrets.source=\"$secrets_from\" must be env or aws" ;;
  esac
  if [ "$secrets_from" = env ]; then
    skb="$(cfg_secret secret_key_base)"
    skb="${skb:-$(installed_value DEPLOYEX_SECRET_KEY_BASE)}"
    skb="${skb:-$(random_hex 48)}"
    cookie="$(cfg_secret erlang_cookie)"
    cookie="${cookie:-$(installed_value DEPLOYEX_ERLANG_COOKIE)}"
    cookie="${cookie:-$(random_hex 32)}"
    admin="$(cfg_secret admin_hashed_password)"
    admin="${admin:-$(installed_value DEPLOYEX_ADMIN_HASHED_PASSWORD)}"
    if [ -z "$admin" ]; then
      local password pwfile
      password="$(random_hex 12)"
      admin="$(printf '%s' "$password" | "$WORK/x/bin/deployex" hash-password)" || die "cannot hash the generated admin password"
      pwfile="$WORK/admin-password"
      printf '%s\n' "$password" >"$pwfile"
      put_file "$pwfile" /etc/deployex/admin-password 0600 root:root
      log "generated the dashboard admin password: see /etc/deployex/admin-password (user admin)"
    fi
  fi

  # Base variables, in this order; a key also in CONFIG "env" is taken from there.
  # With "apps", the per-app keys live in deployex.toml's [[apps]] tables
  # (deployex refuses their variables next to [[apps]]).
  local -a base=(
    "DEPLOYEX_CLOUD_ENVIRONMENT=$CLOUD_ENV"
    "DEPLOYEX_VAR_DIR=/var/lib/deployex"
    "DEPLOYEX_LOG_DIR=/var/log/$APP"
    "DEPLOYEX_STOP_APPS_ON_EXIT=false"
  )
  [ "$MULTI" = 1 ] || base=("DEPLOYEX_MONITORED_APP_NAME=$APP" "${base[0]}" "DEPLOYEX_MONITORED_REPLICAS=$REPLICAS" "${base[@]:1}")
  [ -z "$APP_USER" ] || base+=("DEPLOYEX_APP_USER=$APP_USER")
  local field var v
  for field in release_adapter:DEPLOYEX_RELEASE_ADAPTER release_dir:DEPLOYEX_RELEASE_DIR \
    release_bucket:DEPLOYEX_RELEASE_BUCKET aws_region:AWS_REGION \
    app_port:DEPLOYEX_MONITORED_APP_PORT phx_host:DEPLOYEX_PHX_HOST phx_port:DEPLOYEX_PHX_PORT \
    bind_addr:DEPLOYEX_BIND_ADDR deploy_timeout_rollback_ms:DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS \
    deploy_schedule_interval_ms:DEPLOYEX_DEPLOY_SCHEDULE_INTERVAL_MS \
    otp_tls_cert_path:DEPLOYEX_OTP_TLS_CERT_PATH; do
    var="${field#*:}"
    if [ "$MULTI" = 1 ]; then
      case "$var" in
        DEPLOYEX_RELEASE_* | DEPLOYEX_MONITORED_APP_PORT | DEPLOYEX_DEPLOY_TIMEOUT_ROLLBACK_MS) continue ;;
      esac
    fi
    v="$(cfg "${field%%:*}")"
    [ -z "$v" ] || base+=("$var=$v")
  done
  if [ "$secrets_from" = env ]; then
    base+=(
      "DEPLOYEX_SECRET_KEY_BASE=$skb"
      "DEPLOYEX_ERLANG_COOKIE=$cookie"
      "DEPLOYEX_ADMIN_HASHED_PASSWORD=$admin"
    )
  fi

  {
    echo "# Written by devops/installer/deployex.sh from $(basename "$CONFIG"); rewritten on"
    echo "# --install/--update: change the JSON config, not this file. Single quotes: literal"
    echo "# values for systemd's EnvironmentFile= and for bash alike."
    local entry key k overridden
    for entry in "${base[@]}"; do
      key="${entry%%=*}"
      overridden=0
      for k in "${EXTRA_KEYS[@]}"; do [ "$k" = "$key" ] && overridden=1; done
      [ "$overridden" = 1 ] && continue
      valid_value "$key" "${entry#*=}"
      printf "%s='%s'\n" "$key" "${entry#*=}"
    done
    if [ "${#EXTRA_KEYS[@]}" -gt 0 ]; then
      echo "# CONFIG env: also inherited by the application instances"
      for key in "${EXTRA_KEYS[@]}"; do
        v="$(jq -r --arg k "$key" '.env[$k] | if type == "object" or type == "array" then error("not a scalar") elif . == null then "" else tostring end' "$CONFIG")" ||
          die "$CONFIG: env.$key must be a string, number or boolean"
        valid_value "env.$key" "$v"
        printf "%s='%s'\n" "$key" "$v"
      done
    fi
  } >"$out"
  put_file "$out" /etc/deployex/deployex.env 0600 "root:root"
}

# A scalar of apps[$1]: its own key $2, else the top-level one.
app_cfg() {
  local v
  # (`has`, not `//`: a `false` of the app's own is a value, not "unset".)
  v="$(jq -r --argjson i "$1" --arg k "$2" '(if (.apps[$i] | has($k)) then .apps[$i][$k] elif has($k) then .[$k] else null end) | select(. != null) | if type == "object" or type == "array" then error("apps[\($i)].\($k) must be a string, number or boolean") else tostring end' "$CONFIG")" ||
    die "$CONFIG: cannot read apps[$1].$2"
  printf '%s' "$v"
}

# With "apps": /etc/deployex/deployex.toml, one [[apps]] table each (values
# as TOML literal strings: no quote nor line break, checked in load_config).
write_toml_file() {
  local out="$WORK/deployex.toml" n i name field key v names=" "
  n="$(jq '.apps | length' "$CONFIG")"
  {
    echo "# Written by devops/installer/deployex.sh from $(basename "$CONFIG"); rewritten on"
    echo "# --install/--update: change the JSON config, not this file."
    for ((i = 0; i < n; i++)); do
      name="$(jq -r --argjson i "$i" '.apps[$i].app_name // empty | tostring' "$CONFIG")"
      [[ "$name" =~ ^[a-z][a-z0-9_]{0,63}$ ]] ||
        die "$CONFIG: apps[$i].app_name=\"$name\" must be a release name: lower-case letters, digits and _, starting with a letter"
      [[ "$names" != *" $name "* ]] || die "$CONFIG: apps[$i].app_name=\"$name\" is listed twice"
      names+="$name "
      echo
      echo "[[apps]]"
      echo "monitored_app_name = '$name'"
      # Every per-app key deployex takes in [[apps]] (src/config/apps.rs
      # PER_APP); deployex's own check-config validates the values.
      for field in replicas:monitored_replicas app_port:monitored_app_port \
        deploy_timeout_rollback_ms:deploy_timeout_rollback_ms \
        min_ready_ms:min_ready_ms rollback_crashes:rollback_crashes \
        watchdog_atoms_pct:watchdog_atoms_pct watchdog_memory_mb:watchdog_memory_mb \
        watchdog_ports_pct:watchdog_ports_pct watchdog_processes_pct:watchdog_processes_pct \
        liveness_failures:liveness_failures liveness_interval_ms:liveness_interval_ms; do
        v="$(app_cfg "$i" "${field%%:*}")"
        [ -n "$v" ] || continue
        valid_number "apps[$i].${field%%:*}" "$v"
        echo "${field#*:} = $v"
      done
      for key in release_adapter release_dir release_bucket health_path \
        otp_readiness deploy_strategy watchdog_action; do
        v="$(app_cfg "$i" "$key")"
        [ -n "$v" ] || continue
        valid_value "apps[$i].$key" "$v"
        echo "$key = '$v'"
      done
      if jq -e --argjson i "$i" '(.apps[$i].env // {}) | length > 0' "$CONFIG" >/dev/null; then
        echo "[apps.env]"
        while IFS= read -r key; do
          [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$CONFIG: apps[$i].env key \"$key\" is not a variable name"
          v="$(jq -r --argjson i "$i" --arg k "$key" '.apps[$i].env[$k] | if type == "object" or type == "array" then error("not a scalar") elif . == null then "" else tostring end' "$CONFIG")" ||
            die "$CONFIG: apps[$i].env.$key must be a string, number or boolean"
          echo "$key = '$v'"
        done < <(jq -r --argjson i "$i" '.apps[$i].env | keys_unsorted[]' "$CONFIG")
      fi
    done
  } >"$out"
  # Read by deployex itself (its user); [apps.env] may hold credentials.
  put_file "$out" /etc/deployex/deployex.toml 0640 "root:$USER_NAME"
}

render() { # template dest mode
  local out="$WORK/rendered" extra="" path caps=""
  for path in "${EXTRA_RW[@]}"; do extra+=" $path"; done
  [ -z "$APP_USER" ] || caps="$APP_USER_CAPS"
  local config_arg=""
  [ "$MULTI" = 0 ] || config_arg=" --config /etc/deployex/deployex.toml"
  sed -e "s|@CONFIG_ARG@|$config_arg|g" -e "s|@APP@|$APP|g" -e "s|@EXTRA_RW_PATHS@|$extra|g" -e "s|@CAPABILITIES@|$caps|g" "$1" >"$out"
  put_file "$out" "$2" "$3" root:root
}

install_binary() {
  local bin new
  bin="$(p /opt/deployex/bin/deployex)"
  if [ -f "$bin" ] && cmp -s "$bin" "$WORK/x/bin/deployex"; then
    log "binary unchanged"
  else
    if [ -f "$bin" ]; then
      cp -p "$bin" "$bin.previous"
    fi
    new="$(dirname "$bin")/.deployex.new"
    cp "$WORK/x/bin/deployex" "$new"
    chmod 0755 "$new"
    sys chown root:root "$new"
    mv -f "$new" "$bin" # rename: a running deployex keeps its old inode
    log "installed $(p /opt/deployex/bin/deployex)"
  fi
  local f
  for f in README.md LICENSE; do
    [ ! -f "$WORK/x/$f" ] || put_file "$WORK/x/$f" "/opt/deployex/$f" 0644 root:root
  done
  put_file "${BASH_SOURCE[0]}" /opt/deployex/deployex.sh 0755 root:root
}

# deployex check-config with the environment file, as systemd would pass it.
check_config() {
  local out unset_user="" config_args=()
  [ "$MULTI" = 0 ] || config_args=(--config "$(p /etc/deployex/deployex.toml)")
  if [ -n "$APP_USER" ] && ! getent passwd "$APP_USER" >/dev/null 2>&1; then
    # Dry run: useradd was only echoed, so the user cannot be looked up.
    unset_user="DEPLOYEX_APP_USER"
    log "dry-run: $APP_USER does not exist here; check-config runs without DEPLOYEX_APP_USER"
  fi
  # shellcheck source=/dev/null
  if ! out="$(set -a && . "$(p /etc/deployex/deployex.env)" && set +a && if [ -n "$unset_user" ]; then unset "$unset_user"; fi && "$(p /opt/deployex/bin/deployex)" "${config_args[@]}" check-config 2>&1)"; then
    echo "$out" >&2
    die "deployex check-config rejected the configuration (fix $CONFIG and run again)"
  fi
  log "configuration checked by deployex check-config"
}

do_install() {
  need_jq
  load_config
  if [ "$MODE" = update ] && [ ! -f "$(p /opt/deployex/bin/deployex)" ]; then
    die "deployex is not installed here: use --install"
  fi
  fetch_release
  ensure_user
  ensure_app_user

  make_dir /opt/deployex 0755 root:root
  make_dir /opt/deployex/bin 0755 root:root
  make_dir /etc/deployex 0750 "root:$USER_NAME"
  make_dir /var/lib/deployex 0750 "$USER_NAME:$USER_NAME"
  make_dir /var/log/deployex 0750 "$USER_NAME:$USER_NAME"
  make_dir "/var/log/$APP" 0750 "$USER_NAME:$USER_NAME"
  [ -z "$RELEASE_DIR" ] || make_dir "$RELEASE_DIR" 0755 "$USER_NAME:$USER_NAME"
  local path
  for path in "${EXTRA_RW[@]}"; do
    [ -d "$(p "$path")" ] || make_dir "$path" 0750 "$USER_NAME:$USER_NAME"
  done
  if [ -n "$OTP_TLS" ] && [ ! -d "$(p "$OTP_TLS")" ]; then
    log "warning: otp_tls_cert_path $OTP_TLS does not exist yet (needs ca.crt, deployex.crt, deployex.key)"
  fi

  install_binary
  write_env_file
  if [ "$MULTI" = 1 ]; then
    write_toml_file
  else
    rm -f "$(p /etc/deployex/deployex.toml)"
  fi
  render "$UNIT_TEMPLATE" "/etc/systemd/system/$SERVICE" 0644
  render "$LOGROTATE_TEMPLATE" /etc/logrotate.d/deployex 0644
  check_config

  sys systemctl daemon-reload
  sys systemctl enable "$SERVICE"
  # restart = start when stopped; running instances survive it (KillMode=process).
  sys systemctl restart "$SERVICE"
  log "$MODE done: $APP x$REPLICAS ($CLOUD_ENV); logs in /var/log/deployex and /var/log/$APP"
}

do_uninstall() {
  local app app_user
  app="$(installed_value DEPLOYEX_MONITORED_APP_NAME)"
  # With "apps" the env file names no app: the log dir names the first.
  if [ -z "$app" ]; then
    app="$(installed_value DEPLOYEX_LOG_DIR)"
    app="${app#/var/log/}"
    [[ "$app" =~ ^[a-z][a-z0-9_]{0,63}$ ]] || app=""
  fi
  app_user="$(installed_value DEPLOYEX_APP_USER)"
  if [ -f "$(p "/etc/systemd/system/$SERVICE")" ]; then
    sys systemctl disable --now "$SERVICE" || true
    # The instances outlive deployex by design (KillMode=process): stop them too.
    # --kill-who: systemd < 252 (Ubuntu 20.04: 245, 22.04: 249) does not know
    # its newer name --kill-whom; 252+ still accepts the old one.
    sys systemctl kill --kill-who=all --signal=SIGTERM "$SERVICE" 2>/dev/null || true
  fi
  rm -f "$(p "/etc/systemd/system/$SERVICE")" "$(p /etc/logrotate.d/deployex)"
  rm -rf "$(p /opt/deployex)" "$(p /etc/deployex)"
  sys systemctl daemon-reload
  if [ "$PURGE" = 1 ]; then
    rm -rf "$(p /var/lib/deployex)" "$(p /var/log/deployex)"
    if [ -n "$app" ]; then rm -rf "$(p "/var/log/$app")"; fi
    if [ -n "$ROOT" ] || getent passwd "$USER_NAME" >/dev/null 2>&1; then
      sys userdel "$USER_NAME" || true
    fi
    # Only the user the installer creates by default: a user the operator
    # named may be used elsewhere.
    if [ "$app_user" = "$DEFAULT_APP_USER" ] && { [ -n "$ROOT" ] || getent passwd "$app_user" >/dev/null 2>&1; }; then
      sys userdel "$app_user" || true
    fi
    log "uninstalled and purged state, logs and the $USER_NAME user"
  else
    log "uninstalled; kept /var/lib/deployex and logs (--purge removes them)"
  fi
}

main() {
  parse_args "$@"
  check_os
  case "$MODE" in
    install | update) do_install ;;
    uninstall) do_uninstall ;;
  esac
}

main "$@"
