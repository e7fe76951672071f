#!/usr/bin/env bash
# Tether benchmark: builds release, starts `tether` on free ports with a
# temporary data dir, runs `tether-bots` (a scenario of docs/BENCHMARKS.md),
# prints the bots' JSON summary with the server's peak RSS added, and stops
# what it started. The RSS is also split: the server's RSS idle before the
# bots connect, and the peaks of its anonymous (heap, stacks, rings) and
# file-backed (code pages) parts, sampled from /proc every half second.
#
#   scripts/bench.sh [--clients N] [--move-hz R] [--duration S] [--ramp S]
#                    [--scenario NAME] [--server-args "..."] [--bots-args "..."]
#                    [--vs-relay] [--relay-dir DIR] [--profile SECS]
#                    [--server-bin PATH] [--bots-bin PATH] [--websocket] [--pin]
#
# --pin: the server runs on CPU 0 and the bots on the other CPUs (taskset),
# so that on a small box they do not take each other's core in turns: A/B
# runs of two builds repeat more closely.
#
# --websocket: the players connect over WebSocket (the server's ws_listen,
# docs/PROTOCOL.md section 1.1) instead of plain TCP; the summary says
# "transport": "websocket".
#
# --vs-relay first runs the logic-free relay and its load generator
# (bench/relay, a cargo project of its own; --relay-dir picks another copy)
# at the same connection count and rate, then Tether, and prints both with
# the ratios (Tether / relay). docs/BENCHMARKS.md has the load model.
#
# Binaries go to $CARGO_TARGET_DIR (default: target), the relay's to
# $CARGO_TARGET_DIR/relay. --server-bin / --bots-bin run given binaries
# instead (nothing is built when both are given): an A/B of two server
# builds under the same bots, e.g.
#   scripts/bench.sh --server-bin /tmp/base/tether --bots-bin target/release/tether-bots
#
# --profile SECS: a third of the way into the measured window, counts the
# server's syscalls for SECS seconds (perf stat) while sampling its stacks
# (perf record -g), then prints syscalls per message and where the CPU time
# went (kernel vs Tether's own code, the top symbols). Needs `perf`.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=1000 move_hz=5 duration=30 ramp=10 scenario=standard
server_args="" bots_args="" vs_relay=0 relay_dir="bench/relay" profile=0
server_bin="" bots_bin="" websocket=0 pin=0
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --move-hz) move_hz=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --scenario) scenario=$2; shift 2 ;;
    --server-args) server_args=$2; shift 2 ;;
    --bots-args) bots_args=$2; shift 2 ;;
    --vs-relay) vs_relay=1; shift ;;
    --relay-dir|--limit-dir) relay_dir=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --server-bin) server_bin=$2; shift 2 ;;
    --bots-bin) bots_bin=$2; shift 2 ;;
    --websocket) websocket=1; shift ;;
    --pin) pin=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
done

# Thousands of sockets per process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { echo "bench: $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -z "$server_bin" ] || [ -z "$bots_bin" ]; then
  log "building release binaries"
  cargo build --release -q -p tether-server -p tether-bots
fi
target="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
server_bin="${server_bin:-$target/release/tether}"
bots_bin="${bots_bin:-$target/release/tether-bots}"
for b in "$server_bin" "$bots_bin"; do
  [ -x "$b" ] || { echo "bench: $b is not an executable" >&2; exit 2; }
done

workdir=$(mktemp -d -t tether-bench.XXXXXX)
server_pid=""
relay_pid=""
bots_pid=""
sampler_pid=""
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null || true
  [ -n "$bots_pid" ] && kill "$bots_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null && wait "$relay_pid" 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

machine="$(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
log "machine: $machine"

