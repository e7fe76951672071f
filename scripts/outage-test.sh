#!/usr/bin/env bash
# Storage outage test ("nothing lost", docs/OPERATIONS.md): the server keeps
# its characters in PostgreSQL through a TCP proxy this script controls
# (scripts/tcp-cut-proxy.py). Bots play with a ledger of every durable
# confirmation (`LootGranted`) they receive. Then, under that load:
#
# 1. the proxy drops every connection to PostgreSQL and refuses new ones for
#    OUTAGE_SECS (30 s): the server must stay up and serving, and report
#    `degraded` on /healthz and `tether_storage_degraded 1`;
# 2. the proxy lets connections through again: the server must report `ok`
#    again, and loot held during the outage is confirmed;
# 3. the bots stop (logging out), and `tether-bots --verify-ledger` logs
#    each character of the ledger in: its gold and items must hold at least
#    what was confirmed (0 missing), and no input may have been lost.
#
#   scripts/outage-test.sh [SERVER_BINARY [BOTS_BINARY [POSTGRES_URL]]]
#
# POSTGRES_URL defaults to $TETHER_TEST_POSTGRES; with neither, the test
# prints "SKIP: ..." and exits 0. (An outage of the embedded SQLite store is
# not a thing: it is a file in the data dir. scripts/crash-test.sh covers
# SQLite.) Character names carry a prefix unique to the run, so reruns never
# collide in the database. Binaries default to target/debug/tether and
# target/debug/tether-bots (under CARGO_TARGET_DIR when it is set); this
# script builds nothing. Bounded: a watchdog ends the run after
# OUTAGE_TIMEOUT seconds; every process it started is stopped and the
# temporary directory removed on exit.
#
# Settings (environment): OUTAGE_CLIENTS (100), OUTAGE_SECS (30),
# OUTAGE_PLAY_BEFORE (10: seconds of play before the cut), OUTAGE_PLAY_AFTER
# (8: seconds of play once healthy again), OUTAGE_MODE (cut, or stall: the
# proxy holds connections open and silent instead of dropping them),
# OUTAGE_SEED (11), OUTAGE_TIMEOUT (240).
#
# Exit status: 0 passed or skipped, 1 a check failed, 2 could not run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
server="${1:-$target/debug/tether}"
bots="${2:-$target/debug/tether-bots}"
pg_url="${3:-${TETHER_TEST_POSTGRES:-}}"
clients="${OUTAGE_CLIENTS:-100}"
outage_secs="${OUTAGE_SECS:-30}"
play_before="${OUTAGE_PLAY_BEFORE:-10}"
play_after="${OUTAGE_PLAY_AFTER:-8}"
outage_mode="${OUTAGE_MODE:-cut}"
seed="${OUTAGE_SEED:-11}"
hard_timeout="${OUTAGE_TIMEOUT:-240}"
flush_ms=1000

if [[ -z "$pg_url" ]]; then
    echo "SKIP: outage test: no PostgreSQL URL (give one, or set TETHER_TEST_POSTGRES)"
    exit 0
fi
case "$outage_mode" in
    cut | stall) ;;
    *) echo "outage-test: OUTAGE_MODE is cut or stall" >&2; exit 2 ;;
esac
name=outage-test
# shellcheck source=store-test-lib.sh
source "$root/scripts/store-test-lib.sh"

