#!/usr/bin/env bash
# peerbench: established reverse proxies (nginx, HAProxy, Caddy) side by side with
# our router, on this machine, with the same load, backends and request mix.
# Copied from the team's shared harness so the repository does not depend on it;
# `make peerbench` runs it with ROUTER_CMD set to bin/vllm-router (see RESULTS.md).
#
#   bash run.sh            install what is missing, build, start, measure, print table, stop
#   bash run.sh setup      only install + build
#   bash run.sh stop       stop whatever a previous run left (by the PIDs it recorded)
#
# Knobs (environment):
#   PB_WORK=/tmp/switchyard-peerbench  scratch folder (binaries, configs, logs, results)
#   PB_DURATION=10              seconds per measurement      PB_WARMUP=2  seconds of warm-up before each
#   PB_CONNS=64 PB_THREADS=2    wrk connections / threads (1 when PB_PIN=1)    PB_RUNS=2 rounds (interleaved: A B C A B C)
#   PB_TARGETS="direct nginx haproxy gostd router"   (router is skipped unless ROUTER_CMD is set; caddy is also available)
#        gostd = Go stdlib httputil.ReverseProxy with the same two policies (refproxy/)
#   PB_POLICIES="hash rr"       PB_MODES="json sse c1 rate"
#        json = 1 KB chat POST -> 351 B JSON, closed loop, PB_CONNS connections (throughput)
#        sse  = same POST with "stream":true -> 16 SSE chunks + [DONE], closed loop
#        c1   = json over 1 connection, 1 thread (unloaded per-request latency)
#        rate = json at a fixed PB_RATE req/s with vegeta (open loop latency)
#   PB_RATE=2000                req/s for the rate mode
#   PB_PIN=0                    1 = load generator on CPU 0, proxy + backends on CPU 1 (steadier ratios;
#                               but then "direct" is bounded by wrk's single core: compare against nginx)
#   PB_WORKERS                  proxy workers/threads/GOMAXPROCS (default 2, or 1 when PB_PIN=1)
#   PB_BACKEND_IMPL=fasthttp    or nethttp;  PB_CHUNK_DELAY=0 (e.g. 1ms) between SSE chunks
#   PB_SESSIONS=9973            distinct X-Session-ID values (prime: round robin never lines up with
#                               the id cycle, so rr rows show split sessions as they should)
#   PB_QUIET=20                 before each measurement wait (<= PB_QUIET_WAIT=60 s) until other CPU use < this % (of 200)
#   PB_SKIP="gostd:sse gostd:c1"  target:mode pairs not measured (e.g. a peer needed for one mode only)
#   PB_MAX_OTHER=20 PB_RETRIES=2  repeat a measurement (up to 2 more times) when processes that are
#                               not ours took more than this % CPU during it (shared machines)
#   ROUTER_CMD                  command that starts our router in the foreground, e.g.
#       ROUTER_CMD='/path/router -listen 127.0.0.1:{PORT} -backends {BACKENDS} -policy {POLICY}'
#     placeholders: {PORT} listen port, {BACKENDS} comma-separated http://127.0.0.1:P URLs,
#     {BACKEND_ADDRS} comma-separated 127.0.0.1:P, {BACKEND_URLS} the URLs space-separated,
#     {POLICY} hash|rr, {POLICY_NAME} consistent_hash|round_robin, {WORKERS}. For the router:
#       ROUTER_CMD='/path/vllm-router --host 127.0.0.1 --port {PORT} --worker-urls {BACKEND_URLS} --policy {POLICY_NAME}'
#     It is started once per policy (hash on 18401, rr on 18402), with GOMAXPROCS={WORKERS}.
#     ROUTER_NAME (default "router") names its column.
#   ROUTER2_CMD, ROUTER2_NAME   a second router build (target "router2", ports 18403/18404), for
#                               A/B runs of a patched copy beside the committed one, rounds interleaved
#
# Ports: backends 18001-18004; nginx 18101/18102; haproxy 18201/18202; caddy 18301/18302;
# router 18401/18402 (router2 18403/18404); gostd 18501/18502 (hash/rr). Only 127.0.0.1 is used.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${PB_WORK:-/tmp/switchyard-peerbench}
RUN=$WORK/run
BIN=$WORK/bin
RES=$WORK/results
DUR=${PB_DURATION:-10}
WARM=${PB_WARMUP:-2}
CONNS=${PB_CONNS:-64}
RUNS=${PB_RUNS:-2}
TARGETS=${PB_TARGETS:-"direct nginx haproxy gostd router"}
POLICIES=${PB_POLICIES:-"hash rr"}
MODES=${PB_MODES:-"json sse c1 rate"}
RATE=${PB_RATE:-2000}
PIN=${PB_PIN:-0}
if [[ $PIN == 1 ]]; then WORKERS=${PB_WORKERS:-1} THREADS=${PB_THREADS:-1}; else WORKERS=${PB_WORKERS:-2} THREADS=${PB_THREADS:-2}; fi
BIMPL=${PB_BACKEND_IMPL:-fasthttp}
CHUNK_DELAY=${PB_CHUNK_DELAY:-0}
SESSIONS=${PB_SESSIONS:-9973}
QUIET=${PB_QUIET:-20}
QUIET_WAIT=${PB_QUIET_WAIT:-60}
SKIP=${PB_SKIP:-}
MAX_OTHER=${PB_MAX_OTHER:-20}
RETRIES=${PB_RETRIES:-2}
ROUTER_CMD=${ROUTER_CMD:-}
ROUTER_NAME=${ROUTER_NAME:-router}
ROUTER2_CMD=${ROUTER2_CMD:-}
ROUTER2_NAME=${ROUTER2_NAME:-router2}
BPORTS=(18001 18002 18003 18004)
VEGETA_VERSION=v12.13.0
HZ=$(getconf CLK_TCK)

