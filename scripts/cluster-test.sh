#!/usr/bin/env bash
# Cluster failover test (docs/OPERATIONS.md, "Running a cluster"): three
# servers over the real NATS and PostgreSQL, players spread over them; then
#
# 0. an operator moves players between the servers while they fight
#    (channel changes): each one plays on at the other server;
# 1. one server is killed with SIGKILL while it holds players: each of its
#    players must be playing on one of the other two within CLUSTER_LIMIT_MS
#    (10000) by themselves (their clients resume elsewhere; the account is
#    free once the dead server's lease ends; the session comes back from
#    PostgreSQL), none logs in again, no input is lost;
# 2. NATS is cut for CLUSTER_OUTAGE seconds (a TCP proxy between the servers
#    and NATS drops every connection and refuses new ones): the servers keep
#    every player (no one is dropped), report the link down
#    (tether_cluster_nats_connected 0), and report it back up after;
# 3. at the end every confirmed loot is still there (`tether-bots
#    --verify-ledger`, through any server: the verifier follows redirects).
#
#   scripts/cluster-test.sh [SERVER_BINARY [BOTS_BINARY]]
#
# NATS from TETHER_TEST_NATS (nats://127.0.0.1:4222) and PostgreSQL from
# TETHER_TEST_POSTGRES (postgres://postgres@127.0.0.1:5432/test); skipped
# (exit 0, with a message) when either does not answer. A cluster name and
# account names of its own, so it never meets another run. Binaries default
# to target/debug/tether and target/debug/tether-bots; this script builds
# nothing. Bounded by a watchdog (CLUSTER_TIMEOUT, 300 s); every process it
# started is stopped and its temporary directory removed on exit. Prints
# one JSON line of figures.
#
# Settings (environment): CLUSTER_CLIENTS (150), CLUSTER_LIMIT_MS (10000),
# CLUSTER_OUTAGE (10 s), CLUSTER_LEASE_MS (5000), CLUSTER_SEED (13),
# CLUSTER_TIMEOUT (300), CLUSTER_KEEP_LOGS (a directory: the servers', the
# bots' and the proxy's logs are copied there at the end).
#
# Exit status: 0 passed (or skipped), 1 a check failed, 2 could not run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
server="${1:-$target/debug/tether}"
bots="${2:-$target/debug/tether-bots}"
nats_url="${TETHER_TEST_NATS:-nats://127.0.0.1:4222}"
pg_url="${TETHER_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
clients="${CLUSTER_CLIENTS:-150}"
limit_ms="${CLUSTER_LIMIT_MS:-10000}"
outage="${CLUSTER_OUTAGE:-10}"
lease_ms="${CLUSTER_LEASE_MS:-5000}"
seed="${CLUSTER_SEED:-13}"
hard_timeout="${CLUSTER_TIMEOUT:-300}"
name=cluster-test
python="${PYTHON:-python3}"
# shellcheck source=common.sh
source "$root/scripts/common.sh"

log() { echo "$name: $*" >&2; }
die() {
    log "cannot run: $*"
    exit 2
}
for bin in "$server" "$bots"; do
    [[ -x "$bin" ]] || die "no binary at $bin (build first: cargo build -p tether-server -p tether-bots)"
done

