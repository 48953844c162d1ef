#!/usr/bin/env bash
# The real-SLURM end-to-end test (issue 7). One command: `bash deploy/slurm/run-test.sh`.
#
# It brings up a real SLURM 22.05 on this machine (testdata/slurm-local.sh: munge, slurmctld,
# one slurmd per emulated node node1..node3 on 127.0.0.1..3), then for each of
#   multi  examples/slurm_multi_replica.toml   3 nodes, one engine server each, router on node1
#   pd     examples/slurm_disaggregated.toml   1 prefill node (+ router) and 2 decode nodes
# it renders the job with `switchyard deploy slurm --engine-cmd sim ...`, submits it, runs the
# client (deploy/slurm/client) as a step of that job on the router's node, reading the router
# URL the job wrote (the INFER_URLS contract); the client sends multi-turn X-Session-ID sessions
# and checks success, stickiness and (pd) prefill-then-decode with KV claimed across nodes.
# Then it ends the job (pd: scancel; multi: SIGKILL one engine, which must fail the whole job
# by itself) and checks that none of its processes or ports outlive it, and
# finally takes SLURM down.
#
# Exit codes: 0 pass; 1 a check failed; 3 this machine cannot run the test (not root, no
# namespaces, SLURM would not start ...), said loudly: never a silent pass.
# Knobs: SWITCHYARD=path (use this binary instead of building one), SLURM_TEST_KEEP=1 (leave
# SLURM up and the work directory in place), SLURM_TEST_CASES="multi pd" (which deployments).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SLURM_LOCAL=$ROOT/deploy/slurm/testdata/slurm-local.sh
export SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
export SLURM_LOCAL_NODES=3
export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf
CASES=${SLURM_TEST_CASES:-multi pd}
# The emulated nodes see only each other's IP through their own namespaces; the engines must
# bind the node's address because the nodes share one port space.
# shellcheck disable=SC2016 # expanded on the node, not here
LOCAL_IP_CMD='getent hosts "$(hostname)" | awk "{print \$1}"'

T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%5.1fs", b - a }'; }
say() { echo "run-test [$(elapsed)]: $*"; }
fail() { echo "run-test [$(elapsed)]: FAIL: $*" >&2; exit 1; }
# cannot: the machine, not the code, is the problem. Loud, and non-zero.
cannot() {
  {
    echo "################################################################################"
    echo "## run-test: CANNOT RUN THE REAL-SLURM TEST ON THIS MACHINE"
    echo "## $*"
    echo "## This is not a pass. Fix the machine or run CI where root and namespaces exist."
    echo "################################################################################"
  } >&2
  exit 3
}

# ---- preconditions: things outside the project's control -------------------------------
[[ $(uname -s) == Linux ]] || cannot "SLURM emulation needs Linux (this is $(uname -s))"
SUDO=()
if ((EUID != 0)); then
  sudo -n true 2>/dev/null || cannot "slurm-local.sh runs munged/slurmd as root: run as root or with passwordless sudo"
  # shellcheck disable=SC2054 # --preserve-env takes a comma-separated list
  SUDO=(sudo -n --preserve-env=SLURM_LOCAL_DIR,SLURM_LOCAL_NODES,SLURM_CONF)
fi
"${SUDO[@]}" unshare -u -m true 2>/dev/null ||
  cannot "unshare -u -m fails (unprivileged container?): emulated nodes would not get their own host names"
if ! [[ -x /usr/sbin/slurmd && -x /usr/bin/sbatch ]] && ! command -v apt-get >/dev/null; then
  cannot "SLURM is not installed and there is no apt-get to install slurm-wlm"
fi
command -v go >/dev/null || [[ -n ${SWITCHYARD:-} ]] || cannot "go is not on PATH (needed to build switchyard)"

