#!/usr/bin/env bash
# The TypeScript client's checks, as CI runs them:
#   clients/ts/test.sh [SERVER_BINARY]
# installs its npm packages (package-lock.json), regenerates src/gen/ from
# proto/ and fails if the committed files differ, type-checks and builds,
# checks that the browser demo's bundle (crates/server/play/tether-client.js)
# is current, then runs the tests against a real server (default
# target/debug/tether).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$root/target}/debug/tether}"
[[ -x "$bin" ]] || { echo "ts-client: no server binary at $bin (cargo build -p tether-server)" >&2; exit 2; }
# Absolute: the tests run from this folder.
TETHER_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
export TETHER_BIN
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
npm run --silent generate
if ! git -C "$root" diff --exit-code -- clients/ts/src/gen; then
    echo "ts-client: src/gen/ is not what proto/ generates: run npm run generate and commit" >&2
    exit 1
fi
npm run --silent build
npm run --silent bundle >/dev/null
if ! git -C "$root" diff --exit-code -- crates/server/play/tether-client.js; then
    echo "ts-client: crates/server/play/tether-client.js is not the current bundle: run npm run bundle and commit" >&2
    exit 1
fi
timeout 300 npm test
