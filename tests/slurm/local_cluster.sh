#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for `python -m lightning_pref sweep --launcher slurm`
# and tests/slurm. Needs root (it installs slurm-wlm with apt-get when sbatch is missing).
#
#   tests/slurm/local_cluster.sh start    install if needed, write slurm.conf, start munged,
#                                          slurmctld and slurmd, wait until the node is idle
#   tests/slurm/local_cluster.sh status   sinfo; exit 0 when the cluster answers, 1 when not
#   tests/slurm/local_cluster.sh stop     stop the three daemons (by their pid files)
#
# `start` on a running cluster only prints its status. The controller starts with a clean state
# (`slurmctld -c`), so jobs of an earlier cluster never come back. JobRequeue=1 and --requeue
# jobs may be requeued (`scontrol requeue JOBID_TASK` puts a running array task back to PENDING
# and it runs again); ReturnToService=2 brings a node that went DOWN back to service.
# Exit codes of start: 0 up, 2 not root, 3 no apt-get, 4 install failed, 5 a daemon did not start.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
RUN=/run/slurm
WAIT_S=${LOCAL_CLUSTER_WAIT_S:-30}

die() {
    echo "local_cluster: $2" >&2
    exit "$1"
}

# alive PIDFILE: the pid file names a running process of the daemon the file is named after
# (slurmd.pid: slurmd), not a zombie nor a later process that got the same pid
alive() {
    local pid stat
    pid=$(cat "$1" 2>/dev/null) || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $stat == "$pid ($(basename "$1" .pid)) "[^Z]* ]]
}

is_up() {
    command -v sinfo >/dev/null && alive $RUN/slurmctld.pid && alive $RUN/slurmd.pid &&
        sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|alloc'
}

install_slurm() {
    command -v sbatch >/dev/null && return 0
    command -v apt-get >/dev/null || die 3 "sbatch is missing and there is no apt-get to install slurm-wlm"
    echo "local_cluster: installing slurm-wlm (apt-get)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm; } \
        >/tmp/local_cluster_apt.log 2>&1 ||
        die 4 "apt-get install slurm-wlm failed; see /tmp/local_cluster_apt.log"
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024))
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge $RUN
    chown slurm:slurm /var/spool/slurmctld /var/log/slurm $RUN
    chown munge:munge /run/munge
    cat >$CONF <<CONF
# written by tests/slurm/local_cluster.sh: one node, this machine
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
# look at pending jobs every few seconds (requeued tasks start again sooner)
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
# a requeued job may start again after cred_expire + 1 s (default 120 s)
AuthInfo=cred_expire=10
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    if [[ ! -f /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    alive /run/munge/munged.pid || su -s /bin/sh munge -c /usr/sbin/munged
    munge -n | unmunge >/dev/null || die 5 "munged does not answer"
}

start() {
    if is_up; then
        echo "local_cluster: already running"
        sinfo
        return 0
    fi
    [[ $(id -u) == 0 ]] || die 2 "start needs root (it installs slurm-wlm, writes /etc/slurm, starts daemons)"
    install_slurm
    write_conf
    start_munge
    alive $RUN/slurmctld.pid || /usr/sbin/slurmctld -c || die 5 "slurmctld did not start"
    alive $RUN/slurmd.pid || /usr/sbin/slurmd || die 5 "slurmd did not start"
    local waited=0
    until sinfo -h -o '%T' 2>/dev/null | grep -qE 'idle|mixed|alloc'; do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE 'down|drain'; then
            scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
        fi
        ((waited++ < WAIT_S)) || die 5 "the node is not idle after ${WAIT_S} s; see /var/log/slurm"
        sleep 1
    done
    echo "local_cluster: started"
    sinfo
}

stop_pidfile() {
    local pid
    alive "$1" || return 0
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 50); do
        alive "$1" || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    stop_pidfile $RUN/slurmd.pid
    stop_pidfile $RUN/slurmctld.pid
    stop_pidfile /run/munge/munged.pid
    echo "local_cluster: stopped"
}

status() {
    if is_up; then
        sinfo
        return 0
    fi
    echo "local_cluster: not running"
    return 1
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) die 64 "usage: $0 {start|stop|status}" ;;
esac
