#!/usr/bin/env bash
# profile.sh: where the router's CPU goes under the pinned JSON load, against nginx.
#
#   bash bench/peer/profile.sh            (after `make build`; uses run.sh's binaries and bodies)
#
# Same shape as `PB_PIN=1 run.sh`: wrk (1 thread, 64 connections) on CPU 0; the proxy
# (1 worker / GOMAXPROCS=1) and 4 fakevllm backends on CPU 1; consistent hash.
# For each of nginx and the router, one clean window of PF_SECS measures
#   rps, proxy user+sys µs per request (/proc), context switches per request
#   (/proc/PID/status, voluntary and not), syscalls per request by name (perf stat on
#   syscall tracepoints), and for the router allocations and bytes per request
#   (go_memstats_* from its own Prometheus port).
# Then, for the router only, a second window with a pprof CPU profile and an allocation
# profile (bench/peer/pprofrouter: vllm-router plus net/http/pprof on a side port) and a
# third with `perf record -g` for the kernel/user split. Results: $PB_WORK/results/profile-STAMP/.
#
# Knobs: PF_SECS=10, PF_ROUTER_ARGS (extra router flags), PF_GOWORK (a go.work whose
# router module replaces this checkout, to profile a patched copy), PB_WORK (as run.sh).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${PB_WORK:-/tmp/switchyard-peerbench}
BIN=$WORK/bin
SECS=${PF_SECS:-10}
ROUTER_ARGS=${PF_ROUTER_ARGS:-}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$WORK/results/profile-$STAMP
RUN=$WORK/profile-run
mkdir -p "$OUT" "$RUN"
HZ=$(getconf CLK_TCK)
PIDS=()
log() { printf '[profile %s] %s\n' "$(date +%T)" "$*" >&2; }
cleanup() { local p; for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

PB_MODES=json bash "$HERE/run.sh" setup
log "building pprofrouter"
GOWORK_FILE=${PF_GOWORK:-$WORK/gowork/go.work}
if [[ ! -f $GOWORK_FILE ]]; then
  mkdir -p "$(dirname "$GOWORK_FILE")"
  (cd "$(dirname "$GOWORK_FILE")" && go work init "$REPO" "$HERE/pprofrouter")
fi
(cd "$HERE/pprofrouter" && GOWORK=$GOWORK_FILE go build -o "$BIN/pprofrouter" .)

wait_port() { local i; for ((i = 0; i < 100; i++)); do ss -Hltn "sport = :$1" | grep -q . && return 0; sleep 0.1; done; log "port $1 did not open"; exit 1; }
start() { "$@" >>"$RUN/procs.log" 2>&1 & PIDS+=($!); LAST=$!; }

for p in 18001 18002 18003 18004; do
  start taskset -c 1 env GOMAXPROCS=1 "$BIN/fakevllm" -addr 127.0.0.1:$p
done
for p in 18001 18002 18003 18004; do wait_port $p; done
URLS="http://127.0.0.1:18001 http://127.0.0.1:18002 http://127.0.0.1:18003 http://127.0.0.1:18004"

# nginx with run.sh's config, 1 worker
SERVERS=''; for p in 18001 18002 18003 18004; do SERVERS+="        server 127.0.0.1:$p;"$'\n'; done
mkdir -p "$RUN"/nginx-{body,proxy,fastcgi,uwsgi,scgi}
t=$(<"$HERE/conf/nginx.conf.tmpl"); t=${t//@RUN@/$RUN}; t=${t//@WORKERS@/1}; t=${t//@PORT_HASH@/18101}
t=${t//@PORT_RR@/18102}; t=${t//@SERVERS@/$SERVERS}; t=${t//@CPU_AFFINITY@/}; printf '%s\n' "$t" >"$RUN/nginx.conf"
start taskset -c 1 nginx -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log" -g 'daemon off;'
NGINX_MASTER=$LAST
start taskset -c 1 env GOMAXPROCS=1 PPROF_ADDR=127.0.0.1:18499 "$BIN/pprofrouter" --host 127.0.0.1 --port 18401 \
  --worker-urls $URLS --policy consistent_hash --prometheus-port 18498 $ROUTER_ARGS
ROUTER=$LAST
wait_port 18101; wait_port 18401; wait_port 18498; wait_port 18499
sleep 1
NGINX_WORKER=$(ps -o pid= --ppid "$NGINX_MASTER" | tr -d ' ' | head -1)
for i in $(seq 50); do curl -sf -o /dev/null -X POST --data-binary @"$WORK/body-false.json" http://127.0.0.1:18401/v1/chat/completions && break; sleep 0.2; done

wrk_run() { # url secs -> PBJSON line on stdout
  PB_STREAM=0 PB_BODY_FILE=$WORK/body-false.json PB_SESSIONS=9973 taskset -c 0 \
    wrk -t1 -c64 -d"${2}s" --timeout 10s -s "$HERE/lua/chat.lua" "$1" | grep '^PBJSON ' | sed 's/^PBJSON //'
}
cpu_ticks() { local f a; read -r f </proc/"$1"/stat; f=${f##*) }; a=($f); echo "${a[11]} ${a[12]}"; }
ctxsw() { awk '/^voluntary_ctxt_switches/{v+=$2} /^nonvoluntary_ctxt_switches/{n+=$2} END{print v, n}' /proc/"$1"/task/*/status 2>/dev/null; } # all threads (threads that exited are not counted)
memstats() { curl -s http://127.0.0.1:18498/metrics | awk '/^go_memstats_mallocs_total /{m=$2} /^go_memstats_alloc_bytes_total /{b=$2} /^go_gc_duration_seconds_count /{g=$2} END{printf "%.0f %.0f %.0f\n", m, b, g}'; }
SYSCALLS="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait futex nanosleep getsockopt setsockopt sched_yield tgkill madvise accept4 close clock_gettime"
EVENTS=raw_syscalls:sys_enter,context-switches
for s in $SYSCALLS; do EVENTS+=",syscalls:sys_enter_$s"; done

measure() { # name pid url
  local name=$1 pid=$2 url=$3
  wrk_run "$url" 2 >/dev/null
  local c0 x0 m0 c1 x1 m1
  c0=($(cpu_ticks "$pid")); x0=($(ctxsw "$pid"))
  [[ $name == router ]] && m0=($(memstats))
  perf stat -x, -e "$EVENTS" -p "$pid" -o "$OUT/perfstat-$name.csv" -- sleep "$SECS" &
  local perfpid=$!
  local r; r=$(wrk_run "$url" "$SECS")
  wait $perfpid || true
  c1=($(cpu_ticks "$pid")); x1=($(ctxsw "$pid"))
  [[ $name == router ]] && m1=($(memstats))
  local reqs; reqs=$(jq -r .requests <<<"$r")
  echo "$r" >"$OUT/wrk-$name.json"
  {
    printf '%s: %d requests in %ss = %d rps, errors %s\n' "$name" "$reqs" "$SECS" $((reqs / SECS)) \
      "$(jq -r '.err_connect+.err_read+.err_write+.err_status+.err_timeout' <<<"$r")"
    awk -v u=$((c1[0] - c0[0])) -v s=$((c1[1] - c0[1])) -v hz="$HZ" -v n="$reqs" \
      'BEGIN{printf "  CPU per request: user %.1f us + sys %.1f us = %.1f us\n", u/hz/n*1e6, s/hz/n*1e6, (u+s)/hz/n*1e6}'
    awk -v v=$((x1[0] - x0[0])) -v nv=$((x1[1] - x0[1])) -v n="$reqs" \
      'BEGIN{printf "  context switches per request: voluntary %.3f + involuntary %.3f = %.3f\n", v/n, nv/n, (v+nv)/n}'
    echo "  syscalls per request (perf stat over the same ${SECS} s as wrk, started together):"
    awk -F, -v n="$reqs" '$3 ~ /sys_enter|context-switches/ && $1+0 > 0 {e=$3; sub(/.*sys_enter_/, "", e); printf "    %-28s %8.3f\n", e, $1/n}' "$OUT/perfstat-$name.csv" | sort -k2 -nr
    if [[ $name == router ]]; then
      awk -v m=$((m1[0] - m0[0])) -v b=$((m1[1] - m0[1])) -v g=$((m1[2] - m0[2])) -v n="$reqs" \
        'BEGIN{printf "  Go heap: %.2f allocations and %.0f bytes per request, %d GC cycles in the window\n", m/n, b/n, g}'
    fi
  } | tee -a "$OUT/summary.txt"
}

log "window 1: counters (nginx, then router)"
measure nginx "$NGINX_WORKER" http://127.0.0.1:18101
measure router "$ROUTER" http://127.0.0.1:18401

log "window 2: pprof CPU + allocations (router)"
curl -s -o "$OUT/allocs-before.pb.gz" 'http://127.0.0.1:18499/debug/pprof/allocs?gc=1' # gc=1: the profile is published at GC
curl -s -o "$OUT/cpu.pb.gz" "http://127.0.0.1:18499/debug/pprof/profile?seconds=$SECS" &
cpid=$!
sleep 0.3
wrk_run http://127.0.0.1:18401 "$SECS" >"$OUT/wrk-pprof.json"
wait $cpid
curl -s -o "$OUT/allocs-after.pb.gz" 'http://127.0.0.1:18499/debug/pprof/allocs?gc=1'
{
  echo; echo "== pprof CPU, top 25 by flat =="; go tool pprof -top -nodecount=25 "$BIN/pprofrouter" "$OUT/cpu.pb.gz" 2>/dev/null
  echo; echo "== pprof CPU, top 40 by cum =="; go tool pprof -top -cum -nodecount=40 "$BIN/pprofrouter" "$OUT/cpu.pb.gz" 2>/dev/null
  echo; echo "== allocations during the window (alloc_space, diff) =="
  go tool pprof -top -sample_index=alloc_space -nodecount=20 -diff_base "$OUT/allocs-before.pb.gz" "$BIN/pprofrouter" "$OUT/allocs-after.pb.gz" 2>/dev/null
  echo; echo "== allocations during the window (alloc_objects, diff) =="
  go tool pprof -top -sample_index=alloc_objects -nodecount=20 -diff_base "$OUT/allocs-before.pb.gz" "$BIN/pprofrouter" "$OUT/allocs-after.pb.gz" 2>/dev/null
} >"$OUT/pprof.txt"

log "window 3: perf record -g (router, kernel and user)"
perf record -q -g -F 999 -o "$OUT/perf.data" -p "$ROUTER" -- sleep "$SECS" 2>/dev/null &
ppid=$!
sleep 0.3
wrk_run http://127.0.0.1:18401 "$SECS" >"$OUT/wrk-perf.json"
wait $ppid || true
{
  echo "== perf: share of samples by mode =="
  perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -8
  echo; echo "== perf: top 30 symbols (self) =="
  perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30
} >"$OUT/perf.txt"
log "done: $OUT (summary.txt, pprof.txt, perf.txt)"
cat "$OUT/summary.txt"
