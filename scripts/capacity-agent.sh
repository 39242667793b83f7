#!/bin/bash
# Capacity runs of docs/BENCHMARKS.md (2026-12-02). HERD is the herd binary (default: herd on PATH); OUT the
# directory for outputs (default /tmp/herd-capacity).
OUT=${OUT:-/tmp/herd-capacity}; mkdir -p "$OUT"
# usage: scripts/capacity-agent.sh [seconds]   (herd serve, a 200-series exporter, herd agent every 250 ms)
D=${1:-60}
NP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
HP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
EP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
DATA=$(mktemp -d $OUT/data-XXXX)
python3 "$(dirname "$0")/capacity-exporter.py" $EP & XP=$!
${HERD:-herd} serve --nats.listen 127.0.0.1:$NP --http 127.0.0.1:$HP --data $DATA > $OUT/agent.serve.log 2>&1 & SP=$!
for i in $(seq 50); do curl -sf http://127.0.0.1:$HP/readyz >/dev/null && break; sleep 0.2; done
${HERD:-herd} agent --nats nats://127.0.0.1:$NP --service checkout --version 1.0.0 --scrape http://127.0.0.1:$EP/metrics --interval 250ms > $OUT/agent.log 2>&1 & AP=$!
sleep 5
T0=$(awk '{print $14+$15}' /proc/$AP/stat); uptime
sleep $D
T1=$(awk '{print $14+$15}' /proc/$AP/stat)
echo "agent cpu ticks $((T1-T0)) over $D s (CLK_TCK $(getconf CLK_TCK))"
grep -E "VmRSS|VmHWM" /proc/$AP/status
curl -s http://127.0.0.1:$HP/metrics | grep -E '^herd_rollup_(batches_total|samples_total|batches_refused_total)' | grep -v ' 0$'
uptime
kill $AP $SP $XP; wait
rm -rf $DATA
