#!/usr/bin/env bash
# Tether microbenchmarks (criterion): the codec, the interest grid and a
# world move, the replay buffer with its page pool, and the I/O-shard rings.
# Runs every bench, then prints one markdown table row per benchmark from
# criterion's own estimates (median time per iteration, and per element
# where the bench sets a throughput).
#
#   scripts/microbench.sh [--quick]
#
# --quick: 1 s warm-up and 3 s measurement per bench instead of criterion's
# defaults (3 s and 5 s). Results land under target/criterion/ (or
# $CARGO_TARGET_DIR/criterion/).
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
if [ "${1:-}" = "--quick" ]; then
  args=(-- --warm-up-time 1 --measurement-time 3)
fi

echo "microbench: machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for spec in tether-proto:codec tether-world:aoi tether-session:replay tether-server:rings; do
  pkg=${spec%%:*} bench=${spec#*:}
  echo "microbench: cargo bench -p $pkg --bench $bench" >&2
  cargo bench -q -p "$pkg" --bench "$bench" "${args[@]}" >/dev/null
done

python3 - "${CARGO_TARGET_DIR:-target}/criterion" <<'PY'
import json, os, sys

root = sys.argv[1]
rows = []
for dirpath, _dirs, files in os.walk(root):
    if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
        continue
    with open(os.path.join(dirpath, "benchmark.json")) as f:
        meta = json.load(f)
    with open(os.path.join(dirpath, "estimates.json")) as f:
        est = json.load(f)
    ns = est["median"]["point_estimate"]
    per = None
    tp = meta.get("throughput") or {}
    if "Elements" in tp and tp["Elements"]:
        per = ns / tp["Elements"]
    rows.append((meta["full_id"], ns, per))

def fmt(ns):
    if ns is None:
        return ""
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"

print("| benchmark | median per iteration | per element |")
print("|---|---:|---:|")
for name, ns, per in sorted(rows):
    print(f"| {name} | {fmt(ns)} | {fmt(per)} |")
PY
