#!/usr/bin/env bash
# Runs the Python client against a real Tether server.
#
#   clients/python/test_against_server.sh [SERVER_BINARY] [-- extra client args]
#
# SERVER_BINARY defaults to target/debug/tether (this script builds nothing).
# The server gets free loopback ports and a temporary data directory, and is
# always stopped on exit. Then the cluster drills (test_cluster.sh: REDIRECT
# at login and a player moved between two servers), which need PostgreSQL
# and NATS (TETHER_TEST_POSTGRES and TETHER_TEST_NATS) and are skipped with a
# message without them. Exits with the client's status (2 if a server could
# not be started).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
server="${1:-$root/target/debug/tether}"
shift || true
[[ "${1:-}" == "--" ]] && shift
python="${PYTHON:-python3}"
# shellcheck source=../../scripts/common.sh
source "$root/scripts/common.sh"

if [[ ! -x "$server" ]]; then
    echo "test_against_server: no server binary at $server (build it first: cargo build -p tether-server --bin tether)" >&2
    exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-pytest.XXXXXX")"
server_pid=""
client_pid=""
stop_server() {
    stop "$server_pid"
    server_pid=""
}
cleanup() {
    if [[ -n "$client_pid" ]]; then
        kill -TERM "$client_pid" 2>/dev/null || true
        wait "$client_pid" 2>/dev/null || true
    fi
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


start_server() {
    # A restart keeps the ports (the client comes back to the same address).
    [[ "${1:-}" == "--same-ports" ]] || read -r game_port admin_port < <(pick_ports)
    RUST_BACKTRACE=0 "$server" --listen "127.0.0.1:$game_port" --admin-listen "127.0.0.1:$admin_port" \
        --data-dir "$tmp/data" --log warn >"$tmp/server.log" 2>&1 &
    server_pid=$!
    # Ready once the game port accepts connections; failed if the server exits.
    for _ in $(seq 1 100); do
        kill -0 "$server_pid" 2>/dev/null || return 1
        if "$python" -c "import socket; socket.create_connection(('127.0.0.1', $game_port), 0.2).close()" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

ready=0
for attempt in 1 2 3; do
    if start_server; then
        ready=1
        break
    fi
    echo "test_against_server: server start $attempt failed:" >&2
    sed 's/^/  server: /' "$tmp/server.log" | head -5 >&2 || true
    stop_server
done
if [[ "$ready" != 1 ]]; then
    echo "test_against_server: the server did not start" >&2
    exit 2
fi

# The client runs in the background and is waited for, so that a signal to
# this script runs the traps at once (bash defers them during a foreground job).
status=0
"$python" "$here/tether_client.py" --addr "127.0.0.1:$game_port" --name PyBot --seconds 5 "$@" &
client_pid=$!
wait "$client_pid" || status=$?
client_pid=""
if [[ "$status" != 0 ]]; then
    echo "test_against_server: client failed with status $status; server log:" >&2
    sed 's/^/  server: /' "$tmp/server.log" >&2 || true
    exit "$status"
fi

# The restart drill: the client plays, the server is stopped (SIGTERM) and
# started again on the same address and data; the client must be told to
# come back and get its session back by itself.
echo "---- restart drill ----"
marker="$tmp/restart-now"
"$python" "$here/tether_client.py" --addr "127.0.0.1:$game_port" --name PyDrill \
    --restart-drill "$marker" &
client_pid=$!
for _ in $(seq 1 100); do
    [[ -e "$marker" ]] && break
    kill -0 "$client_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -e "$marker" ]]; then
    echo "test_against_server: the drill client did not get ready" >&2
    exit 1
fi
kill -TERM "$server_pid"
for _ in $(seq 1 150); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
wait "$server_pid" 2>/dev/null || true
server_pid=""
mv "$tmp/server.log" "$tmp/server-before.log"
if ! start_server --same-ports; then
    echo "test_against_server: the server did not start again" >&2
    sed 's/^/  server: /' "$tmp/server.log" >&2 || true
    exit 2
fi
wait "$client_pid" || status=$?
client_pid=""
if [[ "$status" != 0 ]]; then
    echo "test_against_server: restart drill failed with status $status; server logs:" >&2
    sed 's/^/  server: /' "$tmp/server-before.log" "$tmp/server.log" >&2 || true
    exit "$status"
fi
stop_server

echo "---- cluster drills ----"
"$here/test_cluster.sh" "$server" &
client_pid=$!
wait "$client_pid" || status=$?
client_pid=""
exit "$status"