# The database's address, and the URL the server gets: the same with the
# proxy's address in its place.
read -r pg_host pg_port < <(URL="$pg_url" "$python" -c '
import os, urllib.parse
u = urllib.parse.urlsplit(os.environ["URL"])
if u.scheme not in ("postgres", "postgresql") or not u.hostname:
    raise SystemExit(1)
print(u.hostname, u.port or 5432)
') || die "not a postgres:// URL with a host: $pg_url"

control="$tmp/proxy.control"
echo open >"$control"
"$python" "$root/scripts/tcp-cut-proxy.py" --upstream "$pg_host:$pg_port" \
    --control "$control" --port-file "$tmp/proxy.port" 2>"$tmp/proxy.log" &
proxy_pid=$!
extra_pids+=("$proxy_pid")
for _ in $(seq 1 50); do
    [[ -s "$tmp/proxy.port" ]] && break
    kill -0 "$proxy_pid" 2>/dev/null || break
    nap 0.1
done
[[ -s "$tmp/proxy.port" ]] || die "the proxy did not start: $(cat "$tmp/proxy.log")"
proxy_port="$(cat "$tmp/proxy.port")"
proxied_url="$(URL="$pg_url" PORT="$proxy_port" "$python" -c '
import os, urllib.parse
u = urllib.parse.urlsplit(os.environ["URL"])
auth = u.netloc.rpartition("@")[0]
netloc = (auth + "@" if auth else "") + "127.0.0.1:" + os.environ["PORT"]
print(urllib.parse.urlunsplit(u._replace(netloc=netloc)))
')"

prefix="$(printf 'o%05x_' $(((RANDOM << 15 | RANDOM) & 0xfffff)))"
ledger="$tmp/ledger.jsonl"
log "PostgreSQL at $pg_host:$pg_port through the proxy on port $proxy_port; $clients players, names ${prefix}N; ${outage_secs}s outage ($outage_mode)"
start_server --data-dir "$tmp/data" --store "$proxied_url" --world-players "$clients" \
    --flush-interval-ms "$flush_ms" --log warn
wait_health ok 30 || fail "the server did not report healthy after starting"

"$bots" --addr "127.0.0.1:$game_port" --clients "$clients" --ramp 3 --duration 600 \
    --name-prefix "$prefix" --seed "$seed" --ledger "$ledger" --quiet \
    >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!

alive() {
    kill -0 "$server_pid" 2>/dev/null || fail "$1: the server died"
    kill -0 "$bots_pid" 2>/dev/null || fail "$1: the bots ended"
    port_open "$game_port" || fail "$1: the server does not accept connections"
}

nap "$play_before"
alive "before the outage"
at_cut="$(lines_in "$ledger")"
((at_cut > 0)) || fail "no loot confirmed in ${play_before}s of play before the outage"
echo "$outage_mode" >"$control"
cut_at="$SECONDS"
log "outage: $outage_mode ($at_cut confirmations so far)"

# Through the outage: the server stays up and says it is degraded.
degraded=""
while ((SECONDS - cut_at < outage_secs)); do
    alive "during the outage"
    if [[ -z "$degraded" && "$(health)" == *'"status":"degraded"'* ]]; then
        degraded=$((SECONDS - cut_at))
        log "outage: /healthz degraded after ~${degraded}s, tether_storage_degraded $(metric tether_storage_degraded)"
    fi
    nap 1
done
[[ -n "$degraded" ]] || fail "/healthz never reported degraded during the ${outage_secs}s outage"
[[ "$(metric tether_storage_degraded)" == 1 ]] || fail "tether_storage_degraded is not 1 at the end of the outage"
at_restore="$(lines_in "$ledger")"

echo open >"$control"
restored_at="$SECONDS"
log "outage: over ($((at_restore - at_cut)) confirmations during it)"
wait_health ok 60 || fail "the server did not report healthy within 60 s of the database coming back"
log "healthy again after ~$((SECONDS - restored_at))s"
nap "$play_after"
alive "after the outage"
at_end="$(lines_in "$ledger")"
((at_end > at_restore)) || fail "no loot confirmed after the outage"

# Stop the bots as Ctrl-C would: they end the window, drain, log out and
# print their summary.
kill -INT "$bots_pid"
bots_status=0
wait "$bots_pid" || bots_status=$?
bots_pid=""
summary="$(tail -1 "$tmp/bots.json" 2>/dev/null || true)"
[[ "$summary" == \{* ]] || fail "tether-bots printed no summary (status $bots_status)"
SUMMARY="$summary" "$python" - <<'EOF' || fail "the bots' run failed (above)"
import json, os, sys
s = json.loads(os.environ["SUMMARY"])
print("outage-test: bots: {connected}/{clients} connected at the end, {kills} kills, "
      "{errors} errors, {disconnects} disconnects, {inputs_lost} inputs lost".format(**s),
      file=sys.stderr)
sys.exit(1 if s["inputs_lost"] else 0)
EOF
[[ "$bots_status" == 0 ]] || fail "tether-bots exited with status $bots_status"

verify_ledger "$ledger"

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
log "passed: $at_end confirmations ($((at_end - at_restore)) after the outage), 0 missing"
