#!/usr/bin/env python3
"""Prints the figures of the capacity acceptance line from the outputs of scripts/capacity-accept.sh.

usage: capacity-summary.py serve|workers OUT/TAG   (reads TAG.json, TAG.samples, TAG.metrics)
"""
import json
import sys

BOUND_MS = 850  # window 250 ms + lateness 500 ms + 100 ms


def main():
    mode, base = sys.argv[1], sys.argv[2]
    rep = json.load(open(base + ".json"))
    samples = []
    for line in open(base + ".samples"):
        f = line.split()
        if len(f) < 3:
            continue
        procs = {}
        for p in f[2:]:
            name, ticks, rss = p.split(":")
            procs[name] = (int(ticks), int(rss or 0))
        samples.append((float(f[0]), float(f[1]), procs))
    metrics, tck = {}, 100
    for line in open(base + ".metrics"):
        f = line.split()
        if f[0] == "CLK_TCK":
            tck = int(f[1])
            continue
        if len(f) < 3 or f[1].startswith("#"):
            continue
        try:
            metrics.setdefault(f[0], {})[f[1]] = metrics.get(f[0], {}).get(f[1], 0) + float(f[2])
        except ValueError:
            pass

    def total(name):
        return sum(m.get(name, 0) for m in metrics.values())

    names = [n for n in samples[0][2]] if samples else []
    t0, t1 = samples[0][0], samples[-1][0]
    loads = [s[1] for s in samples]
    print(f"== capacity acceptance, {mode}: {rep['instances']} instances, {rep['seconds']:.0f} s "
          f"(load average 1 min: min {min(loads):.1f}, mean {sum(loads)/len(loads):.1f}, max {max(loads):.1f})")
    ok = True

    def check(what, good, detail):
        nonlocal ok
        ok = ok and good
        print(f"  [{'ok' if good else 'NOT MET'}] {what}: {detail}")

    check("totals exact", rep["exact"], f"{rep['requests_sent']:,} requests in {rep['batches_sent']:,} batches; "
          f"lost {rep['lost_requests']:,}, unsent {rep['batches_unsent']:,}; {rep['windows_received']:,} windows, "
          f"{rep['corrections_received']:,} corrections")
    late = total('herd_rollup_batches_refused_total{reason="late"}')
    slow = total('herd_ingest_dropped_total{reason="slow_consumer"}')
    refused = sum(v for m in metrics.values() for k, v in m.items() if k.startswith("herd_rollup_batches_refused_total"))
    check("0 refused as late", late == 0, f"{late:,.0f} refused late, {refused:,.0f} refused in all, {slow:,.0f} slow-consumer drops, "
          f"{total('herd_rollup_batches_corrected_total'):,.0f} batches merged into corrections")
    check(f"window delay p99 ≤ {BOUND_MS} ms", rep["window_delay_p99_ms"] <= BOUND_MS,
          f"p50 {rep['window_delay_p50_ms']:.0f} ms, p99 {rep['window_delay_p99_ms']:.0f} ms")
    try:
        varz = json.load(open(base + ".varz"))
        disc = dict(l.split() for l in open(base + ".disconnects") if l.strip())
        cut = varz.get("slow_consumers", 0)
        check("no connection cut", cut == 0 and all(v == "0" for v in disc.values()),
              f"embedded nats-server cut {cut} slow-consumer connections {varz.get('slow_consumer_stats', {})}; "
              f"NATS disconnects by process {disc}")
    except (OSError, ValueError):
        pass
    wanted = rep["instances"] * 4
    check("generator kept up", rep["behind"] in ("", "herd"),
          f"{rep['batches_per_second']:,.0f} batches/s sent ({wanted:,} wanted), {rep['gen_boundaries_missed']} boundaries missed, "
          f"publish lag p50 {rep['gen_publish_lag_p50_ms']:.0f} / p99 {rep['gen_publish_lag_p99_ms']:.0f} ms "
          f"(own p99 {rep.get('gen_own_lag_p99_ms', float('nan')):.0f} ms, {rep.get('gen_publish_wait_seconds', float('nan')):.1f} s blocked in Publish), "
          f"{rep['gen_cpu_cores']:.3f} core, {rep['gen_max_rss_mib']:.0f} MiB; behind: {rep['behind'] or 'nobody'} {rep.get('why', '')}")
    bps = rep["batches_per_second"]
    print("  CPU (from /proc, over the run) and RSS (MiB at each quarter of the run, after the 25 % warm-up):")
    for n in names:
        pts = [(s[0], s[2][n]) for s in samples if n in s[2]]
        if len(pts) < 2:
            continue
        run = [p for p in pts if p[0] <= pts[0][0] + rep["seconds"] + 2] or pts  # not the idle sample after the run
        cores = (run[-1][1][0] - run[0][1][0]) / tck / max(run[-1][0] - run[0][0], 1e-9)
        q = [pts[min(len(pts) - 1, round((len(pts) - 1) * k / 4))][1][1] / 1024 for k in range(5)]
        after = [p[1][1] / 1024 for p in pts[len(pts) // 4:]]
        flat = max(after) <= 1.25 * min(after) + 16
        per_k = cores / bps * 1000 if bps else 0
        print(f"    {n:6s} {cores:.3f} core ({per_k * 1000:.2f} ms of CPU per 1,000 batches); RSS "
              f"{' → '.join(f'{x:.0f}' for x in q)}; after warm-up {min(after):.0f}–{max(after):.0f} MiB "
              f"({'flat' if flat else 'GROWING'})")
        ok = ok and flat
    if mode == "workers":
        late_renew = total("herd_rollup_lease_renew_late_total")
        gap = max((m.get("herd_rollup_lease_renew_gap_max_seconds", 0) for m in metrics.values()), default=0)
        moves = {}
        for m in metrics.values():
            for k, v in m.items():
                if k.startswith("herd_rollup_partition_moves_total"):
                    r = k.split('"')[1]
                    moves[r] = moves.get(r, 0) + v
        lost = moves.get("lost_expired", 0) + moves.get("lost_taken", 0)
        check("no lease lost", lost == 0, f"moves {', '.join(f'{k} {v:.0f}' for k, v in sorted(moves.items()) if v)}; "
              f"renewals late {late_renew:.0f}, longest gap between renewals {gap * 1000:.0f} ms; "
              f"gap windows {total('herd_rollup_partition_gap_windows_total'):.0f}")
    print(f"== {'MET' if ok else 'NOT MET'} (outputs: {base}.*)")


if __name__ == "__main__":
    main()
