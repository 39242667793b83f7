#!/bin/bash
# The capacity acceptance run of docs/BENCHMARKS.md, in one command:
#   scripts/capacity-accept.sh serve   [INSTANCES] [DURATION] [TAG]   one herd serve (all roles, embedded NATS)
#   scripts/capacity-accept.sh workers [INSTANCES] [DURATION] [TAG]   herd serve --roles detect,web + 3 herd rollup workers
# Defaults: 50000 instances, 10m. `herd bench load` drives it (4 batches/s per instance, lifetimes 20–60 s, 8 NATS
# connections, pre-encoded batches); every herd process's CPU and RSS and the load average are sampled every 5 s
# from /proc; at the end scripts/capacity-summary.py prints every figure of the acceptance line and whether it holds.
# HERD is the herd binary (default: herd on PATH); OUT the directory for outputs (default /tmp/herd-capacity);
# EXTRA more flags for bench load. All ports are picked free; only the processes started here are stopped.
set -u
MODE=${1:?usage: capacity-accept.sh serve|workers [INSTANCES] [DURATION] [TAG]}; N=${2:-50000}; D=${3:-10m}
TAG=${4:-accept-$MODE-$N-$D}; BIN=${HERD:-herd}; OUT=${OUT:-/tmp/herd-capacity}; mkdir -p "$OUT"
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NP=$(port); HP=$(port); MP=$(port)
DATA=$(mktemp -d "$OUT/data-XXXX")
PIDS=(); NAMES=(); METRICS=()
cleanup() { [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT
ROLES=(); [ "$MODE" = workers ] && ROLES=(--roles detect,web)
"$BIN" serve "${ROLES[@]}" --nats.listen 127.0.0.1:$NP --nats.monitor 127.0.0.1:$MP --http 127.0.0.1:$HP --otlp.grpc= --otlp.http= --data "$DATA" > "$OUT/$TAG.serve.log" 2>&1 &
PIDS+=($!); NAMES+=(serve); METRICS+=(http://127.0.0.1:$HP/metrics)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$HP/readyz >/dev/null && break; sleep 0.2; done
if [ "$MODE" = workers ]; then
  for w in 1 2 3; do
    WH=$(port)
    "$BIN" rollup --nats nats://127.0.0.1:$NP --worker.id w$w --http 127.0.0.1:$WH > "$OUT/$TAG.w$w.log" 2>&1 &
    PIDS+=($!); NAMES+=(w$w); METRICS+=(http://127.0.0.1:$WH/metrics)
  done
  for _ in $(seq 100); do
    n=0; for m in "${METRICS[@]:1}"; do v=$(curl -sf "$m" | awk '/^herd_rollup_partitions_owned /{print $2}'); n=$((n + ${v:-0})); done
    [ "$n" -ge 64 ] && break; sleep 0.2
  done
fi
# Samples: unix time, 1-minute load, then name:utime+stime ticks:VmRSS KiB for every process.
( while :; do
    line="$(date +%s.%N) $(cut -d' ' -f1 /proc/loadavg)"
    for i in "${!PIDS[@]}"; do
      p=${PIDS[$i]}; [ -r /proc/$p/stat ] || continue
      line="$line ${NAMES[$i]}:$(awk '{print $14+$15}' /proc/$p/stat):$(awk '/VmRSS/{print $2}' /proc/$p/status)"
    done
    echo "$line"; sleep 5
  done ) > "$OUT/$TAG.samples" &
SAMPLER=$!
SM=(); [ "$MODE" = serve ] && SM=(--serve-metrics http://127.0.0.1:$HP/metrics)
"$BIN" bench load --nats nats://127.0.0.1:$NP --instances "$N" --duration "$D" --conns 8 "${SM[@]}" ${EXTRA:-} > "$OUT/$TAG.json" 2> "$OUT/$TAG.err"
sleep 5   # one more sample after the last windows closed
kill "$SAMPLER"; SAMPLER=
: > "$OUT/$TAG.metrics"
for i in "${!METRICS[@]}"; do curl -sf "${METRICS[$i]}" | sed "s/^/${NAMES[$i]} /" >> "$OUT/$TAG.metrics"; done
echo "CLK_TCK $(getconf CLK_TCK)" >> "$OUT/$TAG.metrics"
# The embedded nats-server's own view: connections it cut as slow consumers (it logs nothing).
curl -sf http://127.0.0.1:$MP/varz > "$OUT/$TAG.varz"
for n in "${NAMES[@]}"; do c=$(grep -c 'disconnected from NATS' "$OUT/$TAG.$n.log" 2>/dev/null); echo "$n ${c:-0}"; done > "$OUT/$TAG.disconnects"
python3 "$(dirname "$0")/capacity-summary.py" "$MODE" "$OUT/$TAG"
