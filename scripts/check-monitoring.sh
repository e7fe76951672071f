#!/usr/bin/env bash
# Checks the monitoring kit in deploy/ (docs/OPERATIONS.md, "Monitoring"):
#
# 1. the alert rules parse and pass their unit tests
#    (promtool check rules, promtool test rules);
# 2. every query of the Grafana dashboard parses (as recording rules, with
#    promtool check rules);
# 3. every tether_* / process_* metric the dashboard and the alerts name is
#    one a running server exports (a server is started on free loopback
#    ports with a temporary data directory, its /metrics read, and stopped).
#
#   scripts/check-monitoring.sh [SERVER_BINARY]
#
# SERVER_BINARY defaults to target/debug/tether (under CARGO_TARGET_DIR when
# set); this script builds nothing. Needs promtool (Debian: apt-get install
# prometheus) and python3. Exit status: 0 passed, 1 a check failed, 2 could
# not run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
server="${1:-$target/debug/tether}"
rules="$root/deploy/prometheus/tether-alerts.yml"
dashboard="$root/deploy/grafana/tether-dashboard.json"

command -v promtool >/dev/null || { echo "check-monitoring: needs promtool (apt-get install prometheus)" >&2; exit 2; }
[[ -x "$server" ]] || { echo "check-monitoring: no server binary at $server (cargo build -p tether-server)" >&2; exit 2; }

tmp="$(mktemp -d -t tether-monitoring.XXXXXX)"
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

echo "check-monitoring: alert rules"
promtool check rules "$rules"
(cd "$(dirname "$rules")" && promtool test rules "$(basename "${rules%.yml}").test.yml")

echo "check-monitoring: dashboard queries"
python3 - "$dashboard" "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "the dashboard has no queries"
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        f.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}\n")
print(f"check-monitoring: {len(exprs)} dashboard queries")
PY
promtool check rules "$tmp/dashboard-rules.yml"

echo "check-monitoring: metric names against a running server"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$server" --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$port" --data-dir "$tmp/data" --log warn \
    >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/metrics" >"$tmp/metrics.txt" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 2; }
    sleep 0.1
done
[[ -s "$tmp/metrics.txt" ]] || { echo "check-monitoring: the server did not serve /metrics" >&2; exit 2; }
python3 - "$tmp/metrics.txt" "$rules" "$dashboard" <<'PY'
import json, re, sys
metrics_path, rules_path, dash_path = sys.argv[1:4]
exported = set()
for line in open(metrics_path):
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split()[:4]
        exported.add(name)
        if kind == "counter":
            exported.add(name + "_total")
        if kind == "histogram":
            exported.update(name + s for s in ("_bucket", "_sum", "_count"))
    elif line and not line.startswith("#"):
        exported.add(re.split(r"[{ ]", line, 1)[0])
queries = [t["expr"] for p in json.load(open(dash_path))["panels"] for t in p.get("targets", [])]
queries += re.findall(r"^\s*expr:\s*(.+)$", open(rules_path).read(), re.M)
named = set()
for q in queries:
    named.update(re.findall(r"\b((?:tether|process)_[a-z0-9_]+)\b", q))
missing = sorted(n for n in named if n not in exported)
print(f"check-monitoring: {len(named)} metric names used, {len(exported)} exported")
if missing:
    print("check-monitoring: FAILED: not exported by the server: " + ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
echo "check-monitoring: passed"
