#!/usr/bin/env bash
# scale.sh: the router's memory under many quiet SSE streams, one huge response and one
# huge request body (issue 8 §3). Needs `make build`; starts its own worker
# (scale backend, 4 listeners) and a fresh bin/vllm-router for each test, and stops them.
#
#   bash bench/peer/scale.sh [sse] [bigresp] [bigreq]      (default: all)
#
# Knobs: SC_STREAMS=9500 (each stream costs the router two descriptors and the hard
# `ulimit -n` here is 20000), SC_EVENTS=30 (one per second), SC_SIZE=200000000 bytes,
# SC_ROUTER_ARGS (extra router flags), SC_ROUTER_BIN (another router build), SC_PPROF=1 (run profile.sh's pprofrouter instead
# and save heap and goroutine profiles while all SSE streams are open).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${PB_WORK:-/tmp/switchyard-peerbench}
BIN=$WORK/bin
STREAMS=${SC_STREAMS:-9500}
EVENTS=${SC_EVENTS:-30}
SIZE=${SC_SIZE:-200000000}
ROUTER_ARGS=${SC_ROUTER_ARGS:-}
TESTS=${*:-sse bigresp bigreq}
PORT=18411
mkdir -p "$BIN" "$WORK/results"
OUT=$WORK/results/scale-$(date +%Y%m%d-%H%M%S).txt
PIDS=()
log() { printf '[scale %s] %s\n' "$(date +%T)" "$*" >&2; }
cleanup() { local p; for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { local i; for ((i = 0; i < 100; i++)); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.1; done; log "port $1 did not open"; exit 1; }

(cd "$HERE/scale" && CGO_ENABLED=0 go build -o "$BIN/scale" .)
ROUTER_BIN=${SC_ROUTER_BIN:-$REPO/bin/vllm-router}
PPROF=${SC_PPROF:-0}
if [[ $PPROF == 1 ]]; then
  ROUTER_BIN=$BIN/pprofrouter
  [[ -x $ROUTER_BIN ]] || { log "run bench/peer/profile.sh once first (it builds pprofrouter)"; exit 1; }
fi
[[ -x $ROUTER_BIN ]] || { log "run make build first"; exit 1; }

"$BIN/scale" backend -addr 127.0.0.1:18601,127.0.0.1:18602,127.0.0.1:18603,127.0.0.1:18604 >"$WORK/scale-backend.log" 2>&1 &
PIDS+=($!)
for p in 18601 18602 18603 18604; do wait_port $p; done

ROUTER=''
start_router() { # policy
  PPROF_ADDR=127.0.0.1:18499 "$ROUTER_BIN" --host 127.0.0.1 --port $PORT --policy "$1" --prometheus-port 0 --log-level warn \
    --worker-urls http://127.0.0.1:18601 http://127.0.0.1:18602 http://127.0.0.1:18603 http://127.0.0.1:18604 \
    $ROUTER_ARGS >>"$WORK/scale-router.log" 2>&1 &
  ROUTER=$!
  PIDS+=($ROUTER)
  wait_port $PORT
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{}' http://127.0.0.1:$PORT/v1/chat/completions) == 200 ]] && return 0
    sleep 0.1
  done
  log "router never answered 200"; exit 1
}
stop_router() { kill -TERM "$ROUTER" 2>/dev/null || true; wait "$ROUTER" 2>/dev/null || true; }

{
  echo "# scale.sh $(date -u +%FT%TZ) router=$(git -C "$REPO" rev-parse --short HEAD) streams=$STREAMS events=$EVENTS size=$SIZE"
  for t in $TESTS; do
    case $t in
      sse)
        start_router consistent_hash
        log "sse: $STREAMS streams, $EVENTS events 1 s apart"
        if [[ $PPROF == 1 ]]; then
          (sleep $((EVENTS / 2 + 10)); curl -s -o "${OUT%.txt}-heap.pb.gz" http://127.0.0.1:18499/debug/pprof/heap
           curl -s -o "${OUT%.txt}-goroutines.txt" 'http://127.0.0.1:18499/debug/pprof/goroutine?debug=1') &
        fi
        "$BIN/scale" sse -url http://127.0.0.1:$PORT -streams "$STREAMS" -events "$EVENTS" -pid "$ROUTER" || true
        stop_router ;;
      bigresp)
        for m in json stream sse; do
          start_router consistent_hash
          log "bigresp $m: $SIZE bytes"
          "$BIN/scale" bigresp -url http://127.0.0.1:$PORT -size "$SIZE" -mode $m -pid "$ROUTER" || true
          stop_router
        done
        start_router consistent_hash
        log "bigresp json on /inference/v1/generate"
        "$BIN/scale" bigresp -url http://127.0.0.1:$PORT -size "$SIZE" -mode json -path /inference/v1/generate -pid "$ROUTER" || true
        stop_router ;;
      bigreq)
        start_router consistent_hash
        log "bigreq: $SIZE bytes"
        "$BIN/scale" bigreq -url http://127.0.0.1:$PORT -size "$SIZE" -pid "$ROUTER" || true
        stop_router ;;
      *) log "unknown test $t" ;;
    esac
  done
} | tee "$OUT"
log "results: $OUT"
