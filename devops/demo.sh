#!/usr/bin/env bash
# The README's demo: builds a real demo release (Debian's elixir), publishes
# 0.1.0 to the local release store under /tmp, and runs deployex with 3
# replicas and the dashboard on http://localhost:5001 (admin / deployex).
set -euo pipefail
cd "$(dirname "$0")/.."

app=${DEPLOYEX_MONITORED_APP_NAME:-myphoenixapp}
releases=/tmp/deployex-demo-releases
store=${DEPLOYEX_RELEASE_DIR:-/tmp/$app}

echo "demo: building the demo releases of '$app' (cached after the first run)..."
bash tests/fixtures/build.sh --app "$app" --out "$releases"

mkdir -p "$store/dist/$app" "$store/versions/$app/local"
cp "$releases/$app-0.1.0.tar.gz" "$store/dist/$app/"
tmp=$(mktemp "$store/versions/$app/local/.current.json.XXXXXX")
echo '{"version": "0.1.0", "pre_commands": [], "hash": "local"}' > "$tmp"
mv "$tmp" "$store/versions/$app/local/current.json"

cat <<TXT
demo: published $app 0.1.0 to $store
demo: dashboard on http://localhost:5001 (admin / deployex); API: see README
demo: to publish the next version from another terminal:
        cp $releases/$app-0.1.1.tar.gz $store/dist/$app/
        echo '{"version":"0.1.1","pre_commands":[],"hash":"local"}' > $store/versions/$app/local/current.json
TXT

cargo build --bin deployex
exec env DEPLOYEX_MONITORED_APP_NAME="$app" DEPLOYEX_RELEASE_DIR="$store" target/debug/deployex
