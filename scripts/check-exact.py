#!/usr/bin/env python3
"""Compare the totals of `herd tail --json` windows with `herd sim`'s JSON line.

usage: scripts/check-exact.py windows.jsonl sim.json
Exits 0 when, for every group sim published, the windows hold exactly the same number of
requests, errors and latency observations; prints one line per group either way.
Corrections (lines with "correction": true: late data of a window printed before, e.g. an
agent's reconnect buffer after herd restarted) are added to the totals like windows.
"""
import json
import sys


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    got = {}
    windows = 0
    corrections = 0
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            w = json.loads(line)
            if w.get("correction"):
                corrections += 1
            else:
                windows += 1
            g = got.setdefault((w["service"], w["version"]), {"requests": 0, "errors": 0, "latency_count": 0})
            for s in w.get("series", []):
                if s.get("labels"):
                    continue
                if s["name"] == "requests_total":
                    g["requests"] += int(s["value"])
                elif s["name"] == "errors_total":
                    g["errors"] += int(s["value"])
                elif s["name"] == "latency_seconds":
                    g["latency_count"] += int(s["count"])
    with open(sys.argv[2]) as f:
        sim = json.loads(f.read().strip().splitlines()[-1])
    ok = True
    for g in sim["groups"]:
        k = (g["service"], g["version"])
        have = got.get(k, {"requests": 0, "errors": 0, "latency_count": 0})
        same = all(have[f] == g[f] for f in ("requests", "errors", "latency_count"))
        ok = ok and same
        print("%s %s/%s: windows requests=%d errors=%d latency_count=%d; sim %d %d %d" % (
            "EXACT" if same else "DIFF ", k[0], k[1], have["requests"], have["errors"], have["latency_count"],
            g["requests"], g["errors"], g["latency_count"]))
    print("%d windows, %d corrections" % (windows, corrections))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
