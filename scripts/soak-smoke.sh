#!/usr/bin/env bash
# Soak smoke (docs/BENCHMARKS.md, scenario `soak`, the CI version): 200 players join,
# play, drop and resume, log out and come back, and walk away until their
# zombie sessions expire, for 60 s, while the server's RSS and open file
# descriptors are sampled. Fails when the bots report growth after the
# warm-up, any error, or any input lost.
#
#   scripts/soak-smoke.sh [SERVER_BINARY [BOTS_BINARY]]
#
# Binaries default to target/debug/tether and target/debug/tether-bots (under
# CARGO_TARGET_DIR when it is set); this script builds nothing. The server
# gets free loopback ports, a temporary data directory and a short zombie
# grace, and is always stopped on exit.
#
# Knobs (environment): SOAK_CLIENTS (200), SOAK_SECS (60: the measured
# window, after a 5 s ramp), SOAK_WARMUP_SECS (30), SOAK_SAMPLE_SECS (2),
# SOAK_CYCLE_SECS (8: a player's average play time between two actions),
# SOAK_GRACE_MS (3000: the server's zombie grace), SOAK_MOVE_HZ (20),
# SOAK_GROWTH_LIMIT_PCT (10: growth over the warm-up level that fails).
#
# Why 20 moves a second: the server's RSS climbs until its I/O-to-shard rings
# (65,536 slots each) have been written all the way round once, that is until
# 65,536 client messages have gone through; only then is the memory a warm
# server uses in place. At the standard 5 moves a second 200 players take
# about a minute to get there; at 20 about 15 s, well inside the warm-up.
#
# Exit status: 0 when the soak passed, 1 when it failed (growth, errors, lost
# inputs, a stale session, or the bots failing), 2 when it could not run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
server="${1:-$target/debug/tether}"
bots="${2:-$target/debug/tether-bots}"
python="${PYTHON:-python3}"
# shellcheck source=common.sh
source "$here/common.sh"

clients="${SOAK_CLIENTS:-200}"
secs="${SOAK_SECS:-60}"
warmup="${SOAK_WARMUP_SECS:-30}"
sample="${SOAK_SAMPLE_SECS:-2}"
cycle="${SOAK_CYCLE_SECS:-8}"
grace_ms="${SOAK_GRACE_MS:-3000}"
move_hz="${SOAK_MOVE_HZ:-20}"
limit_pct="${SOAK_GROWTH_LIMIT_PCT:-10}"
ramp=5

log() { echo "soak-smoke: $*" >&2; }

for bin in "$server" "$bots"; do
    if [[ ! -x "$bin" ]]; then
        log "no binary at $bin (build first: cargo build -p tether-server -p tether-bots)"
        exit 2
    fi
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-soak.XXXXXX")"
server_pid=""
bots_pid=""
cleanup() {
    stop "$bots_pid"
    stop "$server_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


start_server() {
    read -r game_port admin_port < <(pick_ports)
    rm -rf "$tmp/data"
    RUST_BACKTRACE=1 "$server" --listen "127.0.0.1:$game_port" --admin-listen "127.0.0.1:$admin_port" \
        --data-dir "$tmp/data" --world-players "$clients" --zombie-grace-ms "$grace_ms" \
        --log warn >"$tmp/server.log" 2>&1 &
    server_pid=$!
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
    log "server start $attempt failed:"
    sed 's/^/  server: /' "$tmp/server.log" | head -5 >&2 || true
    stop "$server_pid"
    server_pid=""
done
if [[ "$ready" != 1 ]]; then
    log "the server did not start"
    exit 2
fi

log "$clients players for ${ramp}+${secs}s (warm-up ${warmup}s, a sample every ${sample}s, zombie grace ${grace_ms}ms)"
# In the background and waited for, so that a signal runs the traps at once.
bots_status=0
"$bots" --addr "127.0.0.1:$game_port" --admin "127.0.0.1:$admin_port" \
    --scenario soak --clients "$clients" --ramp "$ramp" --duration "$secs" \
    --warmup-secs "$warmup" --sample-secs "$sample" --soak-cycle-secs "$cycle" \
    --move-hz "$move_hz" --growth-limit-pct "$limit_pct" --quiet >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!
wait "$bots_pid" || bots_status=$?
bots_pid=""

summary="$(tail -1 "$tmp/bots.json" 2>/dev/null || true)"
if [[ "$summary" != \{* ]]; then
    log "tether-bots printed no summary (status $bots_status); its log:"
    tail -20 "$tmp/bots.log" >&2 || true
    log "server log (tail):"
    tail -20 "$tmp/server.log" >&2 || true
    exit 1
fi
echo "$summary"

# Reads the summary and prints the verdict; exits 1 on any failure.
verdict=0
SUMMARY="$summary" BOTS_STATUS="$bots_status" "$python" - <<'EOF' || verdict=$?
import json, os, sys

s = json.loads(os.environ["SUMMARY"])
bots_status = int(os.environ["BOTS_STATUS"])
g = s.get("growth") or {}
print(
    "soak-smoke: {clients} players, {logins} logins, {resumed} resumes ({snapshots} by snapshot), "
    "actions {actions}; errors {errors}, inputs lost {inputs_lost}, pongs missing {pongs_missing}, "
    "stale sessions {stale_sessions}".format(actions=s.get("soak_actions"), **s),
    file=sys.stderr,
)
print(
    "soak-smoke: RSS {rss_warm_mb} MB at the end of the warm-up, at most {rss_max_after_mb} MB after "
    "({rss_growth_pct} %); descriptors beyond connections {fds_warm} -> at most {fds_max_after}; "
    "connections left after the drain: {connections_after_drain}".format(**g),
    file=sys.stderr,
)
failures = []
if bots_status == 3 or not s.get("growth_ok", False):
    failures += ["growth: " + f for f in g.get("failures", [])] or ["growth_ok is false"]
elif bots_status != 0:
    failures.append(f"tether-bots exited with status {bots_status}")
for key in ("errors", "inputs_lost", "stale_sessions"):
    if s.get(key, 0) != 0:
        failures.append(f"{key} = {s[key]}")
if s.get("logins", 0) < s.get("clients", 0):
    failures.append(f"only {s.get('logins')} logins for {s.get('clients')} players")
for f in failures:
    print("soak-smoke: FAIL: " + f, file=sys.stderr)
sys.exit(1 if failures else 0)
EOF
if [[ "$verdict" != 0 ]]; then
    log "bots log (tail):"
    tail -20 "$tmp/bots.log" >&2 || true
    log "server log (tail):"
    tail -20 "$tmp/server.log" >&2 || true
    exit 1
fi
log "passed"
