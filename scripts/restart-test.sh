#!/usr/bin/env bash
# Restart test ("a session outlives its process", docs/OPERATIONS.md): bots
# play; the server is stopped with SIGTERM and started again on the same
# data; then upgraded in place (`tether --replace PID`: a new process checks
# its settings and store, stops the old one and serves), after an upgrade
# that must fail its checks and leave the old one serving; then killed with
# SIGKILL and started again. The bots are never restarted: each of their
# clients must find its session again by itself. Measured and checked for
# each of the three:
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
# RESTART_TIMEOUT (300), RESTART_RELEASE (0; 1 picks target/release),
# RESTART_PHASES ("planned upgrade crash": which of the three, in order),
# RESTART_PAUSE_LIMIT_MS (unset: the p99 of the pauses the players saw,
# from their connection ending to their first frame after the resume, is
# reported but not checked; set: checked against it).
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
read -r -a phases <<<"${RESTART_PHASES:-planned upgrade crash}"
for phase in "${phases[@]}"; do
    case "$phase" in
    planned | upgrade | crash) ;;
    *)
        echo "restart-test: RESTART_PHASES: unknown phase '$phase' (planned, upgrade, crash)" >&2
        exit 2
        ;;
    esac
done
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
duration=$((play * (${#phases[@]} + 1) + 60))
"$bots" --addr "127.0.0.1:$game_port" --clients "$clients" --ramp 5 --duration "$duration" \
    --name-prefix "$prefix" --seed "$seed" --ledger "$ledger" --quiet \
    >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!
extra_pids+=("$bots_pid")
wait_all_active "login"
nap "$play"

# 1. A planned stop: SIGTERM, then the next process on the same data.
planned_stop() {
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
}

# 2. An upgrade. First one whose checks fail (its store does not open): the
# running server must not notice. Then the real one: the new process stops
# the old and serves.
upgrade() {
    status=0
    "$server" --replace "$server_pid" --listen "127.0.0.1:$game_port" --admin-listen "127.0.0.1:$admin_port" \
        --store "postgres://nobody@127.0.0.1:1/none" --log warn >>"$tmp/server.log" 2>&1 || status=$?
    ((status != 0)) || fail "upgrade: a replacement whose store does not open did not fail"
    kill -0 "$server_pid" 2>/dev/null || fail "upgrade: the failed replacement stopped the running server"
    active="$(metric tether_sessions state=active)"
    ((${active:-0} >= clients)) || fail "upgrade: only ${active:-?} players active after the failed replacement"
    log "upgrade: a replacement that fails its checks (exit $status) leaves the running server serving all $active players"
    old_pid="$server_pid"
    started="$(now_ms)"
    start_server "${server_args[@]}" --replace "$old_pid"
    wait "$old_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        port_open "$game_port" && break
        nap 0.05
    done
    wait_all_active "upgrade"
    upgrade_ms=$(($(now_ms) - started))
    upgrade_restored="$(metric tether_resumes_total mode=restored)"
    log "upgrade: every player playing again ${upgrade_ms} ms after the new binary was started (${upgrade_restored:-0} sessions restored)"
    ((upgrade_ms <= limit_ms)) || fail "upgrade: took ${upgrade_ms} ms, over ${limit_ms} ms"
}

# 3. A crash: SIGKILL, then the next process on the same data.
crash() {
    kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    restart_and_measure "crash"
    crash_ms="$took" crash_restored="$restored"
}

planned_ms=null planned_restored=null upgrade_ms=null upgrade_restored=null crash_ms=null crash_restored=null
for phase in "${phases[@]}"; do
    case "$phase" in
    planned) planned_stop ;;
    upgrade) upgrade ;;
    crash) crash ;;
    esac
    nap "$play"
done

# The bots finish their run and report.
log "waiting for the bots to finish their ${duration}s run"
wait "$bots_pid" || fail "the bots exited with an error (see $tmp/bots.log)"
summary="$(tail -1 "$tmp/bots.json")"
[[ "$summary" == \{* ]] || fail "the bots printed no summary"
verify_ledger "$ledger" >/dev/null
SUMMARY="$summary" CLIENTS="$clients" PLANNED="$planned_ms" CRASH="$crash_ms" \
    UPGRADE="$upgrade_ms" UR="${upgrade_restored:-0}" PHASES="${phases[*]}" PAUSE_LIMIT="${RESTART_PAUSE_LIMIT_MS:-}" \
    PR="$planned_restored" CR="$crash_restored" VERDICT="$verdict" FLUSH="$flush_ms" "$python" - <<'PY' || fail "a check failed (see above)"
import json, os, sys
s = json.loads(os.environ["SUMMARY"])
v = json.loads(os.environ["VERDICT"])
n = int(os.environ["CLIENTS"])
out = {
    "players": n,
    "phases": os.environ["PHASES"].split(),
    "planned_restart_recovery_ms": json.loads(os.environ["PLANNED"]),
    "planned_restart_restored": json.loads(os.environ["PR"]),
    "upgrade_total_ms": json.loads(os.environ["UPGRADE"]),
    "upgrade_restored": json.loads(os.environ["UR"]),
    "crash_recovery_ms": json.loads(os.environ["CRASH"]),
    "crash_restored": json.loads(os.environ["CR"]),
    "pauses": s["outages"],
    "pause_p50_ms": s["outage_ms"]["p50"],
    "pause_p99_ms": s["outage_ms"]["p99"],
    "pause_max_ms": s["outage_ms"]["max"],
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
pause_limit = os.environ["PAUSE_LIMIT"]
if pause_limit and s["outage_ms"]["p99"] > float(pause_limit):
    bad.append(f"the pause p99 was {s['outage_ms']['p99']} ms, over {pause_limit} ms")
if s["outages"] < n * len(os.environ["PHASES"].split()):
    bad.append(f"only {s['outages']} pauses measured for {n} players")
if v["missing"]:
    bad.append(f"{v['missing']} confirmed loot missing")
for b in bad:
    print("restart-test: FAILED: " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
log "passed"
