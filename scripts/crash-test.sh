#!/usr/bin/env bash
# Crash test ("nothing lost", docs/OPERATIONS.md): bots play with a ledger of
# every durable confirmation (`LootGranted`) they receive; the server is
# killed with SIGKILL in the middle of play (then the bots, the same way);
# the server is restarted on the same data and must give back:
#
# - every character that had logged in (none lost with the process);
# - every confirmed loot: `tether-bots --verify-ledger` logs each character
#   of the ledger in and checks its gold and items hold at least what was
#   confirmed (0 missing).
#
# This runs CRASH_ROUNDS times on the same data and ledger (the later rounds
# log the same characters back in after the previous crash), then stops the
# server with SIGTERM, which must end it cleanly.
#
#   scripts/crash-test.sh [--store URL] [SERVER_BINARY [BOTS_BINARY]]
#
# SQLite in a temporary data directory by default; `--store postgres://...`
# runs against PostgreSQL instead. Character names carry a prefix unique to
# the run, so reruns against one database never collide. Binaries default to
# target/debug/tether and target/debug/tether-bots (under CARGO_TARGET_DIR
# when it is set); this script builds nothing. Bounded: a watchdog ends the
# run after CRASH_TIMEOUT seconds; every process it started is stopped and
# the temporary directory removed on exit.
#
# Settings (environment): CRASH_CLIENTS (100), CRASH_ROUNDS (2),
# CRASH_KILL_AFTER (12: seconds of play before the kill, at the earliest),
# CRASH_MIN_LOOT (30: confirmations a round must collect before the kill),
# CRASH_FLUSH_MS (1000: the server's write-behind interval), CRASH_SEED (7),
# CRASH_TIMEOUT (240).
#
# Exit status: 0 passed, 1 a check failed, 2 could not run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
store=""
if [[ "${1:-}" == "--store" ]]; then
    [[ -n "${2:-}" ]] || { echo "crash-test: --store needs a URL" >&2; exit 2; }
    store="$2"
    shift 2
fi
server="${1:-$target/debug/tether}"
bots="${2:-$target/debug/tether-bots}"
clients="${CRASH_CLIENTS:-100}"
rounds="${CRASH_ROUNDS:-2}"
kill_after="${CRASH_KILL_AFTER:-12}"
min_loot="${CRASH_MIN_LOOT:-30}"
flush_ms="${CRASH_FLUSH_MS:-1000}"
seed="${CRASH_SEED:-7}"
hard_timeout="${CRASH_TIMEOUT:-240}"
# How long one round may take to collect its confirmations.
loot_wait=90
name=crash-test
# shellcheck source=store-test-lib.sh
source "$root/scripts/store-test-lib.sh"

case "$store" in
    "") backend="SQLite" ;;
    postgres://* | postgresql://*) backend="PostgreSQL" ;;
    *) die "--store takes a postgres:// URL (SQLite is the default)" ;;
esac
# A prefix unique to this run: c + 5 hex digits + _ (names stay <= 24 chars).
prefix="$(printf 'c%05x_' $(((RANDOM << 15 | RANDOM) & 0xfffff)))"
ledger="$tmp/ledger.jsonl"
server_args=(--data-dir "$tmp/data" --world-players "$clients" --flush-interval-ms "$flush_ms" --log warn)
[[ -n "$store" ]] && server_args+=(--store "$store")

# Prints "COUNT OLDEST_UPDATED_AT_MS" for the run's characters, read from
# the database (nothing when it cannot be read: no psql for PostgreSQL).
store_characters() {
    if [[ -z "$store" ]]; then
        DB="$tmp/data/tether.db" PREFIX="$prefix" "$python" -c '
import os, sqlite3
db = sqlite3.connect("file:" + os.environ["DB"] + "?mode=ro", uri=True, timeout=10)
p = os.environ["PREFIX"]
n, oldest = db.execute(
    "SELECT COUNT(*), COALESCE(MIN(updated_at), 0) FROM characters WHERE substr(name, 1, ?) = ?",
    (len(p), p)).fetchone()
print(n, oldest)
'
    elif command -v psql >/dev/null; then
        psql "$store" -X -A -t -F ' ' -v ON_ERROR_STOP=1 -c \
            "SELECT COUNT(*), COALESCE(MIN(updated_at), 0) FROM characters WHERE substr(name, 1, ${#prefix}) = '$prefix'" \
            2>>"$tmp/psql.log"
    fi
}

now_ms() { "$python" -c 'import time; print(int(time.time() * 1000))'; }

log "$backend, $clients players, $rounds rounds, names ${prefix}N, flush every ${flush_ms} ms"
start_server "${server_args[@]}"
wait_health ok 30 || fail "the server did not report healthy after starting"

for round in $(seq 1 "$rounds"); do
    before="$(lines_in "$ledger")"
    # Logins so far on this server (the previous round's check logged in).
    logins_before="$(metric tether_logins_total)"
    started="$SECONDS"
    "$bots" --addr "127.0.0.1:$game_port" --clients "$clients" --ramp 3 --duration 600 \
        --name-prefix "$prefix" --seed "$((seed + round))" --ledger "$ledger" --quiet \
        >>"$tmp/bots.json" 2>>"$tmp/bots.log" &
    bots_pid=$!
    # Play until enough loot was confirmed in this round, and long enough
    # that every player is past its login and into the write-behind.
    while true; do
        kill -0 "$server_pid" 2>/dev/null || fail "round $round: the server died before the kill"
        kill -0 "$bots_pid" 2>/dev/null || fail "round $round: the bots ended before the kill"
        got=$(($(lines_in "$ledger") - before))
        played=$((SECONDS - started))
        if ((got >= min_loot && played >= kill_after)); then
            break
        fi
        ((played < loot_wait)) || fail "round $round: only $got confirmations after ${played}s of play"
        nap 0.5
    done
    logins="$(metric tether_logins_total)"
    [[ -n "$logins" && -n "$logins_before" ]] || fail "round $round: cannot read tether_logins_total"
    logins=$((logins - logins_before))
    kill_ms="$(now_ms)"
    kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    # Confirmations already on their way reach the bots; then they go too.
    nap 1
    kill -KILL "$bots_pid" 2>/dev/null || true
    wait "$bots_pid" 2>/dev/null || true
    bots_pid=""
    log "round $round: killed the server after ${played}s of play, $logins logins, $(($(lines_in "$ledger") - before)) confirmations in the ledger this round"

    start_server "${server_args[@]}"
    wait_health ok 30 || fail "round $round: the restarted server did not report healthy"

    # Every character that logged in is back.
    read -r count oldest < <(store_characters || true) || true
    if [[ -n "${count:-}" ]]; then
        ((count >= logins)) || fail "round $round: $count characters in the database after the crash, $logins had logged in"
        log "round $round: $count characters back; the least recently saved one $((kill_ms - oldest)) ms before the kill (flush interval ${flush_ms} ms)"
    elif [[ -z "$store" ]]; then
        fail "round $round: cannot read the SQLite database $tmp/data/tether.db"
    else
        log "round $round: no psql to read the database with: characters checked through the ledger only"
    fi

    verify_ledger "$ledger"
done

# A clean stop after all that: SIGTERM, saved, exit 0.
kill -TERM "$server_pid"
status=0
for _ in $(seq 1 150); do
    kill -0 "$server_pid" 2>/dev/null || break
    nap 0.1
done
kill -0 "$server_pid" 2>/dev/null && fail "the server did not stop within 15 s of SIGTERM"
wait "$server_pid" || status=$?
server_pid=""
((status == 0)) || fail "the server exited with status $status after SIGTERM"
log "passed ($backend)"