relay_result=""
if [ "$vs_relay" = 1 ]; then
  [ -f "$relay_dir/Cargo.toml" ] || { echo "bench: no relay at $relay_dir" >&2; exit 2; }
  log "building the reference relay ($relay_dir)"
  CARGO_TARGET_DIR="$target/relay" cargo build --release -q --locked \
    --manifest-path "$relay_dir/Cargo.toml"
  lbin="$target/relay/release"
  stats="$workdir/relay.stats"
  "$lbin/relay" --stats "$stats" --duration $((duration + ramp + 60)) --quiet &
  relay_pid=$!
  for _ in $(seq 1 50); do [ -f "$stats" ] && break; sleep 0.1; done
  log "relay: $clients connections at $move_hz Hz for ${duration}s"
  relay_out=$("$lbin/loadgen" --stats "$stats" --conns "$clients" --rate "$move_hz" \
    --warmup 5 --duration "$duration" --label bench 2>&1) || true
  kill "$relay_pid" 2>/dev/null; wait "$relay_pid" 2>/dev/null || true
  relay_pid=""
  relay_result=$(echo "$relay_out" | grep '^RESULT' || true)
  [ -n "$relay_result" ] || { echo "$relay_out" >&2; echo "bench: relay run failed" >&2; exit 1; }
  log "relay: $relay_result"
  sleep 2
fi

port=$(free_port)
admin=$(free_port)
ws_args="" bots_addr="127.0.0.1:$port" bots_transport=""
if [ "$websocket" = 1 ]; then
  ws_port=$(free_port)
  ws_args="--ws-listen 127.0.0.1:$ws_port"
  bots_addr="127.0.0.1:$ws_port"
  bots_transport="--websocket"
fi
log "starting tether on 127.0.0.1:$port (admin $admin${ws_port:+, WebSocket $ws_port}), world sized for $clients players"
server_cpus="" bots_cpus=""
if [ "$pin" = 1 ]; then
  command -v taskset >/dev/null || { echo "bench: --pin needs taskset" >&2; exit 2; }
  n=$(nproc)
  [ "$n" -ge 2 ] || { echo "bench: --pin needs 2 CPUs" >&2; exit 2; }
  server_cpus="taskset -c 0" bots_cpus="taskset -c 1-$((n - 1))"
  log "pinned: server on CPU 0, bots on CPUs 1-$((n - 1))"
fi
# shellcheck disable=SC2086
$server_cpus "$server_bin" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" $ws_args \
  --data-dir "$workdir/data" --world-players "$clients" --log warn $server_args \
  2> "$workdir/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$workdir/server.log" >&2; exit 1; }
  sleep 0.1
done

idle_kb=$(awk '/^VmRSS/{print $2}' "/proc/$server_pid/status")
# The peaks of RssAnon and RssFile while the bots play (VmHWM only has the
# sum's peak).
(
  anon=0 file=0
  while [ -r "/proc/$server_pid/status" ]; do
    read -r a f < <(awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{print a+0, f+0}' "/proc/$server_pid/status")
    [ "$a" -gt "$anon" ] && anon=$a
    [ "$f" -gt "$file" ] && file=$f
    echo "$anon $file" > "$workdir/rss-split"
    sleep 0.5
  done
) 2>/dev/null &
sampler_pid=$!

# shellcheck disable=SC2086
$bots_cpus "$bots_bin" --addr "$bots_addr" $bots_transport --admin "127.0.0.1:$admin" \
  --scenario "$scenario" --clients "$clients" --move-hz "$move_hz" --duration "$duration" \
  --ramp "$ramp" $bots_args > "$workdir/bots.json" &
bots_pid=$!
if [ "$profile" != 0 ]; then
  command -v perf >/dev/null || { echo "bench: --profile needs perf" >&2; exit 2; }
  sleep $((ramp + duration / 3))
  log "profiling the server for ${profile}s"
  perf stat -x, -o "$workdir/perf.stat" -p "$server_pid" \
    -e task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_writev,syscalls:sys_enter_write \
    -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait \
    -e syscalls:sys_enter_futex,syscalls:sys_enter_io_uring_enter -- sleep "$profile" 2>/dev/null &
  stat_pid=$!
  perf record -q -F 499 -g -p "$server_pid" -o "$workdir/perf.data" -- sleep "$profile" \
    >/dev/null 2>&1 || log "perf record failed"
  wait "$stat_pid" || log "perf stat failed"
fi
wait "$bots_pid"
bots_pid=""
summary=$(tail -1 "$workdir/bots.json")
peak_kb=$(awk '/VmHWM/{print $2}' "/proc/$server_pid/status")
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
split=$(cat "$workdir/rss-split" 2>/dev/null || echo "0 0")
# The server's own counts over the whole run: frames per send (writev or
# io_uring), which perf's syscall counts cannot see for io_uring.
metrics=$(curl -sf "http://127.0.0.1:$admin/metrics" || true)
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
server_pid=""

if [ "$profile" != 0 ]; then
  pps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("total_pps") or 0)' "$summary")
  python3 - "$workdir/perf.stat" "$profile" "$pps" <<'PY' >&2
