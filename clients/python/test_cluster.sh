#!/usr/bin/env bash
# Runs the Python client's cluster drills (test_cluster.py: REDIRECT at
# login, and a player moved to another server while playing) against two
# real Tether servers in one cluster.
#
#   clients/python/test_cluster.sh [SERVER_BINARY]
#
# Needs PostgreSQL and NATS: TETHER_TEST_POSTGRES (postgres://...) and
# TETHER_TEST_NATS (nats://...); without both it says so and exits 0 (a
# skip). SERVER_BINARY defaults to target/debug/tether (this script builds
# nothing). Each run has its own cluster name (its own NATS buckets and
# subjects) and account name, free loopback ports and temporary data
# directories; the servers are always stopped on exit. Exits with the
# drills' status (2 if the cluster could not be started).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
server="${1:-$root/target/debug/tether}"
python="${PYTHON:-python3}"
# test_cluster.py imports tether_client: no __pycache__ left in the tree.
export PYTHONDONTWRITEBYTECODE=1
# shellcheck source=../../scripts/common.sh
source "$root/scripts/common.sh"

pg="${TETHER_TEST_POSTGRES:-}"
nats="${TETHER_TEST_NATS:-}"
if [[ -z "$pg" || -z "$nats" ]]; then
    echo "SKIP: python cluster drills: set TETHER_TEST_POSTGRES and TETHER_TEST_NATS to run them"
    exit 0
fi
if [[ ! -x "$server" ]]; then
    echo "test_cluster: no server binary at $server (build it first: cargo build -p tether-server --bin tether)" >&2
    exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-pycluster.XXXXXX")"
tag="$("$python" -c 'import secrets; print(secrets.token_hex(4))')"
cluster="pyc-$tag"
account="py${tag}_alice"
pids=("" "")
games=("" "")
admins=("" "")
client_pid=""
cleanup() {
    if [[ -n "$client_pid" ]]; then
        kill -TERM "$client_pid" 2>/dev/null || true
        wait "$client_pid" 2>/dev/null || true
    fi
    stop "${pids[0]}"
    stop "${pids[1]}"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_logs() {
    for i in 1 2; do
        [[ -f "$tmp/n$i.log" ]] && sed "s/^/  server n$i: /" "$tmp/n$i.log" >&2
    done
    return 0
}

# Starts server n$1 on new ports; 0 once it serves /healthz.
start_node() {
    local i="$1" game admin
    read -r game admin < <(pick_ports)
    rm -rf "$tmp/n$i"
    RUST_BACKTRACE=0 "$server" --listen "127.0.0.1:$game" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$tmp/n$i" --store "$pg" --cluster "$nats" --cluster-name "$cluster" \
        --node "n$i" --log warn >"$tmp/n$i.log" 2>&1 &
    pids[i - 1]=$!
    games[i - 1]="127.0.0.1:$game"
    admins[i - 1]="127.0.0.1:$admin"
    wait_healthz "$admin" "${pids[i - 1]}"
}

for i in 1 2; do
    started=0
    for attempt in 1 2 3; do
        if start_node "$i"; then
            started=1
            break
        fi
        echo "test_cluster: server n$i start $attempt failed:" >&2
        sed 's/^/  server: /' "$tmp/n$i.log" | head -5 >&2 || true
        stop "${pids[i - 1]}"
        pids[i - 1]=""
    done
    if [[ "$started" != 1 ]]; then
        echo "test_cluster: server n$i did not start" >&2
        exit 2
    fi
done

# Both servers must see both (GET /cluster) before the drills start.
both_alive() {
    curl -sf "http://$1/cluster" | "$python" -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
sys.exit(0 if sorted(n["node"] for n in nodes if n["alive"]) == ["n1", "n2"] else 1)'
}
for _ in $(seq 1 200); do
    both_alive "${admins[0]}" && both_alive "${admins[1]}" && break
    sleep 0.1
done
if ! both_alive "${admins[0]}" || ! both_alive "${admins[1]}"; then
    echo "test_cluster: the servers did not see each other within 20 s" >&2
    show_logs
    exit 2
fi
echo "cluster $cluster: n1 at ${games[0]} (admin ${admins[0]}), n2 at ${games[1]} (admin ${admins[1]})"

# In the background and waited for: a signal runs the traps at once.
status=0
"$python" "$here/test_cluster.py" --game1 "${games[0]}" --admin1 "${admins[0]}" \
    --game2 "${games[1]}" --admin2 "${admins[1]}" --node2 n2 --name "$account" &
client_pid=$!
wait "$client_pid" || status=$?
client_pid=""
if [[ "$status" != 0 ]]; then
    echo "test_cluster: the cluster drills failed with status $status; server logs:" >&2
    show_logs
fi
exit "$status"
