#!/usr/bin/env bash
# Tether attack benchmark: for each attack, starts a fresh `tether` on free
# ports with a temporary data dir, runs `tether-bots` with `standard` legit
# players and `--attack NAME` beside them, and prints one JSON line per attack
# on stdout (the bots' summary plus the server's peak RSS, whether it was still
# up, and its defence counters), then a table on stderr. Stops what it started.
#
#   scripts/attack-bench.sh [--release] [--clients N] [--attacks "connflood garbage ..."]
#                           [--rate N] [--source ADDRS] [--ramp S] [--before S]
#                           [--attack-secs S] [--after S] [--server-args "..."]
#                           [--bots-args "..."]
#
# Defaults: debug build, 2000 clients, all five attacks, each at its own
# default rate (below); `--rate max` asks each for more than one bots process
# can produce (20000 connections or logins/s, 100000 inputs/s), so each runs
# at its strongest; sources 127.0.0.2-127.0.0.101, 10 s ramp, then 15 s
# before, 20 s of attack and 15 s after (about 60 s per attack).
# docs/ATTACKS.md explains every field.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug clients=2000 attacks="connflood slowloris garbage msgflood loginflood"
rate="" source="127.0.0.2-127.0.0.101" ramp=10 before=15 attack_secs=20 after=15
server_args="" bots_args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release; shift ;;
    --clients) clients=$2; shift 2 ;;
    --attacks) attacks=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --before) before=$2; shift 2 ;;
    --attack-secs) attack_secs=$2; shift 2 ;;
    --after) after=$2; shift 2 ;;
    --server-args) server_args=$2; shift 2 ;;
    --bots-args) bots_args=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "attack-bench: unknown argument $1" >&2; exit 2 ;;
  esac
done

# Default rate per attack: what `--attack-rate` counts differs (connections,
# inputs or logins per second).
default_rate() {
  case "$1" in
    connflood) echo 2000 ;;
    slowloris) echo 1000 ;;
    garbage) echo 2000 ;;
    msgflood) echo 50000 ;;
    loginflood) echo 500 ;;
    *) echo "attack-bench: unknown attack $1" >&2; exit 2 ;;
  esac
}
for a in $attacks; do default_rate "$a" >/dev/null; done

# `--rate max`: past what one bots process produces on the 2-core machine
# (about 15-19k connections/s, 37k inputs/s), so the attackers' own speed is
# the limit.
max_rate() {
  case "$1" in
    msgflood) echo 100000 ;;
    *) echo 20000 ;;
  esac
}

# Thousands of sockets per process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log() { echo "attack-bench: $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

log "building $profile binaries"
if [ "$profile" = release ]; then
  cargo build --release -q -p tether-server -p tether-bots
else
  cargo build -q -p tether-server -p tether-bots
fi
bin="${CARGO_TARGET_DIR:-target}/$profile"

workdir=$(mktemp -d -t tether-attack.XXXXXX)
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() { stop_server; rm -rf "$workdir"; }
trap cleanup EXIT INT TERM

machine="$(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
duration=$((before + attack_secs + after))
log "machine: $machine; commit $commit; $clients legit players; per attack: ${ramp}s ramp, ${before}s before, ${attack_secs}s attack, ${after}s after"

results="$workdir/results.jsonl"
: > "$results"
for attack in $attacks; do
  r=${rate:-$(default_rate "$attack")}
  [ "$r" = max ] && r=$(max_rate "$attack")
  port=$(free_port)
  admin=$(free_port)
  data="$workdir/data-$attack"
  # shellcheck disable=SC2086
  "$bin/tether" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --data-dir "$data" --world-players "$clients" --log warn $server_args \
    2> "$workdir/server-$attack.log" &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$workdir/server-$attack.log" >&2; exit 1; }
    sleep 0.1
  done
  cmd="tether-bots --clients $clients --ramp $ramp --duration $duration --attack $attack --attack-rate $r --attack-source $source --attack-start $before --attack-duration $attack_secs $bots_args"
  log "$attack at $r/s: $cmd"
  # The run's own length plus the drain and slack: a hung run cannot hold
  # the machine.
  # shellcheck disable=SC2086
  summary=$(timeout $((ramp + duration + 60)) "$bin/tether-bots" --addr "127.0.0.1:$port" \
    --admin "127.0.0.1:$admin" --quiet --clients "$clients" --ramp "$ramp" --duration "$duration" \
    --attack "$attack" --attack-rate "$r" --attack-source "$source" \
    --attack-start "$before" --attack-duration "$attack_secs" $bots_args \
    2> "$workdir/bots-$attack.log") || true
  alive=false
  if kill -0 "$server_pid" 2>/dev/null && curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1; then
    alive=true
  fi
  metrics=$(curl -sf "http://127.0.0.1:$admin/metrics" 2>/dev/null || true)
  peak_kb=$(awk '/VmHWM/{print $2}' "/proc/$server_pid/status" 2>/dev/null || echo 0)
  stop_server
  if [ -z "$summary" ]; then
    log "$attack: the bots printed no summary; their last lines:"
    tail -5 "$workdir/bots-$attack.log" >&2
    summary="{}"
  fi
  SUMMARY="$summary" METRICS="$metrics" python3 - "$attack" "$r" "$alive" "${peak_kb:-0}" \
    "$machine" "$commit" "$profile" "$cmd" >> "$results" <<'PY'
import json, os, re, sys
attack, rate, alive, peak_kb, machine, commit, profile, cmd = sys.argv[1:]
try:
    t = json.loads(os.environ["SUMMARY"])
except ValueError:
    t = {}
t.setdefault("attack", attack)
t["attack_rate"] = float(rate)
t["server_alive"] = alive == "true"
t["server_vmhwm_mb"] = round(int(peak_kb or 0) / 1024, 1)
# The server's defence counters (refusals, strikes, bans, protect mode...).
guard = {}
for line in os.environ.get("METRICS", "").splitlines():
    if line.startswith("#") or not line.strip():
        continue
    key, _, value = line.rpartition(" ")
    if re.search(r"refus|ban|strike|protect|rate_limit|limited|drop|kick|shed|pending", key):
        try:
            guard[key] = float(value)
        except ValueError:
            pass
t["server_guard"] = guard
t.update(machine=machine, commit=commit, profile=profile, command=cmd)
print(json.dumps(t, separators=(",", ":")))
PY
  tail -1 "$results"
done

python3 - "$results" <<'PY' >&2
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
head = f"{'attack':<11}{'rate':>8}{'achieved':>10}{'alive':>7}{'p99 ms':>9}{'lost':>6}{'recov s':>9}{'rss MB':>14}{'refused':>9}{'closed':>9}"
print(head)
for t in rows:
    d = t.get("attack_detail") or {}
    a = d.get("attackers") or {}
    rss = f"{d.get('server_rss_before_mb') or 0:.0f}->{d.get('server_rss_peak_mb') or 0:.0f}"
    rec = t.get("recovery_s")
    print(f"{t['attack']:<11}{t['attack_rate']:>8.0f}{d.get('rate_achieved', 0):>10.0f}"
          f"{'yes' if t['server_alive'] else 'NO':>7}{t.get('legit_rtt_p99_ms_during', float('nan')):>9.2f}"
          f"{t.get('legit_lost', -1):>6}{('-' if rec is None else f'{rec:.1f}'):>9}{rss:>14}"
          f"{a.get('refused', 0):>9}{a.get('closed_by_server', 0):>9}")
PY
