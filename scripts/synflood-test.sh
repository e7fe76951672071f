#!/usr/bin/env bash
# SYN flood: the server and the bots run in two network namespaces joined by
# a veth pair. hping3 floods the game port with SYNs from random (spoofed)
# source addresses while 200 legit players log in and play; none of them may
# see an error. With SYN cookies on (the kernel default, set explicitly in
# the server's namespace here) the kernel answers the flood without keeping
# state, so the listen queues never fill with half-open connections and the
# server process does not even see the flood.
#
#   scripts/synflood-test.sh [SERVER_BINARY] [BOTS_BINARY]
#
# Binaries default to target/debug/tether and target/debug/tether-bots (this
# script builds nothing). Needs root for `ip netns` and hping3 (installed
# with apt-get when missing). Where namespaces, veth pairs or hping3 are not
# available it prints "SKIP: ..." and exits 0. The host's own interfaces,
# addresses and settings are never touched: addresses, routes and sysctls
# live inside the two namespaces, which are deleted on exit with everything
# in them. Bounded: a watchdog ends the run after SYNFLOOD_TIMEOUT seconds.
#
# Settings (environment): SYNFLOOD_CLIENTS (200), SYNFLOOD_SECS (20, the
# bots' --duration), SYNFLOOD_INTERVAL (u100: hping3's gap between SYNs,
# 10,000 a second; "flood" for as fast as one core can send),
# SYNFLOOD_BACKLOG (1024: the server's --listen-backlog, which also bounds
# the kernel's queue of half-open connections; small enough that a flood
# of 10,000 SYNs a second overflows it within the run, so the players
# connect through SYN cookies), SYNFLOOD_SEED (42), SYNFLOOD_TIMEOUT (180).
#
# Exit status: 0 passed or skipped, 1 a check failed, 2 set-up error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "$root/scripts/common.sh"
server="${1:-$root/target/debug/tether}"
bots="${2:-$root/target/debug/tether-bots}"
clients="${SYNFLOOD_CLIENTS:-200}"
secs="${SYNFLOOD_SECS:-20}"
interval="${SYNFLOOD_INTERVAL:-u100}"
seed="${SYNFLOOD_SEED:-42}"
backlog="${SYNFLOOD_BACKLOG:-1024}"
hard_timeout="${SYNFLOOD_TIMEOUT:-180}"
ramp=5

log() { echo "synflood: $*" >&2; }
skip() {
    echo "SKIP: synflood test: $*"
    exit 0
}

for bin in "$server" "$bots"; do
    if [[ ! -x "$bin" ]]; then
        log "no binary at $bin (build first: cargo build -p tether-server -p tether-bots)"
        exit 2
    fi
done

[[ "$(id -u)" == 0 ]] || skip "needs root for ip netns and raw sockets (running as uid $(id -u))"
command -v ip >/dev/null || skip "no ip(8) (iproute2)"

# Names unique to this run (interface names are at most 15 characters).
ns_srv="tether-sf-srv-$$"
ns_bots="tether-sf-bots-$$"
veth_srv="tsfs$$"
veth_bots="tsfb$$"
addr_srv="10.78.78.1"
addr_bots="10.78.78.2"
game="$addr_srv:7777"
admin="$addr_srv:7780"
# The admin listener is on the namespace's address, not loopback: the server
# then needs admin tokens (a random one per run).
admin_token="$(printf 'tether-test-%08x%08x' $RANDOM$RANDOM $RANDOM$RANDOM)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-synflood.XXXXXX")"
server_pid=""
bots_pid=""
flood_pid=""
watchdog_pid=""
created_srv=0
created_bots=0

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null || true
    stop "$flood_pid"
    stop "$bots_pid"
    stop "$server_pid"
    ((created_bots)) && ip netns del "$ns_bots" 2>/dev/null || true
    ((created_srv)) && ip netns del "$ns_srv" 2>/dev/null || true
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_watchdog synflood "$hard_timeout"

# ---- hping3 -----------------------------------------------------------------

if ! command -v hping3 >/dev/null && command -v apt-get >/dev/null; then
    log "no hping3; trying apt-get install hping3"
    if ! timeout 180 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q hping3 >"$tmp/apt.log" 2>&1; then
        log "apt-get install hping3 failed:"
        tail -3 "$tmp/apt.log" >&2 || true
    fi
fi
command -v hping3 >/dev/null || skip "no hping3 (apt-get install hping3)"

# ---- namespaces and the veth pair ----------------------------------------

netns_pair
# SYN-ACKs to the spoofed sources leave by the veth and are dropped on the
# other side, as they would be lost on the internet.
ip -n "$ns_srv" route add default dev "$veth_srv"

# The kernel settings docs/OPERATIONS.md recommends, in the server's
# namespace only (each of these is per network namespace).
for setting in net.ipv4.tcp_syncookies=1 net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192; do
    if ! ip netns exec "$ns_srv" sysctl -q -w "$setting" 2>"$tmp/err"; then
        log "warning: cannot set $setting in the namespace ($(head -1 "$tmp/err"))"
    fi
