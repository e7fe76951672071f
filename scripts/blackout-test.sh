#!/usr/bin/env bash
# Network blackout: the server and the bots run in two network namespaces
# joined by a veth pair. A while after the bots log in, every packet between
# them is dropped (iptables, or nft) for 30 s, then traffic flows again. Both
# sides see silence past the 15 s heartbeat timeout, so every session turns
# zombie on the server and every bot reconnects; the sessions must come back
# by resume (zombie grace 120 s) with no new login, and no input may be lost.
#
#   scripts/blackout-test.sh [SERVER_BINARY] [BOTS_BINARY]
#
# Binaries default to target/debug/tether and target/debug/tether-bots (this
# script builds nothing). Needs root for `ip netns`; where namespaces or veth
# pairs cannot be created it prints "SKIP: ..." and exits 0. The host's own
# interfaces, addresses and firewall are never touched: addresses and rules
# live inside the two namespaces, which are deleted on exit with everything
# in them. Bounded: a watchdog ends the run after BLACKOUT_TIMEOUT seconds.
#
# Settings (environment): BLACKOUT_CLIENTS (50), BLACKOUT_AT (12 s after the
# bots start), BLACKOUT_SECS (30), BLACKOUT_RUN_SECS (75: ramp + window),
# BLACKOUT_SEED (42), BLACKOUT_TIMEOUT (240).
#
# Exit status: 0 passed or skipped, 1 a check failed, 2 set-up error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "$root/scripts/common.sh"
server="${1:-$root/target/debug/tether}"
bots="${2:-$root/target/debug/tether-bots}"
clients="${BLACKOUT_CLIENTS:-50}"
blackout_at="${BLACKOUT_AT:-12}"
blackout_secs="${BLACKOUT_SECS:-30}"
run_secs="${BLACKOUT_RUN_SECS:-75}"
seed="${BLACKOUT_SEED:-42}"
hard_timeout="${BLACKOUT_TIMEOUT:-240}"
ramp=5
duration=$((run_secs - ramp))

log() { echo "blackout: $*" >&2; }
skip() {
    echo "SKIP: blackout test: $*"
    exit 0
}

for bin in "$server" "$bots"; do
    if [[ ! -x "$bin" ]]; then
        log "no binary at $bin (build first: cargo build -p tether-server -p tether-bots)"
        exit 2
    fi
done
if (( duration < blackout_at + blackout_secs + 15 )); then
    log "BLACKOUT_RUN_SECS=$run_secs leaves no time to resume after the blackout"
    exit 2
fi

[[ "$(id -u)" == 0 ]] || skip "needs root for ip netns (running as uid $(id -u))"
command -v ip >/dev/null || skip "no ip(8) (iproute2)"

# Names unique to this run: two scripts never share namespaces or veths
# (interface names are at most 15 characters).
ns_srv="tether-bo-srv-$$"
ns_bots="tether-bo-bots-$$"
veth_srv="tbos$$"
veth_bots="tbob$$"
addr_srv="10.77.77.1"
addr_bots="10.77.77.2"
game="$addr_srv:7777"
admin="$addr_srv:7780"
# The admin listener is on the namespace's address, not loopback: the server
# then needs admin tokens (a random one per run).
admin_token="$(printf 'tether-test-%08x%08x' $RANDOM$RANDOM $RANDOM$RANDOM)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-blackout.XXXXXX")"
server_pid=""
bots_pid=""
watchdog_pid=""
created_srv=0
created_bots=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null || true
    stop "$bots_pid"
    stop "$server_pid"
    # Deleting a namespace destroys its end of the veth pair, the pair with
    # it, and the namespace's firewall rules.
    ((created_bots)) && ip netns del "$ns_bots" 2>/dev/null || true
    ((created_srv)) && ip netns del "$ns_srv" 2>/dev/null || true
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_watchdog blackout "$hard_timeout"

# ---- namespaces and the veth pair ----------------------------------------

netns_pair

# ---- the firewall tool ----------------------------------------------------

if ! command -v iptables >/dev/null && ! command -v nft >/dev/null && command -v apt-get >/dev/null; then
    log "neither iptables nor nft found; trying apt-get install iptables"
    if ! timeout 180 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables >"$tmp/apt.log" 2>&1; then
        log "apt-get install iptables failed:"
        tail -3 "$tmp/apt.log" >&2 || true
    fi
fi
# Every rule goes into the server's namespace, on its veth end only: that
# cuts both directions and leaves the namespace's loopback alone.
if command -v iptables >/dev/null && ip netns exec "$ns_srv" iptables -w -S >/dev/null 2>&1; then
    firewall=iptables
    blackout_on() {
        ip netns exec "$ns_srv" iptables -w -A INPUT -i "$veth_srv" -j DROP
        ip netns exec "$ns_srv" iptables -w -A OUTPUT -o "$veth_srv" -j DROP
    }
    blackout_off() {
        ip netns exec "$ns_srv" iptables -w -D INPUT -i "$veth_srv" -j DROP
        ip netns exec "$ns_srv" iptables -w -D OUTPUT -o "$veth_srv" -j DROP
    }
elif command -v nft >/dev/null && ip netns exec "$ns_srv" nft list tables >/dev/null 2>&1; then
    firewall=nft
    blackout_on() {
        ip netns exec "$ns_srv" nft -f - <<EOF
table inet tether_blackout {
    chain input { type filter hook input priority 0; policy accept; iifname "$veth_srv" drop; }
    chain output { type filter hook output priority 0; policy accept; oifname "$veth_srv" drop; }
}
EOF
    }
    blackout_off() {
        ip netns exec "$ns_srv" nft delete table inet tether_blackout
    }
