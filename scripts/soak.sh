#!/usr/bin/env bash
# Soak test: herd serve + herd sim with churn, sampling serve's heap, RSS and CPU.
# usage: scripts/soak.sh [instances] [duration] [lifetime-min] [lifetime-max] [outdir]
# Defaults: 5000 instances for 10m with lifetimes 4m–6m (mean 5m: 1,000 replacements/minute).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}; dur=${2:-10m}; lmin=${3:-4m}; lmax=${4:-6m}; out=${5:-soak-out}
mkdir -p "$out"
go build -o bin/herd ./cmd/herd
data=$(mktemp -d)
bin/herd serve --data "$data" --nats.listen 127.0.0.1:14222 --http 127.0.0.1:18089 >"$out/serve.log" 2>&1 &
serve=$!
trap 'kill -INT $serve 2>/dev/null; wait $serve 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:18089/readyz >/dev/null && break; sleep 0.1; done
bin/herd tail --nats nats://127.0.0.1:14222 --json >"$out/windows.jsonl" 2>/dev/null &
tailp=$!
echo "t_s heap_inuse_mib rss_mib cpu_s goroutines batches_total lost_total refused_total" >"$out/samples.txt"
(
  t0=$(date +%s)
  while kill -0 $serve 2>/dev/null; do
    m=$(curl -sf http://127.0.0.1:18089/metrics || true)
    get() { echo "$m" | awk -v k="$1" '$1==k {print $2; exit}'; }
    sum() { echo "$m" | awk -v k="$1" 'index($1,k)==1 {s+=$2} END {print s+0}'; }
    echo "$(( $(date +%s) - t0 )) $(awk "BEGIN{print $(get go_memstats_heap_inuse_bytes)/1048576}") $(awk "BEGIN{print $(get process_resident_memory_bytes)/1048576}") $(get process_cpu_seconds_total) $(get go_goroutines) $(get herd_ingest_batches_total) $(get herd_rollup_batches_lost_total) $(sum herd_rollup_batches_refused_total)" >>"$out/samples.txt"
    sleep 10
  done
) &
sampler=$!
/usr/bin/time -v bin/herd sim --nats nats://127.0.0.1:14222 --instances "$n" --duration "$dur" \
  --lifetime-min "$lmin" --lifetime-max "$lmax" >"$out/sim.json" 2>"$out/sim.time"
sleep 2
kill -INT $tailp; wait $tailp 2>/dev/null || true
kill $sampler 2>/dev/null || true
python3 scripts/check-exact.py "$out/windows.jsonl" "$out/sim.json" | tee "$out/exact.txt"
grep -E "Elapsed|User time|System time|Maximum resident" "$out/sim.time"
cat "$out/samples.txt"
