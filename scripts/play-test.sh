#!/usr/bin/env bash
# The browser demo (served by the WebSocket listener, on the TypeScript
# client) in a real headless Chromium (tests/browser/play.test.mjs): two
# pages see each other and chat; one page's network is cut (a proxy resets
# and refuses its connections) and restored, and it resumes with every line
# typed offline delivered once.
#
#   scripts/play-test.sh [SERVER_BINARY]
#
# The server runs on free loopback ports, on the smallest map.
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
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
python="${PYTHON:-python3}"

log() { echo "play-test: $*" >&2; }

[[ -x "$server" ]] || { log "no binary at $server (cargo build -p tether-server)"; exit 2; }
command -v node >/dev/null || { log "needs node (>= 20)"; exit 2; }
[[ -x "$CHROMIUM" ]] || { log "needs Chromium at $CHROMIUM (apt-get install chromium)"; exit 2; }
if [[ ! -d "$root/tests/browser/node_modules/playwright-core" ]]; then
    log "installing the test's npm packages (npm ci)"
    (cd "$root/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
fi

tmp="$(mktemp -d -t tether-play.XXXXXX)"
server_pid=""
watchdog_pid=""
cleanup() {
    stop "$server_pid"
    [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_watchdog play-test 300

start_server() {
    read -r game_port admin_port < <(pick_ports)
    read -r ws_port _ < <(pick_ports)
    rm -rf "$tmp/data"
    RUST_BACKTRACE=1 "$server" --listen "127.0.0.1:$game_port" --admin-listen "127.0.0.1:$admin_port" \
        --ws-listen "127.0.0.1:$ws_port" --data-dir "$tmp/data" --world-players 4 \
        --log warn >"$tmp/server.log" 2>&1 &
    server_pid=$!
    wait_healthz "$admin_port" "$server_pid"
}
start_with_retries start_server "$tmp/server.log"

log "the demo at http://127.0.0.1:$ws_port/"
status=0
export TETHER_WS="127.0.0.1:$ws_port"
(cd "$root/tests/browser" && node play.test.mjs) || status=1

if [[ "$status" != 0 ]]; then
    log "FAILED; server log (tail):"
    tail -20 "$tmp/server.log" >&2 || true
    exit 1
fi
kill -0 "$server_pid" 2>/dev/null || { log "FAILED: the server died"; tail -20 "$tmp/server.log" >&2; exit 1; }
log "passed"