else
    skip "no usable iptables or nft (install the iptables package)"
fi
log "namespaces $ns_srv / $ns_bots, veth $veth_srv <-> $veth_bots, firewall: $firewall"

# ---- the server -----------------------------------------------------------

# Default heartbeat timeout (15 s) and zombie grace (120 s): the blackout
# outlasts the first and stays well inside the second.
# The bots' one address is trusted (exempt from per-IP limits), as 127.0.0.1
# is by default: 50 players reconnecting at once from one address is the
# test, not an attack.
ip netns exec "$ns_srv" env TETHER_ADMIN_OPERATOR_TOKEN="$admin_token" TETHER_ADMIN_VIEWER_TOKEN="$admin_token-viewer" \
    "$server" --listen "$game" --admin-listen "$admin" \
    --data-dir "$tmp/data" --log warn --trusted-cidrs "$addr_bots/32" >"$tmp/server.log" 2>&1 &
server_pid=$!
ready=0
for _ in $(seq 1 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    if ip netns exec "$ns_bots" timeout 1 bash -c "exec 3<>/dev/tcp/${game%:*}/${game#*:}" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.1
done
if ((ready == 0)); then
    log "the server did not start; its log:"
    sed 's/^/  server: /' "$tmp/server.log" >&2 || true
    exit 2
fi

# One scrape of the server's counters, from the bots' side of the link.
metrics() {
    ip netns exec "$ns_bots" timeout 5 bash -c '
        exec 3<>"/dev/tcp/$1/$2"
        printf "GET /metrics HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n" "$1" "$3" >&3
        cat <&3' _ "${admin%:*}" "${admin#*:}" "$admin_token-viewer"
}
# Sum of every sample of a counter (all label sets).
metric() {
    awk -v name="$1" '$1 == name || index($1, name "{") == 1 { s += $NF } END { printf "%d\n", s }' "$tmp/metrics"
}

# ---- the run --------------------------------------------------------------

log "$clients bots for ${run_secs}s; blackout from ${blackout_at}s for ${blackout_secs}s"
started=$SECONDS
ip netns exec "$ns_bots" timeout $((run_secs + 60)) "$bots" --addr "$game" --admin "$admin" --admin-token "$admin_token-viewer" \
    --clients "$clients" --duration "$duration" --ramp "$ramp" --scenario standard \
    --move-hz 5 --seed "$seed" >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!

nap "$blackout_at"
kill -0 "$bots_pid" 2>/dev/null || { log "the bots ended early:"; cat "$tmp/bots.log" >&2; exit 1; }
blackout_on
log "blackout on at $((SECONDS - started))s"
nap "$blackout_secs"
blackout_off
log "blackout off at $((SECONDS - started))s"

bots_status=0
wait "$bots_pid" || bots_status=$?
bots_pid=""
log "bots finished at $((SECONDS - started))s (status $bots_status)"
metrics >"$tmp/metrics" 2>/dev/null || true
if [[ "$bots_status" != 0 ]]; then
    log "tether-bots failed (status $bots_status); its log:"
    tail -20 "$tmp/bots.log" >&2 || true
    exit 1
fi

# ---- checks ---------------------------------------------------------------

summary="$(tail -1 "$tmp/bots.json")"
echo "$summary"
field() {
    local v
    v="$(printf '%s' "$summary" | grep -o "\"$1\":-\\?[0-9]\\+" | head -1 | cut -d: -f2)"
    echo "${v:--1}"
}
connected=$(field connected)
logins=$(field logins)
resumed=$(field resumed)
snapshots=$(field snapshots)
inputs_lost=$(field inputs_lost)
errors=$(field errors)
disconnects=$(field disconnects)
srv_logins=$(metric tether_logins_total)
srv_resumes=$(metric tether_resumes_total)
srv_refused=$(metric tether_resumes_refused_total)
srv_takeovers=$(metric tether_takeovers_total)
srv_expired=$(metric tether_zombie_expiries_total)
log "bots: connected $connected/$clients, logins $logins, resumed $resumed ($snapshots by snapshot)," \
    "inputs lost $inputs_lost, disconnects $disconnects, errors $errors (silence and failed reconnects count there)"
log "server: logins $srv_logins, resumes $srv_resumes, refused $srv_refused, take-overs $srv_takeovers," \
    "zombie expiries $srv_expired"

failed=0
check() {
    local what="$1"
    shift
    if "$@"; then
        log "ok: $what"
    else
        log "FAILED: $what"
        failed=1
    fi
}
check "every bot is connected at the end ($connected == $clients)" test "$connected" -eq "$clients"
check "no input lost ($inputs_lost == 0)" test "$inputs_lost" -eq 0
check "every bot resumed ($resumed >= $clients)" test "$resumed" -ge "$clients"
check "no bot logged in again ($logins == $clients)" test "$logins" -eq "$clients"
if [[ -s "$tmp/metrics" ]]; then
    check "the server saw one login per bot ($srv_logins == $clients)" test "$srv_logins" -eq "$clients"
    check "the server resumed every session ($srv_resumes >= $clients)" test "$srv_resumes" -ge "$clients"
    check "no resume refused ($srv_refused == 0)" test "$srv_refused" -eq 0
else
    log "warning: could not read the server's /metrics; server-side checks skipped"
fi

if ((failed)); then
    log "bots log (tail):"
    tail -20 "$tmp/bots.log" >&2 || true
    log "server log (tail):"
    tail -20 "$tmp/server.log" >&2 || true
    exit 1
fi
log "passed"
