#!/usr/bin/env bash
# slurm-local.sh: a real SLURM cluster of N emulated nodes on one host, loopback only.
# For CI on Debian/Ubuntu as root, no systemd needed. Usage: slurm-local.sh up|down|status|env
# Node i is "node$i": its own slurmd (slurmd -N), NodeAddr 127.0.0.$i, slurmd port PORT+i, and
# (when unshare works) its own UTS+mount namespace: `hostname` = node$i, a private /etc/hosts that
# maps node1..N, and daemons bound to loopback only. Jobs run as the submitter; no cgroups/accounting.
# Env knobs: SLURM_LOCAL_DIR (/tmp/slurm-local)  SLURM_LOCAL_NODES (3)  SLURM_LOCAL_CPUS (16/node)
#            SLURM_LOCAL_GPUS (8 fake GPUs/node, 0 = none)  SLURM_LOCAL_PORT (6817 = slurmctld)
set -euo pipefail
D=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
N=${SLURM_LOCAL_NODES:-3}; CPUS=${SLURM_LOCAL_CPUS:-16}; GPUS=${SLURM_LOCAL_GPUS:-8}; PORT=${SLURM_LOCAL_PORT:-6817}
export SLURM_CONF=$D/slurm.conf
log() { echo "slurm-local: $*" >&2; }
running() { local s; read -r _ _ s _ 2>/dev/null < /proc/"$1"/stat && [[ $s != Z ]]; }  # zombies count as gone
alive() { [[ -s $2 ]] && running "$(<"$2")" && [[ $(cat /proc/"$(<"$2")"/comm 2>/dev/null) == "$1" ]]; }  # NAME PIDFILE
# stop NAME PIDFILE...: SIGTERM all at once (each takes ~2 s to exit), wait, SIGKILL leftovers; comm guards PID reuse
stop() {
  local pids=() live=() pid i
  while (($#)); do
    alive "$1" "$2" && pid=$(<"$2") && kill "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$2"; shift 2
  done
  for i in $(seq 50); do
    live=(); for pid in "${pids[@]}"; do running "$pid" && live+=("$pid"); done
    ((${#live[@]})) || return 0; sleep 0.2
  done
  log "SIGKILL ${live[*]}"; kill -9 "${live[@]}" 2>/dev/null || true
}

install_pkgs() {
  [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged && -x /usr/bin/sbatch ]] && return 0
  log "installing slurm-wlm + munge from apt"
  # wait for another apt/dpkg (a shared CI host) instead of failing on its lock
  apt-get -o DPkg::Lock::Timeout=120 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
  local mem; mem=$(awk '/MemTotal/{print int($2/1024*0.9)}' /proc/meminfo)
  cat > "$D/slurm.conf" <<EOF
ClusterName=localci
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
$( ((NS)) && echo "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny" )
MailProg=/bin/true
ReturnToService=2
# accept CPUs/GPUs/memory beyond the real hardware instead of draining the node
SlurmdParameters=config_overrides
# <= 5 keeps sbatch --wait polling every 2 s (it backs off 2,8,32 s otherwise)
MinJobAge=5
KillWait=2
# start batch jobs ~0.5 s after submit (default batch_sched_delay=3 s)
SchedulerParameters=batch_sched_delay=0
$( ((GPUS > 0)) && echo "GresTypes=gpu" )
NodeName=node[1-$N] NodeAddr=127.0.0.[1-$N] Port=[$((PORT+1))-$((PORT+N))] CPUs=$CPUS RealMemory=$mem $( ((GPUS > 0)) && echo "Gres=gpu:$GPUS" ) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  : > "$D/gres.conf"
  if ((GPUS > 0)); then  # fake GPUs: char-device symlinks to /dev/null, so CUDA_VISIBLE_DEVICES gets set
    mkdir -p "$D/fakegpu"
    for ((g = 0; g < GPUS; g++)); do ln -sfn /dev/null "$D/fakegpu/nvidia$g"; done
    echo "NodeName=node[1-$N] Name=gpu File=$D/fakegpu/nvidia[0-$((GPUS-1))]" > "$D/gres.conf"
  fi
  { echo "127.0.0.1 localhost  # slurm-local"; grep -v 'slurm-local' /etc/hosts
    for ((i = 1; i <= N; i++)); do echo "127.0.0.$i node$i  # slurm-local"; done; } > "$D/hosts"
}

# run_ns HOST CMD...: with NS=1, CMD gets its own UTS+mount namespace: hostname HOST, private /etc/hosts.
# NoInAddrAny then binds each daemon to what its hostname resolves to (127.0.0.x).
run_ns() {
  local h=$1; shift
  if ((NS)); then unshare -u -m sh -c "hostname $h && mount --bind '$D/hosts' /etc/hosts && exec \"\$@\"" sh "$@"
  else "$@"; fi
}

up() {
  if status >/dev/null 2>&1; then log "already up"; env_line; return 0; fi
  install_pkgs
  down >/dev/null 2>&1 || true
  NS=0; unshare -u -m true 2>/dev/null && NS=1
  ((NS)) || log "WARNING: unshare failed; nodes share the host name and /etc/hosts (node names won't resolve)"
  rm -rf "$D/state" "$D/spool" "$D/log"
  mkdir -p "$D/munge" "$D/state" "$D/log"
  for ((i = 1; i <= N; i++)); do mkdir -p "$D/spool/node$i"; done
  chmod 711 "$D" "$D/munge"   # munged wants its socket dir (and parents) executable by all
  if [[ ! -s $D/munge/munge.key ]]; then  # mungekey is missing from munge < 0.5.14
    mungekey -c -k "$D/munge/munge.key" 2>/dev/null \
      || { dd if=/dev/urandom of="$D/munge/munge.key" bs=128 count=1 status=none; chmod 600 "$D/munge/munge.key"; }
  fi
  write_config
  munged --key-file="$D/munge/munge.key" --socket="$D/munge/munge.sock" \
    --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" --seed-file="$D/munge/munged.seed"
  run_ns localhost slurmctld -f "$SLURM_CONF"
  for i in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  for ((i = 1; i <= N; i++)); do run_ns "node$i" slurmd -f "$SLURM_CONF" -N "node$i"; done
  [[ -e /etc/slurm/slurm.conf ]] || { mkdir -p /etc/slurm; ln -s "$SLURM_CONF" /etc/slurm/slurm.conf; }  # plain sinfo works
  for i in $(seq 150); do
    [[ $(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l) -ge $N ]] && { status || true; env_line; return 0; }
    sleep 0.2
  done
  log "nodes not idle after 30 s"; sinfo -N -l >&2 || true; tail -n 20 "$D"/log/*.log >&2; return 1
}

down() {
  if alive slurmctld "$D/slurmctld.pid"; then  # end jobs first, or their slurmstepds outlive slurmd
    scancel --quiet --partition=debug 2>/dev/null || true
    for i in $(seq 50); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  local args=() f
  for f in "$D"/slurmd-node*.pid; do args+=(slurmd "$f"); done
  stop "${args[@]}" slurmctld "$D/slurmctld.pid" munged "$D/munge/munged.pid"
  [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$SLURM_CONF" ]] && rm -f /etc/slurm/slurm.conf
  log "down"
}

status() {  # exit 0 only if every daemon runs
  local ok=0 i
  st() { if alive "$1" "$3"; then echo "$2 pid $(<"$3")"; else echo "$2 down"; ok=1; fi; }
  st munged "munged      " "$D/munge/munged.pid"
  st slurmctld "slurmctld   " "$D/slurmctld.pid"
  for ((i = 1; i <= N; i++)); do st slurmd "slurmd node$i" "$D/slurmd-node$i.pid"; done
  ((ok == 0)) && sinfo -N -o '%N %T %c %G %o' 2>/dev/null
  return $ok
}

env_line() { echo "export SLURM_CONF=$SLURM_CONF"; }
case ${1:-} in
  up) up ;; down) down ;; status) status ;; env) env_line ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
