#!/usr/bin/env bash
# A local Tether cluster in one command: N servers of one game over NATS and
# PostgreSQL on this machine, until Ctrl-C (docs/OPERATIONS.md, "Running a
# cluster").
#
#   scripts/cluster.sh [--nodes N] [--nats URL] [--store URL] [--name NAME]
#                      [--base-port PORT] [--bin PATH] [-- EXTRA SERVER FLAGS]
#
# Server i (0-based) listens for games on BASE+10*i, WebSocket on
# BASE+10*i+1 and admin on BASE+10*i+3 (BASE 7700 by default), all on
# 127.0.0.1, with its data in data/cluster/nI. Defaults: 3 servers,
# nats://127.0.0.1:4222, postgres://postgres@127.0.0.1:5432/test, cluster
# name "local", the release binary if built, else the debug one (this
# script builds nothing). Point bots or clients at any of the game
# addresses; they are redirected to the right server:
#
#   target/release/tether-bots --addr 127.0.0.1:7700 --other-addrs 127.0.0.1:7710,127.0.0.1:7720
#
# Every server is stopped (SIGTERM: sessions saved, accounts released) when
# this script ends.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
nodes=3
nats="nats://127.0.0.1:4222"
store="postgres://postgres@127.0.0.1:5432/test"
cluster=local
base=7700
bin=""
extra=()
while (($#)); do
    case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --nats) nats="$2"; shift 2 ;;
    --store) store="$2"; shift 2 ;;
    --name) cluster="$2"; shift 2 ;;
    --base-port) base="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help)
        sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "cluster.sh: unknown argument $1 (see --help)" >&2
        exit 2
        ;;
    esac
done
if [[ -z "$bin" ]]; then
    bin="$target/release/tether"
    [[ -x "$bin" ]] || bin="$target/debug/tether"
fi
[[ -x "$bin" ]] || {
    echo "cluster.sh: no server binary at $bin (build it: cargo build --release -p tether-server)" >&2
    exit 2
}
# shellcheck source=common.sh
source "$root/scripts/common.sh"

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        stop "$p"
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$root/data/cluster"
for ((i = 0; i < nodes; i++)); do
    game=$((base + 10 * i))
    ws=$((game + 1))
    admin=$((game + 3))
    "$bin" --listen "127.0.0.1:$game" --ws-listen "127.0.0.1:$ws" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$root/data/cluster/n$i" --store "$store" --cluster "$nats" --cluster-name "$cluster" \
        --node "n$i" "${extra[@]}" >"$root/data/cluster/n$i.log" 2>&1 &
    pids+=($!)
    if ! wait_healthz "$admin" "$!"; then
        echo "cluster.sh: server n$i did not start; its log:" >&2
        tail -5 "$root/data/cluster/n$i.log" >&2
        exit 1
    fi
    echo "n$i: game 127.0.0.1:$game  websocket ws://127.0.0.1:$ws/  admin http://127.0.0.1:$admin/ (log data/cluster/n$i.log)"
done
echo "cluster '$cluster' of $nodes servers is up: curl -s http://127.0.0.1:$((base + 3))/cluster; Ctrl-C stops it"
wait