if [[ $PIN == 1 ]]; then LG_PIN=(taskset -c 0); SRV_PIN=(taskset -c 1); else LG_PIN=(); SRV_PIN=(); fi

log() { printf '[peerbench %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------- setup
install_missing() {
  local need=()
  command -v nginx   >/dev/null || need+=(nginx)
  command -v haproxy >/dev/null || need+=(haproxy)
  command -v wrk     >/dev/null || need+=(wrk)
  command -v caddy   >/dev/null || need+=(caddy)
  command -v jq      >/dev/null || need+=(jq)
  command -v curl    >/dev/null || need+=(curl)
  command -v taskset >/dev/null || need+=(util-linux)
  command -v h2load  >/dev/null || need+=(nghttp2-client)
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  mkdir -p "$BIN" "$RUN" "$RES"
  if [[ ! -x $BIN/fakevllm || $HERE/backend/main.go -nt $BIN/fakevllm ]]; then
    log "building fakevllm"
    (cd "$HERE/backend" && CGO_ENABLED=0 go build -trimpath -o "$BIN/fakevllm" .)
  fi
  if [[ ! -x $BIN/refproxy || $HERE/refproxy/main.go -nt $BIN/refproxy ]]; then
    log "building refproxy"
    (cd "$HERE/refproxy" && CGO_ENABLED=0 go build -trimpath -o "$BIN/refproxy" .)
  fi
  if [[ ! -x $BIN/vegeta ]] && [[ " $MODES " == *" rate "* ]]; then
    log "installing vegeta $VEGETA_VERSION"
    (cd /tmp && GOBIN=$BIN GOFLAGS=-mod=mod go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION")
  fi
}

write_bodies() {
  local filler='' i
  for ((i = 0; i < 26; i++)); do filler+='lorem ipsum dolor sit amet '; done
  local s
  for s in false true; do
    printf '{"model":"fake-vllm","stream":%s,"max_tokens":16,"temperature":0.7,"messages":[{"role":"system","content":"You are a helpful assistant used in a proxy benchmark."},{"role":"user","content":"Summarise the following text in one sentence: %s"},{"role":"assistant","content":"Sure."},{"role":"user","content":"Now say hello."}]}' \
      "$s" "$filler" >"$WORK/body-$s.json"
  done
}

# ---------------------------------------------------------------- processes
PIDS_FILE=$RUN/pids
declare -A PROXY_PID=()   # name -> pid(s) we started
declare -A ACCT=()        # name -> those pids plus their children (CPU accounting)
NCPU=$(nproc)
BACKEND_PIDS=()

track() { echo "$1 $2" >>"$PIDS_FILE"; }

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

wait_port() { # port [pid] [seconds]: wait until the port listens; fail early if pid dies
  local i
  for ((i = 0; i < ${3:-10} * 10; i++)); do
    if ! port_free "$1"; then return 0; fi
    if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then log "process $2 for port $1 exited"; return 1; fi
    sleep 0.1
  done
  log "port $1 did not open"; return 1
}

start_bg() { # name logfile cmd...   (cmd runs in foreground mode; we keep its PID)
  local name=$1 logf=$2; shift 2
  "$@" >"$logf" 2>&1 &
  local pid=$!
  track "$name" "$pid"
  echo "$pid"
}

stop_all() {
  [[ -f $PIDS_FILE ]] || return 0
  local name pid
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
  done <"$PIDS_FILE"
  sleep 0.5
  while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done <"$PIDS_FILE"
  rm -f "$PIDS_FILE"
}

backend_urls() { local p out=(); for p in "${BPORTS[@]}"; do out+=("http://127.0.0.1:$p"); done; (IFS=,; echo "${out[*]}"); }
backend_addrs() { local p out=(); for p in "${BPORTS[@]}"; do out+=("127.0.0.1:$p"); done; (IFS=,; echo "${out[*]}"); }

start_backends() {
  local p pid
  for p in "${BPORTS[@]}"; do
    port_free "$p" || { log "port $p busy"; exit 1; }
    pid=$(start_bg backend "$RUN/backend-$p.log" "${SRV_PIN[@]}" env GOMAXPROCS="$WORKERS" \
      "$BIN/fakevllm" -addr "127.0.0.1:$p" -impl "$BIMPL" -chunk-delay "$CHUNK_DELAY")
    BACKEND_PIDS+=("$pid")
  done
  local i=0
  for p in "${BPORTS[@]}"; do wait_port "$p" "${BACKEND_PIDS[$i]}"; i=$((i + 1)); done
}

render() { # template out  (replaces @TOKENS@)
  local t
  t=$(<"$1")
  t=${t//@RUN@/$RUN}
  t=${t//@WORKERS@/$WORKERS}
  t=${t//@PORT_HASH@/$PORT_HASH}
  t=${t//@PORT_RR@/$PORT_RR}
  t=${t//@SERVERS@/$SERVERS}
  t=${t//@CPU_AFFINITY@/}
  t=${t//@CPU_MAP@/}
  printf '%s\n' "$t" >"$2"
}

start_nginx() {
  PORT_HASH=18101 PORT_RR=18102
  local p; SERVERS=''
  for p in "${BPORTS[@]}"; do SERVERS+="        server 127.0.0.1:$p;"$'\n'; done
  mkdir -p "$RUN"/nginx-{body,proxy,fastcgi,uwsgi,scgi}
  render "$HERE/conf/nginx.conf.tmpl" "$RUN/nginx.conf"
  nginx -t -q -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log"
  PROXY_PID[nginx]=$(start_bg nginx "$RUN/nginx.out" "${SRV_PIN[@]}" nginx -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log" -g 'daemon off;')
  wait_port $PORT_HASH "${PROXY_PID[nginx]}" || { tail "$RUN/nginx-error.log" >&2; exit 1; }
  wait_port $PORT_RR "${PROXY_PID[nginx]}"
}

start_haproxy() {
  PORT_HASH=18201 PORT_RR=18202
  local p i=0; SERVERS=''
  for p in "${BPORTS[@]}"; do i=$((i + 1)); SERVERS+="    server b$i 127.0.0.1:$p"$'\n'; done
  render "$HERE/conf/haproxy.cfg.tmpl" "$RUN/haproxy.cfg"
  haproxy -c -q -f "$RUN/haproxy.cfg"
  PROXY_PID[haproxy]=$(start_bg haproxy "$RUN/haproxy.out" "${SRV_PIN[@]}" haproxy -db -f "$RUN/haproxy.cfg")
  wait_port $PORT_HASH "${PROXY_PID[haproxy]}" || { tail "$RUN/haproxy.out" >&2; exit 1; }
  wait_port $PORT_RR "${PROXY_PID[haproxy]}"
}

start_caddy() {
  PORT_HASH=18301 PORT_RR=18302
  local p; SERVERS=''
  for p in "${BPORTS[@]}"; do SERVERS+="127.0.0.1:$p "; done
  render "$HERE/conf/Caddyfile.tmpl" "$RUN/Caddyfile"
  mkdir -p "$RUN/caddy-home"
  PROXY_PID[caddy]=$(start_bg caddy "$RUN/caddy.out" "${SRV_PIN[@]}" env HOME="$RUN/caddy-home" \
    XDG_DATA_HOME="$RUN/caddy-home" XDG_CONFIG_HOME="$RUN/caddy-home" GOMAXPROCS="$WORKERS" \
    caddy run --config "$RUN/Caddyfile" --adapter caddyfile)
  wait_port $PORT_HASH "${PROXY_PID[caddy]}" || { tail "$RUN/caddy.out" >&2; exit 1; }
  wait_port $PORT_RR "${PROXY_PID[caddy]}"
}

start_router() { # key cmd port_hash port_rr: our router (or a second build of it, key router2)
  local key=$1 rcmd=$2 ph=$3 pr=$4 pol port cmd pids=()
  for pol in hash rr; do
    if [[ $pol == hash ]]; then port=$ph; else port=$pr; fi
    port_free $port || { log "port $port busy"; exit 1; }
    cmd=${rcmd//\{PORT\}/$port}
    cmd=${cmd//\{BACKENDS\}/$(backend_urls)}
    cmd=${cmd//\{BACKEND_ADDRS\}/$(backend_addrs)}
    cmd=${cmd//\{BACKEND_URLS\}/$(backend_urls | tr ',' ' ')}
    if [[ $pol == hash ]]; then cmd=${cmd//\{POLICY_NAME\}/consistent_hash}; else cmd=${cmd//\{POLICY_NAME\}/round_robin}; fi
    cmd=${cmd//\{POLICY\}/$pol}
    cmd=${cmd//\{WORKERS\}/$WORKERS}
    log "$key($pol): $cmd"
    pids+=("$(start_bg "$key" "$RUN/$key-$pol.log" "${SRV_PIN[@]}" env GOMAXPROCS="$WORKERS" bash -c "exec $cmd")")
  done
  PROXY_PID[$key]="${pids[*]}"
  wait_port "$ph" "${pids[0]}" 20 || { tail "$RUN/$key-hash.log" >&2; exit 1; }
  wait_port "$pr" "${pids[1]}" 20 || { tail "$RUN/$key-rr.log" >&2; exit 1; }
}

start_gostd() { # Go stdlib httputil.ReverseProxy reference (refproxy/), one process per policy
  local pol port pids=()
  for pol in hash rr; do
    if [[ $pol == hash ]]; then port=18501; else port=18502; fi
    port_free $port || { log "port $port busy"; exit 1; }
    pids+=("$(start_bg gostd "$RUN/gostd-$pol.log" "${SRV_PIN[@]}" env GOMAXPROCS="$WORKERS" \
      "$BIN/refproxy" -listen 127.0.0.1:$port -backends "$(backend_urls)" -policy $pol)")
  done
  PROXY_PID[gostd]="${pids[*]}"
  wait_port 18501 "${pids[0]}" || { tail "$RUN/gostd-hash.log" >&2; exit 1; }
  wait_port 18502 "${pids[1]}" || { tail "$RUN/gostd-rr.log" >&2; exit 1; }
}

target_url() { # target policy
  case $1 in
    direct) echo "http://127.0.0.1:${BPORTS[0]}" ;;
    nginx) [[ $2 == hash ]] && echo http://127.0.0.1:18101 || echo http://127.0.0.1:18102 ;;
    haproxy) [[ $2 == hash ]] && echo http://127.0.0.1:18201 || echo http://127.0.0.1:18202 ;;
    caddy) [[ $2 == hash ]] && echo http://127.0.0.1:18301 || echo http://127.0.0.1:18302 ;;
    gostd) [[ $2 == hash ]] && echo http://127.0.0.1:18501 || echo http://127.0.0.1:18502 ;;
    router) [[ $2 == hash ]] && echo http://127.0.0.1:18401 || echo http://127.0.0.1:18402 ;;
    router2) [[ $2 == hash ]] && echo http://127.0.0.1:18403 || echo http://127.0.0.1:18404 ;;
  esac
}

# ---------------------------------------------------------------- CPU accounting
# Fork-free on purpose: on this VM every fork/exec costs milliseconds of CPU, and
# the accounting must not show up as "other load".
resolve_acct() { # expand PROXY_PID[x] with children (nginx workers) once, after start
  local k p c
  for k in "${!PROXY_PID[@]}"; do
    local all=()
    for p in ${PROXY_PID[$k]}; do
      all+=("$p")
      for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do all+=("$c"); done
    done
    ACCT[$k]="${all[*]}"
  done
  ALL_OURS="${BACKEND_PIDS[*]} ${ACCT[*]}"
}
ticks() { # pids... -> TICKS = sum of utime+stime
  local p f sum=0 a
  for p in "$@"; do
    { read -r f </proc/"$p"/stat; } 2>/dev/null || continue
    f=${f##*) }
    a=($f)
    sum=$((sum + a[11] + a[12]))
  done
  TICKS=$sum
}
sysstat() { # -> SYS=(busy total steal irq+softirq) ticks from /proc/stat
  local cpu u n s i w irq sirq st rest
  read -r cpu u n s i w irq sirq st rest </proc/stat
  SYS=($((u + n + s + irq + sirq + st)) $((u + n + s + i + w + irq + sirq + st)) $st $((irq + sirq)))
}
other_busy_pct() { # OTHER = CPU % (of 100*ncpu) used over 1 s by processes other than ours
  local a b o0
  ticks $ALL_OURS; o0=$TICKS; sysstat; a=("${SYS[@]}")
  sleep 1
  ticks $ALL_OURS; sysstat; b=("${SYS[@]}")
  OTHER=$(( ((b[0] - a[0]) - (TICKS - o0)) * 100 * NCPU / (b[1] - a[1] > 0 ? b[1] - a[1] : 1) ))
  ((OTHER < 0)) && OTHER=0
  return 0
}
wait_quiet() { # waits (<= QUIET_WAIT s) until other load < QUIET; leaves OTHER set
  local i
  for ((i = 0; i < QUIET_WAIT; i++)); do
    other_busy_pct
    ((OTHER < QUIET)) && return 0
    ((i == 0)) && log "other processes use ${OTHER}% CPU; waiting for < ${QUIET}%"
  done
  log "still busy (${OTHER}%), measuring anyway"
}

# ---------------------------------------------------------------- load
reset_stats() { local p; for p in "${BPORTS[@]}"; do curl -s -o /dev/null "http://127.0.0.1:$p/stats?reset=1"; done; }
collect_stats() { # -> "backend_requests split_sessions max_share%"
  local p
  for p in "${BPORTS[@]}"; do curl -s "http://127.0.0.1:$p/stats"; echo; done |
    jq -rs '(map(.requests)|add) as $t
      | ([.[].sessions[]] | group_by(.) | map(select(length>1)) | length) as $split
      | (if $t > 0 then (map(.requests)|max) * 100 / $t else 0 end) as $mx
      | "\($t) \($split) \($mx|floor)"'
}

run_wrk() { # url mode seconds -> $RUN/result.json; load generator CPU seconds in $RUN/lg.time
  local url=$1 mode=$2 secs=$3 stream=0 c=$CONNS t=$THREADS
  [[ $mode == sse ]] && stream=1
  [[ $mode == c1 ]] && { c=1; t=1; }
  local body=$WORK/body-false.json
  ((stream)) && body=$WORK/body-true.json
  local TIMEFORMAT='%U %S'
  { time PB_STREAM=$stream PB_BODY_FILE=$body PB_SESSIONS=$SESSIONS "${LG_PIN[@]}" \
      wrk -t"$t" -c"$c" -d"${secs}s" --timeout 10s -s "$HERE/lua/chat.lua" "$url" >"$RUN/wrk.out" 2>&1; } 2>"$RUN/lg.time" || true
  grep '^PBJSON ' "$RUN/wrk.out" | sed 's/^PBJSON //' >"$RUN/result.json" || true
}

make_targets() { # url -> TARGETS_FILE: vegeta targets, one per session id
  local url=$1
  TARGETS_FILE=$RUN/targets-${1##*:}-$SESSIONS.jsonl
  if [[ ! -s $TARGETS_FILE ]]; then
    local b64; b64=$(base64 -w0 <"$WORK/body-false.json")
    awk -v n="$SESSIONS" -v u="$url/v1/chat/completions" -v b="$b64" 'BEGIN{for(i=0;i<n;i++) printf "{\"method\":\"POST\",\"url\":\"%s\",\"body\":\"%s\",\"header\":{\"Content-Type\":[\"application/json\"],\"X-Session-ID\":[\"sess-%06d\"]}}\n", u, b, i}' >"$TARGETS_FILE"
  fi
}

run_vegeta() { # url seconds -> $RUN/result.json (same keys as wrk's PBJSON)
  local url=$1 secs=$2
  make_targets "$url"
  local TIMEFORMAT='%U %S'
  { time "${LG_PIN[@]}" "$BIN/vegeta" attack -format=json -targets="$TARGETS_FILE" -rate="$RATE" -duration="${secs}s" \
      -timeout=10s -keepalive=true -workers=16 -max-workers=256 -output="$RUN/vegeta.bin"; } 2>"$RUN/lg.time" || true
  "$BIN/vegeta" report -type=json "$RUN/vegeta.bin" >"$RUN/wrk.out"
  jq -c --argjson d "$secs" '{requests: .requests, duration_us: ($d*1000000), err_status: (.requests - (.status_codes["200"] // 0)),
      err_connect:0, err_read:0, err_write:0, err_timeout:0,
      p50_us: (.latencies["50th"]/1000|floor), p90_us: (.latencies["90th"]/1000|floor),
      p99_us: (.latencies["99th"]/1000|floor), p999_us: (.latencies["99th"]/1000|floor), max_us: (.latencies.max/1000|floor),
      mean_us: (.latencies.mean/1000), rps_override: .throughput}' "$RUN/wrk.out" >"$RUN/result.json" || true
}

measure() { # target policy mode round: one measurement, repeated while other load disturbed it
  local attempt
  for ((attempt = 1; attempt <= RETRIES + 1; attempt++)); do
    ROW=''
    measure_once "$@" "$attempt"
    [[ -n $ROW ]] || return 0
    if ((ROW_OTHER <= MAX_OTHER || attempt == RETRIES + 1)); then break; fi
    log "$1/$2/$3: other processes took ${ROW_OTHER}% CPU during the run; repeating"
  done
  printf '%s\n' "$ROW" | tee -a "$RESULT"
}

measure_once() { # target policy mode round attempt -> ROW, ROW_OTHER
  local target=$1 pol=$2 mode=$3 round=$4 attempt=$5 url; url=$(target_url "$target" "$pol")
  local label=$target
  [[ $target == router ]] && label=$ROUTER_NAME
  [[ $target == router2 ]] && label=$ROUTER2_NAME
  wait_quiet
  local bg=$OTHER
  reset_stats
  if [[ $mode == rate ]]; then run_vegeta "$url" "$WARM"; else run_wrk "$url" "$mode" "$WARM"; fi
  reset_stats
  local ppids=${ACCT[$target]:-}
  local p0 b0 s0 p1 b1 s1
  ticks $ppids; p0=$TICKS; ticks "${BACKEND_PIDS[@]}"; b0=$TICKS; sysstat; s0=("${SYS[@]}")
  if [[ $mode == rate ]]; then run_vegeta "$url" "$DUR"; else run_wrk "$url" "$mode" "$DUR"; fi
  ticks $ppids; p1=$TICKS; ticks "${BACKEND_PIDS[@]}"; b1=$TICKS; sysstat; s1=("${SYS[@]}")
  local lgt; lgt=$(awk -v hz="$HZ" '{printf "%.0f", ($1+$2)*hz}' "$RUN/lg.time")
  local st; st=$(collect_stats)
  if [[ ! -s $RUN/result.json ]]; then log "no result for $target/$pol/$mode (see $RUN/wrk.out)"; return 0; fi
  local el=$((s1[1] - s0[1])) # total ticks over all CPUs
  ROW=$(jq -rn --slurpfile rr "$RUN/result.json" --arg target "$label" --arg pol "$pol" --arg mode "$mode" --arg round "$round" \
    --argjson pt $((p1 - p0)) --argjson bt $((b1 - b0)) --argjson lgt "${lgt:-0}" --argjson busy $((s1[0] - s0[0])) \
    --argjson steal $((s1[2] - s0[2])) --argjson sirq $((s1[3] - s0[3])) --argjson el "$el" --arg attempt "$attempt" \
    --argjson ncpu "$NCPU" --arg st "$st" --arg bg "$bg" '
    def pct(x): if $el > 0 then (x * 100 * $ncpu / $el) else 0 end;
    $rr[0] as $r | ($st | split(" ")) as $s |
    [ $target, $pol, $mode, $round,
      ((if $r.rps_override then $r.rps_override else ($r.requests / ($r.duration_us / 1e6)) end) | floor),
      ($r.p50_us/1000), ($r.p90_us/1000), ($r.p99_us/1000), ($r.p999_us/1000), ($r.max_us/1000),
      ($r.err_connect + $r.err_read + $r.err_write + $r.err_status + $r.err_timeout),
      (pct($lgt)|floor), (pct($pt)|floor), (pct($bt)|floor), (pct($busy)|floor), (pct($steal)|floor),
      ([0, (pct($busy) - pct($lgt) - pct($pt) - pct($bt) - pct($sirq))] | max | floor), ($bg|tonumber),
      ($s[0]|tonumber), ($s[1]|tonumber), ($s[2]|tonumber), (pct($sirq)|floor), ($attempt|tonumber) ] | @tsv')
  ROW_OTHER=$(cut -f17 <<<"$ROW")
  cp "$RUN/wrk.out" "$RES/raw-$STAMP-$label-$pol-$mode-$round.txt" 2>/dev/null || true
}

HEADER=$'target\tpolicy\tmode\tround\trps\tp50_ms\tp90_ms\tp99_ms\tp999_ms\tmax_ms\terrors\tcpu_lg%\tcpu_proxy%\tcpu_backends%\tcpu_busy%\tsteal%\tcpu_other%\tbg_before%\tbackend_reqs\tsplit_sessions\tmax_backend_share%\tsoftirq%\tattempt'

summary() { # result tsv -> medians per target/policy/mode, with paired ratios
  # vsDirect / vsNginx: ratio to direct (same mode) / to nginx (same policy and mode)
  # computed within each round (measurements minutes apart), then the median over
  # rounds; [min-max] of those per-round ratios shows how far one ratio can be trusted.
  awk -F'\t' '
    NR>1 {k=$1"\t"$2"\t"$3; n[k]++; i=n[k]; rps[k,i]=$5; p50[k,i]=$6; p99[k,i]=$8; rnd[k,i]=$4
          R[$1"\t"$2"\t"$3"\t"$4]=$5; lg[k]+=$12; px[k]+=$13; be[k]+=$14; sp[k]+=$20; er[k]+=$11; sh[k]+=$21
          cpr[k,i]=($5>0)? $13*10000/$5 : 0
          if (!(k in seen)) {seen[k]=1; keys[++no]=k}}
    function sortv(v,c,   i,j,t){ for(i=1;i<=c;i++) for(j=i+1;j<=c;j++) if(v[j]<v[i]){t=v[i];v[i]=v[j];v[j]=t} }
    function medv(v,c){ sortv(v,c); return (c%2)? v[(c+1)/2] : (v[c/2]+v[c/2+1])/2 }
    function med(a,k,c,   i,v){ split("",v); for(i=1;i<=c;i++) v[i]=a[k,i]; return medv(v,c) }
    function spread(a,k,c,   i,m,M){ m=M=a[k,1]; for(i=2;i<=c;i++){ if(a[k,i]<m)m=a[k,i]; if(a[k,i]>M)M=a[k,i] } return (m+M>0)? (M-m)*200/(m+M) : 0 }
    function ratio(k,refk,   i,c,v,r,lo,hi,x){ c=0; split("",v); for(i=1;i<=n[k];i++){ r=rnd[k,i]; if((refk"\t"r) in R && R[refk"\t"r]>0) v[++c]=rps[k,i]/R[refk"\t"r] }
      if(!c) return "-"; sortv(v,c); x=(c%2)? v[(c+1)/2] : (v[c/2]+v[c/2+1])/2
      return (c>1)? sprintf("%.2f[%.2f-%.2f]", x, v[1], v[c]) : sprintf("%.2f", x) }
    END {
      printf "%-8s %-6s %-5s %3s %8s %7s %-16s %-16s %8s %8s %7s %7s %7s %7s %8s %6s %6s %5s\n", "target","policy","mode","n","rps_med","spread%","vsDirect","vsNginx","p50_ms","p99_ms","+p50us","lg%","proxy%","bknd%","us/req","share%","split","errs"
      for (q=1;q<=no;q++) { k=keys[q]; split(k,f,"\t"); c=n[k]; dk="direct\t-\t" f[3]
        printf "%-8s %-6s %-5s %3d %8d %7.1f %-16s %-16s %8.3f %8.3f %7s %7d %7d %7d %8.1f %6d %6d %5d\n", f[1], f[2], f[3], c, med(rps,k,c), spread(rps,k,c),
          ratio(k, dk), (f[1]=="nginx"||f[1]=="direct")? "-" : ratio(k, "nginx\t" f[2] "\t" f[3]),
          med(p50,k,c), med(p99,k,c), (dk in n)? sprintf("%d", (med(p50,k,c)-med(p50,dk,n[dk]))*1000) : "-",
          lg[k]/c, px[k]/c, be[k]/c, med(cpr,k,c), sh[k]/c, sp[k]/c, er[k] }
      print "spread% = (max-min)/mean of rps over rounds; +p50us = median p50 minus direct median p50 (same mode);"
      print "us/req = proxy CPU microseconds per request (median); lg/proxy/bknd% = CPU in % of one core;"
      print "share% = busiest backend share (25 = even over 4); split = sessions seen on >1 backend (must be 0 for hash)."
    }' "$1"
}

# ---------------------------------------------------------------- main
main() {
  install_missing
  write_bodies
  [[ ${1:-} == setup ]] && return
  stop_all
  trap 'stop_all' EXIT
  trap 'log "interrupted"; exit 130' INT TERM
  : >"$PIDS_FILE"
  STAMP=$(date +%Y%m%d-%H%M%S)
  RESULT=$RES/peerbench-$STAMP.tsv
  echo "$HEADER" >"$RESULT"
  log "workers=$WORKERS pin=$PIN conns=$CONNS threads=$THREADS dur=${DUR}s runs=$RUNS modes=[$MODES] backend=$BIMPL"

  start_backends
  local t active=()
  for t in $TARGETS; do
    case $t in
      direct) active+=(direct) ;;
      nginx) start_nginx; active+=(nginx) ;;
      haproxy) start_haproxy; active+=(haproxy) ;;
      caddy) start_caddy; active+=(caddy) ;;
      gostd) start_gostd; active+=(gostd) ;;
      router) if [[ -n $ROUTER_CMD ]]; then start_router router "$ROUTER_CMD" 18401 18402; active+=(router); else log "ROUTER_CMD unset: skipping router"; fi ;;
      router2) if [[ -n $ROUTER2_CMD ]]; then start_router router2 "$ROUTER2_CMD" 18403 18404; active+=(router2); else log "ROUTER2_CMD unset: skipping router2"; fi ;;
      *) log "unknown target $t" ;;
    esac
  done
  sleep 1
  resolve_acct
  # sanity: each target answers and the hash policy is sticky
  for t in "${active[@]}"; do
    local u; u=$(target_url "$t" hash)
    curl -sf -o /dev/null -X POST -H 'X-Session-ID: probe' --data-binary @"$WORK/body-false.json" "$u/v1/chat/completions" ||
      { log "$t at $u does not answer"; exit 1; }
  done

  echo "$HEADER" | tr '\t' ' '
  local round mode pol
  for ((round = 1; round <= RUNS; round++)); do
    for mode in $MODES; do
      for t in "${active[@]}"; do
        [[ " $SKIP " == *" $t:$mode "* ]] && continue
        for pol in $POLICIES; do
          if [[ $t == direct ]]; then
            [[ $pol == "${POLICIES%% *}" ]] && measure direct - "$mode" "$round"   # no policy: once
          else
            measure "$t" "$pol" "$mode" "$round"
          fi
        done
      done
    done
  done
  echo
  log "raw results: $RESULT"
  summary "$RESULT" | tee "$RES/summary-$STAMP.txt"
}

case ${1:-all} in
  stop) stop_all ;;
  setup) main setup ;;
  all | bench) main ;;
  summary) summary "$2" ;;
  *) echo "usage: $0 [all|setup|stop|summary FILE.tsv]" >&2; exit 2 ;;
esac
