#!/usr/bin/env bash
# A real SLURM cluster on this one host: munge, slurmctld and two slurmd "nodes" (n1, n2), each
# a separate slurmd with its own port, all resolving to 127.0.0.1. For the tests and for trying
# the slurm/ scripts without a cluster. Needs root (apt, /etc/hosts, daemons).
#
#   launcher/local_cluster.sh start    install if needed, write the config, start what is not running
#   launcher/local_cluster.sh stop     stop only the daemons this script started (its pid files)
#   launcher/local_cluster.sh status   sinfo, and which daemons run
#
# Settings (environment): LOCAL_CLUSTER_NODES ("n1 n2"), LOCAL_CLUSTER_CPUS (CPUs per node, default
# nproc), LOCAL_CLUSTER_DIR (state, logs, pid files), LOCAL_CLUSTER_CTLD_PORT (6817),
# LOCAL_CLUSTER_SLURMD_PORT (first slurmd port, 6818), LOCAL_CLUSTER_KILL_WAIT (seconds between
# SIGTERM and SIGKILL when a job ends; long enough to write a checkpoint), LOCAL_CLUSTER_REQUEUE_DELAY
# (seconds before a requeued job may start again), SLURM_CONF (config path).
set -euo pipefail

read -r -a NODES <<< "${LOCAL_CLUSTER_NODES:-n1 n2}"
CPUS=${LOCAL_CLUSTER_CPUS:-$(nproc)}
STATE=${LOCAL_CLUSTER_DIR:-/var/lib/videobert-local-cluster}
CTLD_PORT=${LOCAL_CLUSTER_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_CLUSTER_SLURMD_PORT:-6818}
KILL_WAIT=${LOCAL_CLUSTER_KILL_WAIT:-60}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
MARKER="# written by videobert-ds launcher/local_cluster.sh"
PROG=local_cluster.sh

die() { echo "$PROG: error: $*" >&2; exit 1; }
# Exit code 3: SLURM cannot be installed here (no root, no apt, no package source); tests skip on it.
cannot_install() { echo "$PROG: error: $*" >&2; exit 3; }
say() { echo "$PROG: $*"; }

# pid file -> running pid (empty if the file is missing or its process is gone or reused)
pid_of() {
  local f=$1 name=$2 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if [ -r "/proc/$pid/comm" ] && grep -q "$name" "/proc/$pid/comm"; then echo "$pid"; fi
}

install() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  # srun --mpi=pmix (videobert-prepare's MPI ranks) needs Slurm's PMIx plugin
  [ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/mpi_pmix.so ] || ls /usr/lib/*/slurm-wlm/mpi_pmix.so >/dev/null 2>&1 \
    || missing+=(slurm-wlm-basic-plugins)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || cannot_install "needs root to install ${missing[*]} (or install slurm-wlm and munge yourself)"
  command -v apt-get >/dev/null || cannot_install "no apt-get: install slurm-wlm and munge with your package manager"
  say "installing slurm-wlm and munge with apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || cannot_install "apt-get update failed"
  # policy-rc.d-style images refuse to start services at install time: we start them ourselves.
  apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client munge >/dev/null \
    || cannot_install "apt-get install slurm-wlm munge failed"
}

hosts_entries() {
  # Node names must resolve (slurmd -N, srun, MASTER_ADDR); all of them are this host.
  local n
  for n in "${NODES[@]}"; do
    if ! getent hosts "$n" >/dev/null; then
      echo "127.0.0.1 $n $MARKER" >> /etc/hosts || die "cannot add $n to /etc/hosts"
    fi
  done
}

write_conf() {
  local mem_mb total_kb i n tmp
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; set SLURM_CONF=/some/other/slurm.conf"
  fi
  total_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
  mem_mb=$(( total_kb / 1024 / ${#NODES[@]} ))  # the nodes share the host's memory
  mkdir -p "$(dirname "$CONF")" "$STATE"/{log,spool,statesave,pid}
  for n in "${NODES[@]}"; do mkdir -p "$STATE/spool/$n" "$STATE/tmp/$n"; done
  tmp=$(mktemp "$CONF.XXXXXX")
  {
    echo "$MARKER"
    cat <<EOF
ClusterName=videobert-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again cred_expire seconds after it ended (default 120).
AuthInfo=cred_expire=${LOCAL_CLUSTER_REQUEUE_DELAY:-10}
CredType=cred/munge
StateSaveLocation=$STATE/statesave
SlurmdSpoolDir=$STATE/spool/%n
# Per-node scratch: the two slurmds share /tmp, and srun --mpi=pmix puts its per-step client
# dirs under TmpFS (same job/step names on both nodes would collide in one /tmp).
TmpFS=$STATE/tmp/%n
SlurmctldPidFile=$STATE/pid/slurmctld.pid
SlurmdPidFile=$STATE/pid/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
# No cgroups in containers: track job processes by process tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Node CPUs may exceed the host's cores (oversubscription for tests).
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
# Time between SIGTERM and SIGKILL: a preempted/requeued job writes its checkpoint in between.
KillWait=$KILL_WAIT
# Keep finished jobs visible to scontrol (exit code, restart count) for a while.
MinJobAge=900
# Requeued jobs may start again at once.
SchedulerParameters=nohold_on_prolog_fail
JobRequeue=1
EOF
    i=0
    for n in "${NODES[@]}"; do
      echo "NodeName=$n NodeHostname=$n NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + i)) CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN"
      i=$((i + 1))
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
  } > "$tmp"
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    return 1  # unchanged
  fi
  mv "$tmp" "$CONF"
  chmod 644 "$CONF"
  return 0
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0  # a munged (ours or the system's) already answers
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key >/dev/null || die "cannot create /etc/munge/munge.key"
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged --pid-file="/run/munge/munged.pid" || die "munged did not start (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$STATE/pid/munged.ours"  # stop ends it only if we started it
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged started but does not answer"
}

start_daemons() {
  local n pid
  export SLURM_CONF="$CONF"
  if [ -z "$(pid_of "$STATE/pid/slurmctld.pid" slurmctld)" ]; then
    slurmctld -f "$CONF" || die "slurmctld did not start (see $STATE/log/slurmctld.log)"
  fi
  for n in "${NODES[@]}"; do
    if [ -z "$(pid_of "$STATE/pid/slurmd-$n.pid" slurmd)" ]; then
      slurmd -f "$CONF" -N "$n" || die "slurmd -N $n did not start (see $STATE/log/slurmd-$n.log)"
    fi
  done
}

stop_daemons() {
  local f pid name pids=()
  for f in "$STATE"/pid/slurmd-*.pid "$STATE/pid/slurmctld.pid" "$STATE/pid/munged.ours"; do
    [ -f "$f" ] || continue
    case $f in *slurmd-*) name=slurmd ;; *slurmctld*) name=slurmctld ;; *) name=munged ;; esac
    pid=$(pid_of "$f" "$name")
    if [ -n "$pid" ]; then
      kill "$pid" && pids+=("$pid")
    fi
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null
  done
  return 0
}

wait_idle() {
  # Nodes register within seconds; a node left DOWN by an earlier run is resumed.
  local state deadline=$((SECONDS + 60)) resumed=0
  export SLURM_CONF="$CONF"
  while [ $SECONDS -lt $deadline ]; do
    state=$(sinfo -h -N -o "%N %t" 2>/dev/null | sort -u || true)
    if [ -n "$state" ] && ! echo "$state" | grep -qvE " (idle|mix|alloc)$"; then
      return 0
    fi
    if [ $resumed = 0 ] && [ $SECONDS -gt $((deadline - 50)) ] && echo "$state" | grep -qE " (down|drain|drng)"; then
      scontrol update NodeName="$(IFS=,; echo "${NODES[*]}")" State=RESUME 2>/dev/null || true
      resumed=1
    fi
    sleep 0.5
  done
  die "nodes not ready after 60 s: $(echo "$state" | tr '\n' ' ') (logs in $STATE/log)"
}

cmd_start() {
  [ "$(id -u)" = 0 ] || cannot_install "needs root (apt, /etc/hosts, slurmd); run it as root or in a container"
  install
  hosts_entries
  mkdir -p "$STATE"/{log,spool,statesave,pid}
  if write_conf; then
    # A changed config takes effect only on restart; restart only daemons we started.
    stop_daemons_slurm_only
  fi
  start_munge
  start_daemons
  wait_idle
  say "cluster up: $(sinfo -h -o '%P %D nodes %t' | tr '\n' ' ')(config $CONF)"
}

stop_daemons_slurm_only() {
  # munged keeps running: only slurm reads slurm.conf
  mv -f "$STATE/pid/munged.ours" "$STATE/pid/.munged.keep" 2>/dev/null || true
  stop_daemons
  mv -f "$STATE/pid/.munged.keep" "$STATE/pid/munged.ours" 2>/dev/null || true
}

cmd_stop() {
  stop_daemons
  say "stopped the daemons this script started"
}

cmd_status() {
  local n
  export SLURM_CONF="$CONF"
  command -v sinfo >/dev/null || die "slurm is not installed (run: $0 start)"
  echo "slurmctld: $( [ -n "$(pid_of "$STATE/pid/slurmctld.pid" slurmctld)" ] && echo running || echo stopped)"
  for n in "${NODES[@]}"; do
    echo "slurmd $n: $( [ -n "$(pid_of "$STATE/pid/slurmd-$n.pid" slurmd)" ] && echo running || echo stopped)"
  done
  sinfo -N -l 2>&1 || true
}

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