# host:port of a nats:// or postgres:// URL.
host_port() {
    "$python" -c "
import sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
print(f'{u.hostname}:{u.port or sys.argv[2]}')" "$1" "$2"
}
reachable() {
    local hp="$1"
    "$python" -c "import socket,sys; h,p=sys.argv[1].rsplit(':',1); socket.create_connection((h,int(p)),1).close()" "$hp" 2>/dev/null
}
nats_hp="$(host_port "$nats_url" 4222)"
pg_hp="$(host_port "$pg_url" 5432)"
if ! reachable "$nats_hp" || ! reachable "$pg_hp"; then
    log "skipped: NATS ($nats_hp) or PostgreSQL ($pg_hp) does not answer (set TETHER_TEST_NATS / TETHER_TEST_POSTGRES)"
    exit 0
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-$name.XXXXXX")"
pids=()
games=()
admins=()
bots_pid=""
proxy_pid=""
watchdog_pid=""
cleanup() {
    [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null || true
    stop "$bots_pid"
    local p
    for p in "${pids[@]}"; do
        stop "$p"
    done
    stop "$proxy_pid"
    if [[ -n "${CLUSTER_KEEP_LOGS:-}" ]]; then
        mkdir -p "$CLUSTER_KEEP_LOGS" && cp "$tmp"/*.log "$tmp"/*.json "$CLUSTER_KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_watchdog "$name" "$hard_timeout"

fail() {
    log "FAILED: $*"
    local i
    for i in 0 1 2; do
        if [[ -f "$tmp/n$i.log" ]]; then
            log "server n$i log (tail):"
            tail -8 "$tmp/n$i.log" >&2 || true
        fi
    done
    [[ -f "$tmp/bots.log" ]] && tail -5 "$tmp/bots.log" >&2
    exit 1
}

now_ms() { "$python" -c 'import time; print(int(time.time() * 1000))'; }

# A metric of server I (summed over label sets; `metric I NAME LABEL=VALUE`
# sums only those), empty when it does not answer.
metric() {
    local port="${admins[$1]}"
    "$python" - "$port" "$2" "${3:-}" <<'PY'
import sys, urllib.request
port, name, want = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
except Exception:
    raise SystemExit(0)
if want:
    k, v = want.split("=", 1)
    want = f'{k}="{v}"'
total, seen = 0.0, False
for line in text.splitlines():
    parts = line.split()
    if line.startswith("#") or len(parts) < 2:
        continue
    if parts[0].split("{")[0] == name and want in parts[0]:
        total += float(parts[1])
        seen = True
if seen:
    print(int(total))
PY
}

# Players with an active session on the servers still running.
active_total() {
    local i sum=0 v
    for i in "${!admins[@]}"; do
        [[ -n "${pids[$i]}" ]] || continue
        v="$(metric "$i" tether_sessions state=active)"
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# NATS behind a proxy this test can cut.
"$python" "$root/scripts/tcp-cut-proxy.py" --upstream "$nats_hp" --control "$tmp/nats.mode" \
    --port-file "$tmp/nats.port" >"$tmp/proxy.log" 2>&1 &
proxy_pid=$!
for _ in $(seq 1 50); do
    [[ -s "$tmp/nats.port" ]] && break
    nap 0.1
done
[[ -s "$tmp/nats.port" ]] || die "the NATS proxy did not start"
proxied="nats://127.0.0.1:$(cat "$tmp/nats.port")"

cluster="ct$(printf '%05x' $(((RANDOM << 15 | RANDOM) & 0xfffff)))"
prefix="${cluster}_"
ledger="$tmp/ledger.jsonl"
log "cluster $cluster: 3 servers, NATS $nats_hp (through a cut proxy), PostgreSQL $pg_hp, $clients players, lease ${lease_ms} ms"

start_node() {
    local i="$1" game admin
    read -r game admin < <(pick_ports)
    RUST_BACKTRACE=1 "$server" --listen "127.0.0.1:$game" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$tmp/n$i" --store "$pg_url" --cluster "$proxied" --cluster-name "$cluster" \
        --node "n$i" --cluster-lease-ms "$lease_ms" --flush-interval-ms 1000 \
        --world-players "$clients" --log warn >>"$tmp/n$i.log" 2>&1 &
    pids[i]=$!
    games[i]="$game"
    admins[i]="$admin"
    wait_healthz "$admin" "${pids[$i]}"
}
for i in 0 1 2; do
    ok=""
    for attempt in 1 2 3; do
        if start_node "$i"; then
            ok=1
            break
        fi
        stop "${pids[$i]}"
        log "server n$i start $attempt failed"
    done
    [[ -n "$ok" ]] || { tail -5 "$tmp/n$i.log" >&2; die "server n$i did not start"; }
done
# Every server sees the three.
for i in 0 1 2; do
    for _ in $(seq 1 100); do
        [[ "$(metric "$i" tether_cluster_nodes)" == 3 ]] && break
        nap 0.1
    done
    [[ "$(metric "$i" tether_cluster_nodes)" == 3 ]] || fail "server n$i does not see the three servers"
done

duration=$((35 + outage + 40))
"$bots" --addr "127.0.0.1:${games[0]}" --other-addrs "127.0.0.1:${games[1]},127.0.0.1:${games[2]}" \
    --clients "$clients" --ramp 5 --duration "$duration" --name-prefix "$prefix" --seed "$seed" \
    --ledger "$ledger" --quiet >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!

wait_active() {
    local what="$1" limit="$2" started active
    started="$(now_ms)"
    while true; do
        kill -0 "$bots_pid" 2>/dev/null || fail "$what: the bots ended"
        active="$(active_total)"
        if ((active >= clients)); then
            waited_ms=$(($(now_ms) - started))
            return 0
        fi
        (($(now_ms) - started < limit)) || fail "$what: only $active of $clients players active after $limit ms"
        nap 0.05
    done
}
wait_active "login" 60000
spread="$(for i in 0 1 2; do printf '%s ' "n$i:$(metric "$i" tether_sessions state=active)"; done)"
log "every player in: $spread"
nap 5

# 0. Channel changes: an operator moves players between the servers while
# they fight (their loot must neither vanish nor double: the ledger check
# at the end covers it).
moved="$("$python" - "$prefix" "${admins[@]}" <<'PY'
import json, sys, urllib.request
prefix, admins = sys.argv[1], sys.argv[2:]
ids = [f"n{i}" for i in range(len(admins))]
moved = 0
for i, admin in enumerate(admins):
    url = f"http://127.0.0.1:{admin}/v1/players?q={prefix}&limit=8"
    rows = json.load(urllib.request.urlopen(url, timeout=5))
    to = ids[(i + 1) % len(ids)]
    for row in rows:
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin}/v1/players/{row['account']}/move",
            data=json.dumps({"node": to}).encode(), method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
            moved += 1
        except urllib.error.HTTPError as e:
            print(f"move {row['account']} -> {to}: {e.code} {e.read().decode()}", file=sys.stderr)
print(moved)
PY
)"
((moved > 0)) || fail "no player could be moved"
wait_active "moves" 20000
log "moved $moved players to the next server; every player playing again ${waited_ms} ms later"
nap 5

# 1. SIGKILL the server holding the most players.
victim=0
most=-1
for i in 0 1 2; do
    v="$(metric "$i" tether_sessions state=active)"
    if ((${v:-0} > most)); then
        most="${v:-0}"
        victim="$i"
    fi
done
((most > 0)) || fail "no server holds players"
kill -KILL "${pids[$victim]}"
wait "${pids[$victim]}" 2>/dev/null || true
pids[victim]=""
log "killed n$victim (SIGKILL) with $most players on it"
wait_active "failover" $((limit_ms * 3))
failover_ms="$waited_ms"
spread="$(for i in 0 1 2; do [[ -n "${pids[$i]}" ]] && printf '%s ' "n$i:$(metric "$i" tether_sessions state=active)"; done)"
log "failover: every player playing again ${failover_ms} ms after the kill ($spread)"
((failover_ms <= limit_ms)) || fail "failover took ${failover_ms} ms, over ${limit_ms} ms"
taken=0
for i in 0 1 2; do
    [[ -n "${pids[$i]}" ]] || continue
    v="$(metric "$i" tether_cluster_accounts_total outcome=taken_from_gone_server)"
    taken=$((taken + ${v:-0}))
done
((taken > 0)) || fail "no account was taken over from the killed server"
nap 5

# 2. NATS away: the servers keep their players.
before="$(active_total)"
echo cut >"$tmp/nats.mode"
log "NATS cut for ${outage}s"
down_seen=""
lowest="$before"
end=$(($(now_ms) + outage * 1000))
while (($(now_ms) < end)); do
    a="$(active_total)"
    ((a < lowest)) && lowest="$a"
    d=1
    for i in 0 1 2; do
        [[ -n "${pids[$i]}" ]] || continue
        [[ "$(metric "$i" tether_cluster_nats_connected)" == 0 ]] || d=""
    done
    [[ -n "$d" ]] && down_seen=1
    nap 0.25
done
[[ -n "$down_seen" ]] || fail "the servers never reported NATS down during the cut"
((lowest >= clients)) || fail "players were dropped while NATS was away: $lowest of $clients active at the lowest"
echo open >"$tmp/nats.mode"
started="$(now_ms)"
for i in 0 1 2; do
    [[ -n "${pids[$i]}" ]] || continue
    until [[ "$(metric "$i" tether_cluster_nats_connected)" == 1 ]]; do
        (($(now_ms) - started < 30000)) || fail "server n$i did not reconnect to NATS within 30 s"
        nap 0.1
    done
done
nats_back_ms=$(($(now_ms) - started))
log "NATS back: every server reconnected ${nats_back_ms} ms after the cut ended; all $lowest players kept throughout"

log "waiting for the bots to finish their ${duration}s run"
wait "$bots_pid" || fail "the bots exited with an error (see $tmp/bots.log)"
bots_pid=""
summary="$(tail -1 "$tmp/bots.json")"
[[ "$summary" == \{* ]] || fail "the bots printed no summary"

alive=0
for i in 0 1 2; do [[ -n "${pids[$i]}" ]] && alive="$i"; done
"$bots" --addr "127.0.0.1:${games[$alive]}" --verify-ledger "$ledger" >"$tmp/verify.json" 2>"$tmp/verify.log" ||
    { tail -5 "$tmp/verify.log" >&2; fail "--verify-ledger failed"; }
verdict="$(tail -1 "$tmp/verify.json")"

SUMMARY="$summary" VERDICT="$verdict" CLIENTS="$clients" FAILOVER="$failover_ms" MOST="$most" MOVED="$moved" \
    NATS_BACK="$nats_back_ms" OUTAGE="$outage" LEASE="$lease_ms" TAKEN="$taken" "$python" - <<'PY' || fail "a check failed (see above)"
import json, os, sys
s = json.loads(os.environ["SUMMARY"])
v = json.loads(os.environ["VERDICT"])
n = int(os.environ["CLIENTS"])
out = {
    "players": n,
    "servers": 3,
    "lease_ms": int(os.environ["LEASE"]),
    "moved_players": int(os.environ["MOVED"]),
    "killed_server_players": int(os.environ["MOST"]),
    "failover_ms": int(os.environ["FAILOVER"]),
    "accounts_taken_from_killed_server": int(os.environ["TAKEN"]),
    "nats_outage_s": int(os.environ["OUTAGE"]),
    "nats_reconnect_ms": int(os.environ["NATS_BACK"]),
    "pause_p99_ms": s["outage_ms"]["p99"],
    "pause_max_ms": s["outage_ms"]["max"],
    "inputs_lost": s["inputs_lost"],
    "logins": s["logins"],
    "resumed": s["resumed"],
    "bots_errors": s["errors"],
    "bots_connect_failures": s["connect_failures"],
    "ledger_confirmations": v["confirmations"],
    "ledger_missing": v["missing"],
}
print(json.dumps(out))
bad = []
if s["inputs_lost"]:
    bad.append(f"{s['inputs_lost']} inputs lost")
if s["logins"] != n:
    bad.append(f"{s['logins']} logins for {n} players (a player had to log in again, or never did)")
if v["confirmations"] == 0:
    bad.append("no loot was confirmed, so nothing was tested")
if v["missing"]:
    bad.append(f"{v['missing']} confirmed loot missing")
    for m in v["misses"]:
        print("cluster-test: MISSING: " + json.dumps(m), file=sys.stderr)
for b in bad:
    print("cluster-test: FAILED: " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
log "passed"
