# Helpers shared by the test scripts (sourced, not run): stopping a process,
# a signal-friendly sleep, a watchdog, free loopback ports, a pair of
# network namespaces joined by a veth pair, and starting a server with
# retries.
#
# `pick_ports` uses `$python` (default python3). `start_watchdog NAME SECS`
# sets `watchdog_pid`; the sourcing script kills it in its cleanup.

# SIGTERM, then SIGKILL after 5 s; reaps the process. No-op without a PID.
stop() {
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# Sleeps in the background and waits, so that a signal runs the traps at once
# (bash defers them while a foreground command runs).
nap() {
    sleep "$1" &
    wait $!
}

# The watchdog: whatever hangs, the run ends (and cleans up) after SECS.
start_watchdog() {
    local name="$1" secs="$2"
    (
        trap 'kill "$nap_pid" 2>/dev/null; exit 0' TERM
        sleep "$secs" &
        nap_pid=$!
        wait "$nap_pid"
        echo "$name: FAILED: still running after ${secs}s, stopping" >&2
        kill -TERM $$ 2>/dev/null
    ) &
    watchdog_pid=$!
}

# Two distinct free loopback ports below the kernel's ephemeral range when it
# can (other processes' outgoing connections take their ports from that
# range and could grab ours between the probe and the server's bind).
# Probed, released, then used: a small race remains, so callers retry a
# failed start on new ports.
pick_ports() {
    "${python:-python3}" -c '
import random, socket
try:
    lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    lo = 32768
ports = []
for _ in range(200):
    p = random.randint(10000, max(10001, lo - 1))
    if p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
    if len(ports) == 2:
        break
while len(ports) < 2:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    ports.append(s.getsockname()[1])
    s.close()
print(*ports)
'
}

# Two network namespaces, `$ns_srv` and `$ns_bots`, joined by a veth pair
# (`$veth_srv` at `$addr_srv/24`, `$veth_bots` at `$addr_bots/24`), each
# with its loopback up. The pair is created directly inside the namespaces:
# nothing appears on the host. Sets `created_srv` / `created_bots` as each
# namespace exists (the caller's cleanup deletes them, and with them the
# pair); calls the caller's `skip` if the host does not allow it. Uses
# `$tmp` for error text.
netns_pair() {
    if ! ip netns add "$ns_srv" 2>"$tmp/err"; then
        skip "ip netns is not permitted here ($(head -1 "$tmp/err"))"
    fi
    created_srv=1
    if ! ip netns add "$ns_bots" 2>"$tmp/err"; then
        skip "ip netns is not permitted here ($(head -1 "$tmp/err"))"
    fi
    created_bots=1
    if ! ip link add "$veth_srv" netns "$ns_srv" type veth peer name "$veth_bots" netns "$ns_bots" 2>"$tmp/err"; then
        skip "cannot create a veth pair ($(head -1 "$tmp/err"))"
    fi
    ip -n "$ns_srv" link set lo up
    ip -n "$ns_bots" link set lo up
    ip -n "$ns_srv" addr add "$addr_srv/24" dev "$veth_srv"
    ip -n "$ns_bots" addr add "$addr_bots/24" dev "$veth_bots"
    ip -n "$ns_srv" link set "$veth_srv" up
    ip -n "$ns_bots" link set "$veth_bots" up
}

# Waits (10 s at most) for a server's /healthz on its admin PORT; fails at
# once if the process PID is gone.
wait_healthz() {
    local port="$1" pid="$2"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# Runs START (a function that picks ports, starts the server, sets
# `server_pid` and returns 0 once it serves) up to three times, showing the
# head of LOG after each failure; exits 2 if it never starts.
start_with_retries() {
    local start="$1" log_file="$2" attempt
    for attempt in 1 2 3; do
        "$start" && return 0
        echo "server start $attempt failed:" >&2
        sed 's/^/  server: /' "$log_file" | head -5 >&2 || true
        stop "$server_pid"
        server_pid=""
    done
    echo "the server did not start" >&2
    exit 2
}