done
log "namespaces $ns_srv / $ns_bots; server namespace: $(ip netns exec "$ns_srv" sysctl -n net.ipv4.tcp_syncookies 2>/dev/null | sed 's/^/tcp_syncookies=/')" \
    "$(ip netns exec "$ns_srv" sysctl -n net.ipv4.tcp_max_syn_backlog 2>/dev/null | sed 's/^/tcp_max_syn_backlog=/')" \
    "$(ip netns exec "$ns_srv" sysctl -n net.core.somaxconn 2>/dev/null | sed 's/^/somaxconn=/')"

# ---- the server -----------------------------------------------------------

# The legit players all come from the bots' one address: trusted, as
# 127.0.0.1 is by default, so per-address limits do not count them as a flood.
ip netns exec "$ns_srv" env TETHER_ADMIN_OPERATOR_TOKEN="$admin_token" TETHER_ADMIN_VIEWER_TOKEN="$admin_token-viewer" \
    "$server" --listen "$game" --admin-listen "$admin" \
    --data-dir "$tmp/data" --log warn --world-players "$clients" \
    --trusted-cidrs "$addr_bots/32" --listen-backlog "$backlog" >"$tmp/server.log" 2>&1 &
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

syncookies_sent() {
    ip netns exec "$ns_srv" awk '
        /^TcpExt:/ { if (!n) { split($0, k); n = 1 } else { split($0, v); for (i in k) if (k[i] == "SyncookiesSent") print v[i] } }
    ' /proc/net/netstat 2>/dev/null || echo 0
}
metrics() {
    ip netns exec "$ns_bots" timeout 5 bash -c '
        exec 3<>"/dev/tcp/$1/$2"
        printf "GET /metrics HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n" "$1" "$3" >&3
        cat <&3' _ "${admin%:*}" "${admin#*:}" "$admin_token-viewer"
}
metric() {
    awk -v name="$1" '$1 == name || index($1, name "{") == 1 { s += $NF } END { printf "%d\n", s }' "$tmp/metrics"
}

# ---- the flood and the run ------------------------------------------------

cookies_before=$(syncookies_sent)
if [[ "$interval" == flood ]]; then
    rate_flag=(--flood)
else
    rate_flag=(-i "$interval")
fi
ip netns exec "$ns_bots" hping3 -q -S -p "${game#*:}" "${rate_flag[@]}" --rand-source "${game%:*}" \
    >"$tmp/hping.log" 2>&1 &
flood_pid=$!
nap 2
if ! kill -0 "$flood_pid" 2>/dev/null; then
    log "hping3 did not start:"
    cat "$tmp/hping.log" >&2
    exit 2
fi
log "SYN flood on (hping3 ${rate_flag[*]} --rand-source); $clients players for ${ramp}+${secs}s"

started=$SECONDS
bots_status=0
ip netns exec "$ns_bots" timeout $((ramp + secs + 60)) "$bots" --addr "$game" --admin "$admin" --admin-token "$admin_token-viewer" \
    --clients "$clients" --ramp "$ramp" --duration "$secs" --scenario standard \
    --seed "$seed" >"$tmp/bots.json" 2>"$tmp/bots.log" &
bots_pid=$!
wait "$bots_pid" || bots_status=$?
bots_pid=""
log "bots finished after $((SECONDS - started))s (status $bots_status)"
half_open=$(ip netns exec "$ns_srv" ss -Htn state syn-recv 2>/dev/null | wc -l)
cookies_after=$(syncookies_sent)
metrics >"$tmp/metrics" 2>/dev/null || true
kill -INT "$flood_pid" 2>/dev/null || true
stop "$flood_pid"
flood_pid=""
sent=$(grep -o '[0-9]* packets transmitted' "$tmp/hping.log" | head -1 | cut -d' ' -f1)

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
    v="$(printf '%s' "$summary" | grep -o "\"$1\":-\\?[0-9.]\\+" | head -1 | cut -d: -f2)"
    echo "${v:--1}"
}
connected=$(field connected)
errors=$(field errors)
inputs_lost=$(field inputs_lost)
p99=$(printf '%s' "$summary" | grep -o '"p99":[0-9.]*' | head -1 | cut -d: -f2)
cookies=$((cookies_after - cookies_before))
log "hping3 sent ${sent:-?} SYNs; at the end $half_open half-open connections were queued and the kernel had answered $cookies SYNs with cookies"
log "bots: connected $connected/$clients, errors $errors, inputs lost $inputs_lost, rtt p99 ${p99:-?} ms"
if [[ -s "$tmp/metrics" ]]; then
    log "server: accepted $(metric tether_accepted_total) connections, refused $(metric tether_refused_connections_total)"
fi

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
check "every player is connected at the end ($connected == $clients)" test "$connected" -eq "$clients"
check "no player saw an error ($errors == 0)" test "$errors" -eq 0
check "no input lost ($inputs_lost == 0)" test "$inputs_lost" -eq 0
if ((cookies <= 0)); then
    log "note: no SYN cookies were sent: the flood did not fill the SYN queue (raise SYNFLOOD_INTERVAL's rate or lower SYNFLOOD_BACKLOG)"
fi
if ((failed)); then
    log "bots log (tail):"
    tail -20 "$tmp/bots.log" >&2 || true
    log "server log (tail):"
    tail -20 "$tmp/server.log" >&2 || true
    exit 1
fi
log "passed"
