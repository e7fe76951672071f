#!/usr/bin/env bash
# Cluster benchmark: N servers of one game on this machine (release
# binaries), `tether-bots` players spread over them, and optionally a
# whisper-latency probe across two of them while they play. Prints one JSON
# line: players, messages per second (the bots' count, in + out), every
# server's CPU and peak RSS over the measured window, CPU per message, the
# bots' round-trip p99, errors, and the whisper latencies.
#
#   scripts/cluster-bench.sh [--nodes N] [--clients C] [--duration S] [--ramp S]
#                            [--no-cluster] [--whispers COUNT] [--pin]
#
# --no-cluster: one server, the same PostgreSQL store, no NATS (the
# single-server baseline at the same load). --whispers COUNT: during the
# window, `whisper_latency` (crates/client/examples) whispers COUNT lines at
# 40/s from a player on server 0 to one on server 1 (server 0 to itself with
# one server). --pin: the servers on CPU 0, the bots and the probe on CPU 1.
#
# NATS from TETHER_TEST_NATS (nats://127.0.0.1:4222), PostgreSQL from
# TETHER_TEST_POSTGRES (postgres://postgres@127.0.0.1:5432/test); a cluster
# name and account names of its own. Builds the release binaries it needs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
nodes=3 clients=3000 duration=30 ramp=10 no_cluster=0 whispers=0 pin=0
while (($#)); do
    case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --ramp) ramp="$2"; shift 2 ;;
    --no-cluster) no_cluster=1; nodes=1; shift ;;
    --whispers) whispers="$2"; shift 2 ;;
    --pin) pin=1; shift ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done
nats="${TETHER_TEST_NATS:-nats://127.0.0.1:4222}"
pg="${TETHER_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
python="${PYTHON:-python3}"
# shellcheck source=common.sh
source "$root/scripts/common.sh"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "cluster-bench: building release binaries" >&2
cargo build --release -q -p tether-server -p tether-bots
cargo build --release -q -p tether-client --example whisper_latency
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-cluster-bench.XXXXXX")"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do stop "$p"; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

server_cpu=() bots_cpu=()
if ((pin)); then
    server_cpu=(taskset -c 0)
    bots_cpu=(taskset -c 1)
fi
tag="cb$(printf '%05x' $(((RANDOM << 15 | RANDOM) & 0xfffff)))"
games=() admins=() servers=()
per_node=$(((clients + nodes - 1) / nodes))
for ((i = 0; i < nodes; i++)); do
    read -r game admin < <(pick_ports)
    cluster_args=()
    ((no_cluster)) || cluster_args=(--cluster "$nats" --cluster-name "$tag" --node "n$i")
    "${server_cpu[@]}" "$target/tether" --listen "127.0.0.1:$game" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$tmp/n$i" --store "$pg" --world-players "$per_node" --log warn \
        "${cluster_args[@]}" >"$tmp/n$i.log" 2>&1 &
    pids+=($!)
    servers+=($!)
    games+=("$game")
    admins+=("$admin")
    wait_healthz "$admin" "$!" || { tail -5 "$tmp/n$i.log" >&2; exit 2; }
done
others=""
for ((i = 1; i < nodes; i++)); do others+="${others:+,}127.0.0.1:${games[$i]}"; done

# CPU seconds (user + system) and peak RSS (kB) of each server.
sample() {
    "$python" - "${servers[@]}" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
out = []
for pid in sys.argv[1:]:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    hwm = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0].split()[1]
    out.append(f"{(int(f[11]) + int(f[12])) / tick:.3f}:{hwm}")
print(" ".join(out))
PY
}

other_args=()
[[ -n "$others" ]] && other_args=(--other-addrs "$others")
"${bots_cpu[@]}" "$target/tether-bots" --addr "127.0.0.1:${games[0]}" "${other_args[@]}" \
    --clients "$clients" --ramp "$ramp" --duration "$duration" --name-prefix "${tag}_" --quiet \
    >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!
pids+=("$bots_pid")
# The bots measure their window after the ramp (and a second of settling).
nap $((ramp + 1))
before="$(sample)"
if ((whispers > 0)); then
    to="${games[1]:-${games[0]}}"
    "${bots_cpu[@]}" "$target/examples/whisper_latency" --from "127.0.0.1:${games[0]}" \
        --to "127.0.0.1:$to" --count "$whispers" --rate 40 --name-prefix "${tag}w" \
        >"$tmp/whisper.json" 2>"$tmp/whisper.log" &
    pids+=($!)
fi
nap "$duration"
after="$(sample)"
wait "$bots_pid" || { tail -5 "$tmp/bots.log" >&2; echo "cluster-bench: the bots failed" >&2; exit 1; }
summary="$(tail -1 "$tmp/bots.json")"
whisper="$(tail -1 "$tmp/whisper.json" 2>/dev/null || echo null)"
[[ "$whisper" == \{* ]] || whisper=null

SUMMARY="$summary" BEFORE="$before" AFTER="$after" WINDOW="$duration" NODES="$nodes" \
    CLUSTER="$((1 - no_cluster))" WHISPER="$whisper" PIN="$pin" "$python" - <<'PY'
import json, os
s = json.loads(os.environ["SUMMARY"])
before = [x.split(":") for x in os.environ["BEFORE"].split()]
after = [x.split(":") for x in os.environ["AFTER"].split()]
window = float(os.environ["WINDOW"])
cpu = [round((float(a[0]) - float(b[0])) / window * 100, 1) for a, b in zip(after, before)]
rss = [round(int(a[1]) / 1024, 1) for a in after]
pps = s["bots_in_pps"] + s["bots_out_pps"]
out = {
    "nodes": int(os.environ["NODES"]),
    "cluster": os.environ["CLUSTER"] == "1",
    "pinned": os.environ["PIN"] == "1",
    "players": s["clients"],
    "connected": s["connected"],
    "msgs_per_s": round(pps, 1),
    "server_cpu_pct": cpu,
    "server_cpu_pct_total": round(sum(cpu), 1),
    "us_per_msg": round(sum(cpu) / 100 * 1e6 / pps, 3) if pps else None,
    "server_rss_peak_mb": rss,
    "rtt_p99_ms": s["rtt_ms"]["p99"],
    "errors": s["errors"],
    "whisper": json.loads(os.environ["WHISPER"]),
}
print(json.dumps(out))
PY
