#!/usr/bin/env python3
"""Prints a soak run's server curve as a markdown table.

    scripts/soak-table.py BOTS_JSON [EVERY_SECS]

BOTS_JSON is the file holding tether-bots' JSON summary line (the last line
is used), from `--scenario soak` with `--admin`. One row every EVERY_SECS
(default 60) of the run: RSS, open descriptors, the descriptors beyond live
connections (what the growth check judges), connections and sessions.
"""
import json
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        summary = json.loads(f.read().strip().splitlines()[-1])
    every = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
    samples = summary.get("samples") or []
    if not samples:
        sys.exit("no samples in the summary (run the soak with --admin)")
    print("| t (s) | RSS (MB) | fds | fds - connections | connections | sessions |")
    print("|---:|---:|---:|---:|---:|---:|")
    next_t = 0.0
    for s in samples:
        if s["t"] + 1e-9 < next_t and s is not samples[-1]:
            continue
        next_t = s["t"] + every - 1.0
        print(
            f"| {s['t']:.0f} | {s['rss_mb']:.1f} | {s['fds']:.0f} | "
            f"{s['fds'] - s['connections']:.0f} | {s['connections']:.0f} | {s['sessions']:.0f} |"
        )
    g = summary.get("growth") or {}
    print()
    print(
        f"Warm level (after {g.get('warmup_s')} s): RSS {g.get('rss_warm_mb')} MB, "
        f"fds beyond connections {g.get('fds_warm')}; after it, at most "
        f"{g.get('rss_max_after_mb')} MB ({g.get('rss_growth_pct')} %), "
        f"{g.get('fds_max_after')} ({g.get('fds_growth_pct')} %); "
        f"RSS slope {g.get('rss_slope_mb_per_min')} MB/min; growth_ok {summary.get('growth_ok')}."
    )


if __name__ == "__main__":
    main()