import sys
path, secs, pps = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
counts = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and f[0][0].isdigit():
        counts[f[2]] = float(f[0])
msgs = pps * secs
print(f"profile: {secs:.0f}s of the server at {pps:.0f} msgs/s delivered")
cpu_ms = counts.get("task-clock", 0)
print(f"profile: server CPU {cpu_ms / secs / 10:.1f} % of one core, {cpu_ms * 1000 / msgs if msgs else 0:.3f} us per message")
for name, n in counts.items():
    if name.startswith("raw_syscalls") or name.startswith("syscalls"):
        per = n / msgs if msgs else 0
        print(f"profile: {name.split(':')[-1]:<22} {n / secs:>10.0f} /s  {per:.4f} per message")
PY
  log "CPU by binary (kernel vs tether), then the top symbols:"
  perf report -i "$workdir/perf.data" --no-children --sort dso -q --stdio -g none 2>/dev/null \
    | grep -v '^$' | head -8 >&2 || true
  perf report -i "$workdir/perf.data" --no-children --sort sym -q --stdio -g none 2>/dev/null \
    | grep -v '^$' | head -30 >&2 || true
fi

python3 - "$summary" "$peak_kb" "$relay_result" "$machine" "$metrics" "$idle_kb $split" <<'PY'
import json, sys
summary, peak_kb, relay, machine, metrics = sys.argv[1], int(sys.argv[2] or 0), sys.argv[3], sys.argv[4], sys.argv[5]
idle_kb, anon_kb, file_kb = (int(x or 0) for x in sys.argv[6].split())
t = json.loads(summary)
m = {}
for line in metrics.splitlines():
    if line and not line.startswith("#") and " " in line:
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
if m.get("tether_writes_total"):
    t["server_sends"] = m["tether_writes_total"]
    t["frames_per_send"] = round(m.get("tether_frames_out_total", 0) / m["tether_writes_total"], 2)
t["server_rss_peak_mb"] = round(peak_kb / 1024, 1)
t["server_rss_idle_mb"] = round(idle_kb / 1024, 1)
t["server_rss_anon_peak_mb"] = round(anon_kb / 1024, 1)
t["server_rss_file_peak_mb"] = round(file_kb / 1024, 1)
t["machine"] = machine
pps = t.get("total_pps") or 0
t["server_us_per_msg"] = round(t["server_cpu_pct"] / 100 * 1e6 / pps, 3) if pps else None
print(json.dumps(t))
if relay:
    r = dict(kv.split("=", 1) for kv in relay.split()[1:])
    rel = {"total_pps": float(r["total_pps"]), "us_per_msg": float(r["us_per_msg"]),
           "p99_ms": float(r["p99_us"]) / 1000, "rss_mb": float(r["rss_mib"]),
           "cpu_pct": float(r["srv_cpu"])}
    teth = {"total_pps": pps, "us_per_msg": t["server_us_per_msg"],
            "p99_ms": t["rtt_ms"]["p99"], "rss_mb": t["server_rss_mb"],
            "cpu_pct": t["server_cpu_pct"]}
    print(f"{'':14}{'relay':>12}{'tether':>12}{'tether/relay':>14}", file=sys.stderr)
    for k in rel:
        a, b = rel[k], teth[k]
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        print(f"{k:14}{a:>12.3f}{(b or 0):>12.3f}{ratio:>14}", file=sys.stderr)
    print(json.dumps({"relay": rel, "tether": teth,
                      "ratio": {k: (teth[k] / rel[k] if rel[k] and teth[k] is not None else None) for k in rel}}))
PY
