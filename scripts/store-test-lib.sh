# Shared by scripts/crash-test.sh and scripts/outage-test.sh (sourced, not
# run): a temporary directory, free loopback ports, a server and bots started
# in the background and always stopped, a watchdog, and the ledger check.
#
# The sourcing script sets before sourcing: `name` (prefix of log lines),
# `server`, `bots`, `hard_timeout` (seconds); and may set `python`.
# It gets: `tmp`, `log`, `fail` (exit 1), `die` (exit 2: could not run),
# `nap`, `stop PID`, `start_server ARGS...` (sets `server_pid`, `game_port`,
# `admin_port`; keeps ports across restarts), `health` (prints the /healthz
# body), `wait_health STATUS SECS`, `metric NAME`, `verify_ledger FILE`
# (sets `verdict`), and `extra_pids` (stopped on exit too).

python="${python:-${PYTHON:-python3}}"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

log() { echo "$name: $*" >&2; }
die() {
    log "cannot run: $*"
    exit 2
}
fail() {
    log "FAILED: $*"
    if [[ -f "$tmp/server.log" ]]; then
        log "server log (tail):"
        tail -20 "$tmp/server.log" >&2 || true
    fi
    if [[ -f "$tmp/bots.log" ]]; then
        log "bots log (tail):"
        tail -10 "$tmp/bots.log" >&2 || true
    fi
    exit 1
}

for bin in "$server" "$bots"; do
    [[ -x "$bin" ]] || die "no binary at $bin (build first: cargo build -p tether-server -p tether-bots)"
done
command -v "$python" >/dev/null || die "no $python"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tether-$name.XXXXXX")"
server_pid=""
bots_pid=""
watchdog_pid=""
extra_pids=()
game_port=""
admin_port=""

cleanup() {
    [[ -n "$watchdog_pid" ]] && kill "$watchdog_pid" 2>/dev/null || true
    stop "$bots_pid"
    stop "$server_pid"
    local p
    for p in "${extra_pids[@]}"; do
        stop "$p"
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_watchdog "$name" "$hard_timeout"


port_open() {
    "$python" -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2).close()" 2>/dev/null
}

# Starts the server with the given extra flags on the ports of the previous
# start (a restart on the same addresses, as an operator would), or on new
# free ones; waits until the game port accepts. The server's log is appended
# to $tmp/server.log.
start_server() {
    local attempt
    for attempt in 1 2 3; do
        if [[ -z "$game_port" || "$attempt" -gt 1 ]]; then
            read -r game_port admin_port < <(pick_ports)
        fi
        echo "---- start (ports $game_port, $admin_port) ----" >>"$tmp/server.log"
        RUST_BACKTRACE=1 "$server" --listen "127.0.0.1:$game_port" \
            --admin-listen "127.0.0.1:$admin_port" "$@" >>"$tmp/server.log" 2>&1 &
        server_pid=$!
        local i
        for i in $(seq 1 150); do
            kill -0 "$server_pid" 2>/dev/null || break
            if port_open "$game_port"; then
                return 0
            fi
            nap 0.1
        done
        log "server start $attempt failed"
        stop "$server_pid"
        server_pid=""
    done
    fail "the server did not start"
}

# The /healthz body, or nothing when the admin port does not answer.
health() {
    "$python" -c "
import urllib.request, sys
try:
    r = urllib.request.urlopen('http://127.0.0.1:$admin_port/healthz', timeout=2)
    sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    sys.stdout.write(e.read().decode())
except Exception:
    pass
"
}

# Waits up to SECS for /healthz to report STATUS ("ok" or "degraded").
wait_health() {
    local want="$1" secs="$2" i body=""
    for i in $(seq 1 $((secs * 4))); do
        body="$(health)"
        if [[ "$body" == *"\"status\":\"$want\""* ]]; then
            return 0
        fi
        nap 0.25
    done
    log "/healthz still says ${body:-nothing} after ${secs}s (wanted $want)"
    return 1
}

# A metric's value summed over its label sets, from /metrics (empty when
# the server does not answer). `metric NAME LABEL=VALUE` sums only the
# series with that label.
metric() {
    "$python" -c "
import urllib.request
try:
    text = urllib.request.urlopen('http://127.0.0.1:$admin_port/metrics', timeout=2).read().decode()
except Exception:
    raise SystemExit(0)
total, seen = 0.0, False
for line in text.splitlines():
    if line.startswith('#'):
        continue
    parts = line.split()
    want = '${2:-}'
    if want and '=' in want:
        k, v = want.split('=', 1)
        want = k + '=' + chr(34) + v + chr(34)
    if len(parts) >= 2 and parts[0].split('{')[0] == '$1' and want in parts[0]:
        total += float(parts[1])
        seen = True
if seen:
    print(int(total))
"
}

# Lines in a file (0 when it does not exist yet).
lines_in() {
    if [[ -f "$1" ]]; then
        wc -l <"$1" | tr -d ' '
    else
        echo 0
    fi
}

# Checks every character of the ledger against the running server; fails
# unless it ran and reported nothing missing. Leaves the JSON in `verdict`.
verify_ledger() {
    local ledger="$1" status=0
    "$bots" --addr "127.0.0.1:$game_port" --verify-ledger "$ledger" \
        >"$tmp/verify.json" 2>"$tmp/verify.log" &
    local pid=$!
    extra_pids+=("$pid")
    wait "$pid" || status=$?
    verdict="$(tail -1 "$tmp/verify.json" 2>/dev/null || true)"
    if [[ "$verdict" != \{* ]]; then
        tail -5 "$tmp/verify.log" >&2 || true
        fail "--verify-ledger printed no verdict (status $status)"
    fi
    echo "$verdict"
    VERDICT="$verdict" "$python" - <<'EOF' || fail "the ledger check found confirmed loot missing (see above)"
import json, os, sys
v = json.loads(os.environ["VERDICT"])
print("ledger: {confirmations} confirmations, {checked} characters checked, {missing} missing "
      "({unreadable} unreadable)".format(**v), file=sys.stderr)
if v["confirmations"] == 0 or v["checked"] == 0:
    print("ledger: nothing was confirmed, so nothing was tested", file=sys.stderr)
    sys.exit(1)
for m in v["misses"]:
    print("ledger: MISSING: " + json.dumps(m), file=sys.stderr)
sys.exit(1 if v["missing"] else 0)
EOF
    [[ "$status" == 0 ]] || fail "--verify-ledger exited with status $status"
}
