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
# log the same characters back in after the previous crash). Then the
# graceful stop: with every player online, SIGTERM must end the server
# cleanly (status 0, within 15 s) after saving every one of them (the
# server runs this phase with a write-behind interval far longer than the
# phase, so only the save on the way out can have written them), and the
# ledger must still verify.
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
base_args=(--data-dir "$tmp/data" --world-players "$clients" --log warn)
[[ -n "$store" ]] && base_args+=(--store "$store")
server_args=("${base_args[@]}" --flush-interval-ms "$flush_ms")

# Prints "COUNT OLDEST_UPDATED_AT_MS SAVED_SINCE" for the run's characters,
# read from the database: how many, when the least recently saved one was
# written, and how many were written at or after unix ms $1 (0 if not
# given). Nothing when it cannot be read (no psql for PostgreSQL).
store_characters() {
    local since="${1:-0}"
    if [[ -z "$store" ]]; then
        DB="$tmp/data/tether.db" PREFIX="$prefix" SINCE="$since" "$python" -c '
import os, sqlite3
db = sqlite3.connect("file:" + os.environ["DB"] + "?mode=ro", uri=True, timeout=10)
p = os.environ["PREFIX"]
print(*db.execute(
    "SELECT COUNT(*), COALESCE(MIN(updated_at), 0), COALESCE(SUM(updated_at >= ?), 0) "
    "FROM records WHERE game = ? AND substr(account, 1, ?) = ?",
    (int(os.environ["SINCE"]), "mmo", len(p), p)).fetchone())
'
    elif command -v psql >/dev/null; then
        psql "$store" -X -A -t -F ' ' -v ON_ERROR_STOP=1 -c \
            "SELECT COUNT(*), COALESCE(MIN(updated_at), 0), COUNT(*) FILTER (WHERE updated_at >= $since) FROM records WHERE game = 'mmo' AND substr(account, 1, ${#prefix}) = '$prefix'" \
            2>>"$tmp/psql.log"
    fi
}

# Starts the bots on this run's characters, appending to the ledger.
start_bots() {
    "$bots" --addr "127.0.0.1:$game_port" --clients "$clients" --ramp 3 --duration 600 \
        --name-prefix "$prefix" --seed "$1" --ledger "$ledger" --quiet \
        >>"$tmp/bots.json" 2>>"$tmp/bots.log" &
    bots_pid=$!
}

# Lets the bots play until at least $2 confirmations arrived since the ledger
# held $1 lines, and for at least kill_after seconds; sets `played`.
play_until() {
    local before="$1" want="$2" started="$SECONDS" got
    while true; do
        kill -0 "$server_pid" 2>/dev/null || fail "$phase: the server died"
        kill -0 "$bots_pid" 2>/dev/null || fail "$phase: the bots ended"
        got=$(($(lines_in "$ledger") - before))
        played=$((SECONDS - started))
        if ((got >= want && played >= kill_after)); then
            return 0
        fi
        ((played < loot_wait)) || fail "$phase: only $got confirmations after ${played}s of play"
        nap 0.5
    done
}

# SIGTERM; the server must exit by itself with status 0 within 15 s.
stop_gracefully() {
    local status=0
    kill -TERM "$server_pid"
    for _ in $(seq 1 150); do
        kill -0 "$server_pid" 2>/dev/null || break
        nap 0.1
    done
    kill -0 "$server_pid" 2>/dev/null && fail "$phase: the server did not stop within 15 s of SIGTERM"
    wait "$server_pid" || status=$?
    server_pid=""
    ((status == 0)) || fail "$phase: the server exited with status $status after SIGTERM"
}

now_ms() { "$python" -c 'import time; print(int(time.time() * 1000))'; }

log "$backend, $clients players, $rounds rounds, names ${prefix}N, flush every ${flush_ms} ms"
start_server "${server_args[@]}"
wait_health ok 30 || fail "the server did not report healthy after starting"

for round in $(seq 1 "$rounds"); do
    phase="round $round"
    before="$(lines_in "$ledger")"
    # Logins so far on this server (the previous round's check logged in).
    logins_before="$(metric tether_logins_total)"
    start_bots "$((seed + round))"
    # Play until enough loot was confirmed in this round, and long enough
    # that every player is past its login and into the write-behind.
    play_until "$before" "$min_loot"
    logins="$(metric tether_logins_total)"
    [[ -n "$logins" && -n "$logins_before" ]] || fail "round $round: cannot read tether_logins_total"
    logins=$((logins - logins_before))
    kill_ms="$(now_ms)"
    kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    # Confirmations already on their way reach the bots; then they go too.
    nap 1
    {
        kill -KILL "$bots_pid" || true
        wait "$bots_pid" || true
    } 2>/dev/null
    bots_pid=""
    log "round $round: killed the server after ${played}s of play, $logins logins, $(($(lines_in "$ledger") - before)) confirmations in the ledger this round"

    start_server "${server_args[@]}"
    wait_health ok 30 || fail "round $round: the restarted server did not report healthy"

    # Every character that logged in is back.
    read -r count oldest _ < <(store_characters || true) || true
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

# The graceful stop, under load. A write-behind interval far longer than
# the phase: whatever is written after the SIGTERM was written by the stop.
phase="graceful stop"
stop_gracefully
start_server "${base_args[@]}" --flush-interval-ms 600000
wait_health ok 30 || fail "$phase: the server did not report healthy"
before="$(lines_in "$ledger")"
logins_before="$(metric tether_logins_total)"
start_bots "$((seed + rounds + 1))"
play_until "$before" 1
logins="$(metric tether_logins_total)"
[[ -n "$logins" && -n "$logins_before" ]] || fail "$phase: cannot read tether_logins_total"
logins=$((logins - logins_before))
term_ms="$(now_ms)"
stop_gracefully
{
    kill -KILL "$bots_pid" || true
    wait "$bots_pid" || true
} 2>/dev/null
bots_pid=""
start_server "${server_args[@]}"
wait_health ok 30 || fail "$phase: the restarted server did not report healthy"
read -r count _ saved < <(store_characters "$term_ms" || true) || true
if [[ -n "${saved:-}" ]]; then
    ((saved >= logins)) || fail "$phase: $saved characters written after SIGTERM, $logins were online"
    log "$phase: exit 0; all $logins players online at SIGTERM were saved on the way out ($saved written after it)"
elif [[ -z "$store" ]]; then
    fail "$phase: cannot read the SQLite database $tmp/data/tether.db"
fi
verify_ledger "$ledger"
stop_gracefully
log "passed ($backend)"
