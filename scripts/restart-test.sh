#!/usr/bin/env bash
# Restart test ("a session outlives its process", docs/OPERATIONS.md): bots
# play; the server is stopped with SIGTERM and started again on the same
# data, then later killed with SIGKILL and started again. The bots are never
# restarted: each of their clients must find its session again by itself.
# Measured and checked for each of the two restarts:
#
# - recovery: from the moment the new process listens until every player is
#   playing again (active sessions back to the player count), in ms; at
#   most RESTART_LIMIT_MS (10000). No player logs in again to get there;
# - sessions restored from storage (tether_resumes_total{mode="restored"});
# - at the end of the run, from the bots' summary: no input lost (inputs
#   sent but never applied: 0) and no player had to log in again (logins =
#   players); the bots' other errors (silences, failed connects) are
#   reported;
# - every confirmed loot is still there (`tether-bots --verify-ledger`).
#
#   scripts/restart-test.sh [SERVER_BINARY [BOTS_BINARY]]
#
# SQLite in a temporary data directory. Binaries default to
# target/debug/tether and target/debug/tether-bots (under CARGO_TARGET_DIR
# when it is set); this script builds nothing. Bounded: a watchdog ends the
# run after RESTART_TIMEOUT seconds; every process it started is stopped and
# the temporary directory removed on exit. Prints one JSON line of figures.
#
# Settings (environment): RESTART_CLIENTS (300), RESTART_PLAY (10: seconds
# of play before each restart), RESTART_LIMIT_MS (10000), RESTART_FLUSH_MS
# (1000: the write-behind interval; what a crash can lose), RESTART_SEED (11),
# RESTART_TIMEOUT (300), RESTART_RELEASE (0; 1 picks target/release).
#
# Exit status: 0 passed, 1 a check failed, 2 could not run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
profile=debug
[[ "${RESTART_RELEASE:-0}" == 1 ]] && profile=release
server="${1:-$target/$profile/tether}"
bots="${2:-$target/$profile/tether-bots}"
clients="${RESTART_CLIENTS:-300}"
play="${RESTART_PLAY:-10}"
limit_ms="${RESTART_LIMIT_MS:-10000}"
flush_ms="${RESTART_FLUSH_MS:-1000}"
seed="${RESTART_SEED:-11}"
hard_timeout="${RESTART_TIMEOUT:-300}"
name=restart-test
# shellcheck source=store-test-lib.sh
source "$root/scripts/store-test-lib.sh"

prefix="$(printf 'r%05x_' $(((RANDOM << 15 | RANDOM) & 0xfffff)))"
ledger="$tmp/ledger.jsonl"
server_args=(--data-dir "$tmp/data" --world-players "$clients" --log warn
    --flush-interval-ms "$flush_ms" --restart-retry-ms 200)

now_ms() { "$python" -c 'import time; print(int(time.time() * 1000))'; }

# Waits until every player has an active session; sets `waited_ms`.
wait_all_active() {
    local what="$1" started active
    started="$(now_ms)"
    while true; do
        kill -0 "$server_pid" 2>/dev/null || fail "$what: the server died"
        kill -0 "$bots_pid" 2>/dev/null || fail "$what: the bots ended"
        active="$(metric tether_sessions state=active)"
        if [[ -n "$active" ]] && ((active >= clients)); then
            waited_ms=$(($(now_ms) - started))
            return 0
        fi
        (($(now_ms) - started < limit_ms * 3)) ||
            fail "$what: only ${active:-?} of $clients players active after $((limit_ms * 3)) ms"
        nap 0.05
    done
}

# Starts the server again on the same ports and data; sets `took` (ms from
# listening until every player plays again) and `restored` (sessions
# restored from storage by this process).
restart_and_measure() {
    local what="$1"
    start_server "${server_args[@]}"
    wait_all_active "$what"
    took="$waited_ms"
    restored="$(metric tether_resumes_total mode=restored)"
    log "$what: every player playing again ${took} ms after the new process listened (${restored:-0} sessions restored from storage)"
    ((took <= limit_ms)) || fail "$what: recovery took ${took} ms, over ${limit_ms} ms"
    [[ -n "$restored" ]] && ((restored > 0)) || fail "$what: no session was restored from storage"
}

log "SQLite, $clients players, ${play}s of play before each restart, names ${prefix}N"
start_server "${server_args[@]}"
wait_health ok 30 || fail "the server did not report healthy after starting"
duration=$((play * 3 + 60))
"$bots" --addr "127.0.0.1:$game_port" --clients "$clients" --ramp 5 --duration "$duration" \
    --name-prefix "$prefix" --seed "$seed" --ledger "$ledger" --quiet \
    >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!
extra_pids+=("$bots_pid")
wait_all_active "login"
nap "$play"

# 1. A planned stop: SIGTERM, then the next process on the same data.
kill -TERM "$server_pid"
for _ in $(seq 1 150); do
    kill -0 "$server_pid" 2>/dev/null || break
    nap 0.1
done
kill -0 "$server_pid" 2>/dev/null && fail "SIGTERM: the server did not stop within 15 s"
status=0
wait "$server_pid" || status=$?
((status == 0)) || fail "SIGTERM: the server exited with status $status"
restart_and_measure "planned restart"
planned_ms="$took" planned_restored="$restored"
nap "$play"

# 2. A crash: SIGKILL, then the next process on the same data.
kill -KILL "$server_pid"
wait "$server_pid" 2>/dev/null || true
restart_and_measure "crash"
crash_ms="$took" crash_restored="$restored"

# The bots finish their run and report.
log "waiting for the bots to finish their ${duration}s run"
wait "$bots_pid" || fail "the bots exited with an error (see $tmp/bots.log)"
summary="$(tail -1 "$tmp/bots.json")"
[[ "$summary" == \{* ]] || fail "the bots printed no summary"
verify_ledger "$ledger" >/dev/null
SUMMARY="$summary" CLIENTS="$clients" PLANNED="$planned_ms" CRASH="$crash_ms" \
    PR="$planned_restored" CR="$crash_restored" VERDICT="$verdict" FLUSH="$flush_ms" "$python" - <<'PY' || fail "a check failed (see above)"
import json, os, sys
s = json.loads(os.environ["SUMMARY"])
v = json.loads(os.environ["VERDICT"])
n = int(os.environ["CLIENTS"])
out = {
    "players": n,
    "planned_restart_recovery_ms": int(os.environ["PLANNED"]),
    "planned_restart_restored": int(os.environ["PR"]),
    "crash_recovery_ms": int(os.environ["CRASH"]),
    "crash_restored": int(os.environ["CR"]),
    "flush_interval_ms": int(os.environ["FLUSH"]),
    "bots_errors": s["errors"],
    "bots_silences": s["silences"],
    "bots_connect_failures": s["connect_failures"],
    "bots_disconnects": s["disconnects"],
    "inputs_lost": s["inputs_lost"],
    "logins": s["logins"],
    "resumed": s["resumed"],
    "ledger_confirmations": v["confirmations"],
    "ledger_missing": v["missing"],
}
print(json.dumps(out))
bad = []
if s["logins"] < n:
    bad.append(f"only {s['logins']} of {n} players logged in")
if s["inputs_lost"]:
    bad.append(f"{s['inputs_lost']} inputs lost")
if s["logins"] > n:
    bad.append(f"{s['logins'] - n} players had to log in again")
if v["missing"]:
    bad.append(f"{v['missing']} confirmed loot missing")
for b in bad:
    print("restart-test: FAILED: " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
log "passed"
