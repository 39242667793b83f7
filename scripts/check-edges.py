#!/usr/bin/env python3
"""Compare the edge totals of `herd tail --json` windows with `herd sim --graph N`'s JSON line.

usage: scripts/check-edges.py windows.jsonl sim.json
Exits 0 when, for every edge (caller service, caller version → callee) sim called, the windows
hold exactly the same number of calls, failed calls and latency observations
(herd_edge_calls_total, herd_edge_errors_total, herd_edge_latency_seconds); corrections are
added like windows. Prints a summary and every edge that differs.
"""
import json
import sys


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    got = {}
    windows = 0
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            w = json.loads(line)
            windows += 1
            for s in w.get("series", []):
                labels = s.get("labels") or {}
                if s["name"] not in ("herd_edge_calls_total", "herd_edge_errors_total", "herd_edge_latency_seconds"):
                    continue
                if set(labels) - {"callee", "operation"} or "callee" not in labels:
                    continue
                k = (w["service"], w["version"], labels["callee"], labels.get("operation", ""))
                e = got.setdefault(k, {"calls": 0, "errors": 0, "latency_count": 0})
                if s["name"] == "herd_edge_calls_total":
                    e["calls"] += int(s["value"])
                elif s["name"] == "herd_edge_errors_total":
                    e["errors"] += int(s["value"])
                else:
                    e["latency_count"] += int(s.get("count", 0))
    with open(sys.argv[2]) as f:
        sim = json.loads(f.read().strip().splitlines()[-1])
    bad = 0
    calls = 0
    for e in sim.get("edges", []):
        k = (e["service"], e["version"], e["callee"], e.get("operation", ""))
        want = {"calls": e["calls"], "errors": e["errors"], "latency_count": e["latency_count"]}
        have = got.get(k, {"calls": 0, "errors": 0, "latency_count": 0})
        calls += want["calls"]
        if have != want:
            bad += 1
            print(f"{k[0]}/{k[1]} → {k[2]}: windows {have}, sim {want}")
    n = len(sim.get("edges", []))
    print(f"{n} edges, {calls} calls over {windows} windows: {'EXACT' if bad == 0 else f'{bad} edges differ'}")
    return 0 if bad == 0 and n > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
