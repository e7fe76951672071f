#!/usr/bin/env bash
# The admin console in a real headless Chromium and MCP over streamable HTTP
# with the official MCP TypeScript SDK, against a running server while bots
# play (tests/browser/).
#
#   scripts/console-test.sh [SERVER_BINARY [BOTS_BINARY]]
#
# A server is started on free loopback ports with random viewer and operator
# tokens and a sample every second; 30 bots play; then
#   tests/browser/console.test.mjs: a wrong token refused, the operator sees
#     players and graphs and kicks one (audited), the viewer's kick refused;
#   tests/browser/mcp-http.test.mjs: a viewer lists and calls the read-only
#     tools only, an operator also the write tools (audited).
#
# Needs node (>= 20) with npm, and Chromium (Debian: apt-get install
# chromium; CHROMIUM=/path overrides). Installs the test's npm packages
# (package-lock.json) when missing. Screenshots go to SHOTS when set.
# Exit status: 0 passed, 1 a test failed, 2 could not run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
source "$root/scripts/common.sh"
target="${CARGO_TARGET_DIR:-$root/target}"
server="${1:-$target/debug/tether}"
bots="${2:-$target/debug/tether-bots}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
python="${PYTHON:-python3}"
players=30

log() { echo "console-test: $*" >&2; }

for bin in "$server" "$bots"; do
    [[ -x "$bin" ]] || { log "no binary at $bin (cargo build -p tether-server -p tether-bots)"; exit 2; }
done
command -v node >/dev/null || { log "needs node (>= 20)"; exit 2; }
[[ -x "$CHROMIUM" ]] || { log "needs Chromium at $CHROMIUM (apt-get install chromium)"; exit 2; }
if [[ ! -d "$root/tests/browser/node_modules/playwright-core" || ! -d "$root/tests/browser/node_modules/@modelcontextprotocol/sdk" ]]; then
    log "installing the test's npm packages (npm ci)"
    (cd "$root/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
fi

tmp="$(mktemp -d -t tether-console.XXXXXX)"
server_pid=""
bots_pid=""
watchdog_pid=""
cleanup() {
    stop "$bots_pid"
    stop "$server_pid"
    [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_watchdog console-test 300

token() { "$python" -c 'import secrets; print(secrets.token_hex(16))'; }
viewer="$(token)"
operator="$(token)"

start_server() {
    read -r game_port admin_port < <(pick_ports)
    rm -rf "$tmp/data"
    RUST_BACKTRACE=1 "$server" --listen "127.0.0.1:$game_port" --admin-listen "127.0.0.1:$admin_port" \
        --data-dir "$tmp/data" --admin-viewer-token "$viewer" --admin-operator-token "$operator" \
        --admin-history-interval-ms 1000 --log warn >"$tmp/server.log" 2>&1 &
    server_pid=$!
    wait_healthz "$admin_port" "$server_pid"
}
start_with_retries start_server "$tmp/server.log"

log "$players bots playing; console and MCP at http://127.0.0.1:$admin_port/"
"$bots" --addr "127.0.0.1:$game_port" --clients "$players" --ramp 2 --duration 120 --quiet \
    >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!

status=0
export TETHER_ADMIN="127.0.0.1:$admin_port" TETHER_VIEWER_TOKEN="$viewer" TETHER_OPERATOR_TOKEN="$operator"
(cd "$root/tests/browser" && node console.test.mjs) || status=1
(cd "$root/tests/browser" && node mcp-http.test.mjs) || status=1

if [[ "$status" != 0 ]]; then
    log "FAILED; server log (tail):"
    tail -20 "$tmp/server.log" >&2 || true
    exit 1
fi
kill -0 "$server_pid" 2>/dev/null || { log "FAILED: the server died"; tail -20 "$tmp/server.log" >&2; exit 1; }
log "passed"
