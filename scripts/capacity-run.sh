#!/bin/bash
# Capacity runs of docs/BENCHMARKS.md (2026-12-02). HERD is the herd binary (default: herd on PATH); OUT the
# directory for outputs (default /tmp/herd-capacity).
OUT=${OUT:-/tmp/herd-capacity}; mkdir -p "$OUT"
# usage: scripts/capacity-run.sh BIN INSTANCES DURATION PROCS CONNS TAG [profile-seconds]
BIN=$1; N=$2; D=$3; P=$4; C=$5; TAG=$6; PROF=${7:-0}
NP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
HP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
DATA=$(mktemp -d $OUT/data-XXXX)
$BIN serve --nats.listen 127.0.0.1:$NP --http 127.0.0.1:$HP --data $DATA > $OUT/$TAG.serve.log 2>&1 &
SP=$!
for i in $(seq 50); do curl -sf http://127.0.0.1:$HP/readyz >/dev/null && break; sleep 0.2; done
if [ "$PROF" != 0 ]; then (sleep 15; curl -s -o $OUT/$TAG.cpu.pprof "http://127.0.0.1:$HP/debug/pprof/profile?seconds=$PROF"; curl -s -o $OUT/$TAG.mutex.pprof "http://127.0.0.1:$HP/debug/pprof/mutex") & fi
uptime > $OUT/$TAG.load
$BIN bench load --nats nats://127.0.0.1:$NP --instances $N --duration $D --procs $P --conns $C --serve-metrics http://127.0.0.1:$HP/metrics $EXTRA > $OUT/$TAG.json 2>$OUT/$TAG.err
uptime >> $OUT/$TAG.load
kill $SP; wait $SP
rm -rf $DATA
cat $OUT/$TAG.json
