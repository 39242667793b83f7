#!/bin/bash
# Capacity runs of docs/BENCHMARKS.md (2026-12-02). HERD is the herd binary (default: herd on PATH); OUT the
# directory for outputs (default /tmp/herd-capacity).
OUT=${OUT:-/tmp/herd-capacity}; mkdir -p "$OUT"
# usage: scripts/capacity-workers.sh INSTANCES DURATION TAG
N=$1; D=$2; TAG=$3; BIN=${HERD:-herd}
NP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
HP=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
DATA=$(mktemp -d $OUT/data-XXXX)
$BIN serve --roles detect,web --nats.listen 127.0.0.1:$NP --http 127.0.0.1:$HP --data $DATA > $OUT/$TAG.serve.log 2>&1 & SP=$!
for i in $(seq 50); do curl -sf http://127.0.0.1:$HP/readyz >/dev/null && break; sleep 0.2; done
WP=()
for w in 1 2 3; do
  WH=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  $BIN rollup --nats nats://127.0.0.1:$NP --worker.id w$w --http 127.0.0.1:$WH > $OUT/$TAG.w$w.log 2>&1 & WP+=($!)
done
sleep 4
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
S0=$(cpu $SP); W0=(); for p in ${WP[@]}; do W0+=($(cpu $p)); done; T0=$(date +%s.%N)
uptime > $OUT/$TAG.load
( while sleep 30; do echo "$(date +%T) rss_kib serve $(awk '/VmRSS/{print $2}' /proc/$SP/status) workers $(for p in ${WP[@]}; do awk '/VmRSS/{printf "%s ", $2}' /proc/$p/status; done)"; done ) > $OUT/$TAG.rss 2>/dev/null &
RP=$!
$BIN bench load --nats nats://127.0.0.1:$NP --instances $N --duration $D --conns 8 > $OUT/$TAG.json 2>$OUT/$TAG.err
T1=$(date +%s.%N); uptime >> $OUT/$TAG.load; kill $RP
echo "serve $(( $(cpu $SP) - S0 )) ticks" > $OUT/$TAG.cpu
i=0; for p in ${WP[@]}; do echo "worker$i $(( $(cpu $p) - ${W0[$i]} )) ticks, $(grep VmHWM /proc/$p/status)" >> $OUT/$TAG.cpu; i=$((i+1)); done
echo "elapsed $(python3 -c "print($T1-$T0)") s" >> $OUT/$TAG.cpu
kill ${WP[@]} $SP; wait
rm -rf $DATA
cat $OUT/$TAG.json; cat $OUT/$TAG.cpu; cat $OUT/$TAG.load