WORK=$(mktemp -d /tmp/switchyard-slurm-test.XXXXXX) # /tmp: every emulated node sees it
chmod 755 "$WORK"
JOBS=()
cleanup() {
  local rc=$?
  ((${#JOBS[@]})) && scancel "${JOBS[@]}" 2>/dev/null
  if [[ ${SLURM_TEST_KEEP:-0} == 1 ]]; then
    say "SLURM_TEST_KEEP=1: SLURM left up, work directory $WORK kept"
  else
    "${SUDO[@]}" bash "$SLURM_LOCAL" down >/dev/null 2>&1 || echo "run-test: WARNING: slurm-local.sh down failed" >&2
    if ((rc == 0)); then rm -rf "$WORK"; else echo "run-test: logs kept in $WORK" >&2; fi
  fi
  say "finished with exit code $rc"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT # so that an interrupted run still cancels its jobs and takes SLURM down
trap 'exit 143' TERM

# ---- SLURM up, binaries built: in parallel (apt install and go build both take a while) ----
say "bringing SLURM up (installs slurm-wlm + munge if missing) and building binaries"
"${SUDO[@]}" bash "$SLURM_LOCAL" up >"$WORK/slurm-up.log" 2>&1 &
UP_PID=$!
mkdir -p "$WORK/bin"
CLIENT=$WORK/bin/client
(cd "$ROOT" && go build -o "$CLIENT" ./deploy/slurm/client) &
CLIENT_BUILD=$!
BUILT=0 # 1: $SWITCHYARD is this run's own build, so any process running it is the test's
if [[ -z ${SWITCHYARD:-} ]]; then
  BUILT=1
  SWITCHYARD=$WORK/bin/switchyard
  say "building switchyard (pass SWITCHYARD=bin/switchyard to reuse a build: a cold build is slow)"
  (cd "$ROOT" && go build -o "$SWITCHYARD" ./cmd/switchyard) || fail "go build ./cmd/switchyard"
fi
[[ -x $SWITCHYARD ]] || fail "SWITCHYARD=$SWITCHYARD is not an executable"
SWITCHYARD=$(realpath "$SWITCHYARD")
wait "$CLIENT_BUILD" || fail "go build ./deploy/slurm/client"
say "binaries built"
if ! wait "$UP_PID"; then
  cat "$WORK/slurm-up.log" >&2
  cannot "slurm-local.sh up failed (apt mirror, dpkg lock or daemons: see the log above)"
fi
grep -v '^export' "$WORK/slurm-up.log" | sed 's/^/  /'
SLURM_CONFIG_DUMP=$(scontrol show config 2>&1 || true) # not piped into grep -q: pipefail + SIGPIPE
grep -q 'MULTIPLE_SLURMD *= *Yes' <<<"$SLURM_CONFIG_DUMP" ||
  cannot "this SLURM build lacks --enable-multiple-slurmd, so one host cannot emulate 3 nodes"
say "SLURM up"

# job_pids JOB: every process whose environment carries SLURM_JOB_ID=JOB (srun passes it to
# every task and they to their children), plus the job's slurmstepds and anything running
# the test's own switchyard binary.
job_pids() {
  local p
  for p in /proc/[0-9]*; do
    grep -qzx "SLURM_JOB_ID=$1" "$p/environ" 2>/dev/null && echo "${p#/proc/}"
  done
  pgrep -f "^slurmstepd: \[$1\." || true
  if ((BUILT)); then pgrep -f "^$SWITCHYARD " || true; fi
}
# plan_ports CONFIG [EXTRA...]: the deployment's planned ports, and EXTRA, as an ERE
# alternation.
plan_ports() {
  local ports config=$1
  shift
  ports=$("$SWITCHYARD" plan "$config" --format json | grep -o '"port": *[0-9]*' | grep -o '[0-9]*$') || return 1
  printf '%s\n' "$ports" "$@" | sort -u | paste -sd'|'
}
# The router's Prometheus listener: vllm-router's default 127.0.0.1:29000, which the plan
# leaves implicit. Other routers on a shared machine use it too, so it is checked free
# before the job (a busy port fails the router) but not after (someone else may take it).
METRICS_PORT=29000
# listening PORTS: the sockets listening on those ports on the emulated nodes' addresses or
# on every address.
listening() { ss -ltnpH | awk '{print $4, $6}' | grep -E "^(127\.0\.0\.[1-3]|0\.0\.0\.0|\*|\[::\]):($1) " || true; }
# job_state JOB: RUNNING, FAILED, CANCELLED ...; empty once slurmctld forgot the job
# (MinJobAge=5 s after it ended).
job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true; }
show_job_log() { echo "---- job $1 output (last 60 lines) ----" >&2; tail -n 60 "$2" >&2 || true; }

declare -A SUMMARY
# run_case NAME CONFIG END: END is how the job is ended: "scancel", or "crash" (SIGKILL one
# engine on the last node: with no restarts allowed, its launcher fails, which must end
# the whole job, FAILED, by itself).
run_case() {
  local name=$1 config=$2 end=$3 t_case victim want args p out job nodes head urlfile state before pids ports
  t_case=$(date +%s.%N)
  ports=$(plan_ports "$config" "$METRICS_PORT") || fail "[$name] switchyard plan $config"
  if [[ -n $(listening "$ports") ]]; then
    listening "$ports" >&2
    cannot "another process on this machine listens on a port the test deployment needs ($ports)"
  fi
  say "[$name] rendering $config"
  local render=("$SWITCHYARD" deploy slurm "$config" --engine-cmd sim --bind-local-ip
    --local-ip-cmd "$LOCAL_IP_CMD" --binary "$SWITCHYARD" --time 00:05:00)
  "${render[@]}" --dry-run >"$WORK/$name.sbatch" || fail "[$name] switchyard deploy slurm --dry-run"
  if [[ $name == pd ]]; then
    say "[$name] the rendered job script:"
    sed 's/^/    | /' "$WORK/$name.sbatch"
  fi
  # Submit with the same flags through --submit (sbatch --parsable); the job's output and
  # its URL file land in the submit directory, $WORK.
  out=$(cd "$WORK" && "${render[@]}" --submit) || fail "[$name] switchyard deploy slurm --submit"
  job=$(sed -n 's/^submitted job \([0-9][0-9]*\);.*/\1/p' <<<"$out")
  [[ -n $job ]] || fail "[$name] no job id in: $out"
  JOBS+=("$job")
  local log=$WORK/switchyard-$job.out
  say "[$name] submitted job $job"

  for _ in $(seq 150); do
    state=$(job_state "$job")
    [[ $state == RUNNING ]] && break
    [[ -n $state && $state != PENDING && $state != CONFIGURING ]] && {
      show_job_log "$job" "$log"; fail "[$name] job $job ended before running (state '${state:-gone}')"; }
    sleep 0.2
  done
  [[ $state == RUNNING ]] || { scontrol show job "$job" >&2; fail "[$name] job $job not running after 30 s (state $state)"; }
  nodes=$(scontrol show hostnames "$(squeue -h -j "$job" -o %N)" | paste -sd,)
  [[ $nodes == node1,node2,node3 ]] || fail "[$name] job $job runs on '$nodes', want node1,node2,node3"
  head=${nodes%%,*}
  urlfile=$WORK/switchyard-$job.urls
  say "[$name] job $job running on $nodes; client step on $head"

  # The client runs inside the job's allocation, on the router's node, as a trainer would.
  if ! timeout 150 srun --jobid="$job" --overlap --nodes=1 --ntasks=1 --nodelist="$head" \
    "$CLIENT" --config "$config" --nodes "$nodes" --url-file "$urlfile" --sessions 16 --turns 4 \
    >"$WORK/$name.client" 2>&1; then
    cat "$WORK/$name.client" >&2
    show_job_log "$job" "$log"
    fail "[$name] the client failed"
  fi
  sed 's/^/    /' "$WORK/$name.client"
  SUMMARY[$name]=$(grep -m1 '^client: shape=' "$WORK/$name.client")

  state=$(job_state "$job")
  [[ $state == RUNNING ]] || { show_job_log "$job" "$log"; fail "[$name] the deployment did not survive the client (state '${state:-gone}')"; }
  grep -c '^switchyard: node rank [0-9]* is node[0-9]* (127\.0\.0\.[0-9]*)' "$log" | grep -qx 3 ||
    { show_job_log "$job" "$log"; fail "[$name] the job log does not show 3 node ranks on 3 nodes"; }

  # Job end: everything the job started must go with it.
  before=$(job_pids "$job" | sort -u | wc -l)
  ((before >= 6)) || fail "[$name] only $before processes of job $job found before it ended: the leftover check would prove nothing"
  case $end in
    scancel)
      want=CANCELLED
      scancel "$job"
      ;;
    crash)
      want=FAILED
      victim=
      for p in $(job_pids "$job" | sort -u); do
        args=" $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)"
        [[ $args == *' sim serve '* && $args == *' --host 127.0.0.3 '* ]] && { victim=$p; break; }
      done
      [[ -n $victim ]] || fail "[$name] no engine of job $job found on node3 to crash"
      say "[$name] SIGKILL engine pid $victim on node3: the job must end by itself"
      kill -KILL "$victim"
      ;;
  esac
  for _ in $(seq 100); do
    state=$(job_state "$job")
    pids=$(job_pids "$job" | sort -u | paste -sd' ')
    [[ $state != RUNNING && $state != COMPLETING && -z $pids ]] && break
    sleep 0.2
  done
  if [[ -n $pids ]]; then
    ps -o pid,ppid,pgid,etime,args -p "${pids// /,}" >&2 || true
    show_job_log "$job" "$log"
    fail "[$name] processes of job $job outlived its end ($end) by 20 s"
  fi
  [[ -z $state || $state == "$want" ]] || { show_job_log "$job" "$log"; fail "[$name] job $job is $state 20 s after $end, want $want"; }
  if [[ $end == crash ]]; then
    if ! grep -q 'died after 0 restart(s)' "$log" || ! grep -q '^switchyard: job step ended with exit code [1-9]' "$log"; then
      show_job_log "$job" "$log"
      fail "[$name] the job log does not show the engine death failing the job"
    fi
  fi
  ports=$(plan_ports "$config") || fail "[$name] switchyard plan $config"
  if [[ -n $(listening "$ports") ]]; then
    listening "$ports" >&2
    fail "[$name] a deployment port ($ports) is still listening after the job ended"
  fi
  say "[$name] $end: job ${state:-gone}, $before job processes before, 0 after; ports free ($(awk -v a="$t_case" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }') for this case)"
}

for c in $CASES; do
  case $c in
    multi) run_case multi "$ROOT/examples/slurm_multi_replica.toml" crash ;;
    pd) run_case pd "$ROOT/examples/slurm_disaggregated.toml" scancel ;;
    *) fail "unknown case $c (want multi and/or pd)" ;;
  esac
done

trap - EXIT
if [[ ${SLURM_TEST_KEEP:-0} == 1 ]]; then
  say "SLURM_TEST_KEEP=1: SLURM left up, work directory $WORK kept"
else
  "${SUDO[@]}" bash "$SLURM_LOCAL" down >/dev/null 2>&1 || fail "slurm-local.sh down failed"
  "${SUDO[@]}" bash "$SLURM_LOCAL" status >/dev/null 2>&1 && fail "SLURM still up after down"
  rm -rf "$WORK"
  say "SLURM down"
fi
echo "run-test: PASS in $(elapsed)"
for c in $CASES; do echo "run-test:   $c: ${SUMMARY[$c]#client: }"; done
