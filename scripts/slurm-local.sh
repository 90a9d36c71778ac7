#!/bin/bash
# A one-node Slurm on this machine, then the CPU pipeline through it:
#   pipe run pipelines/train_shakespeare_char_cpu.yaml --executor slurm --set train.max_iters=20
# Needs root and Debian's packages (apt-get install slurm-wlm munge); there is no systemd here, so
# munged, slurmctld and slurmd are started directly. Safe to run again (daemons already up are kept).
# The store is a fresh folder (SLURM_LOCAL_CACHE, default /tmp/pipe-slurm-cache): every stage runs
# as a job. Prints the run's outcome and exits with pipe's exit code.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: the daemon Slurm authenticates with.
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    sleep 1
fi
munge -n | unmunge >/dev/null

# slurm.conf: this host is the controller and the only node.
host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=pipelocal
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    case "$state" in idle*|mix*|alloc*) break ;; esac
    sleep 1
done
sinfo
case "$(sinfo -h -n "$host" -o %t)" in
    idle*|mix*|alloc*) ;;
    *) echo "slurm-local: node $host is not up; see /var/log/slurm/" >&2; exit 1 ;;
esac

cargo build --release
cache=${SLURM_LOCAL_CACHE:-/tmp/pipe-slurm-cache}
rm -rf "$cache"
rc=0
PIPE_SLURM_POLL_SECONDS=${PIPE_SLURM_POLL_SECONDS:-1} target/release/pipe --cache "$cache" run \
    pipelines/train_shakespeare_char_cpu.yaml --executor slurm --set train.max_iters=20 || rc=$?
echo "slurm-local: pipe exited $rc"
id=$(target/release/pipe --cache "$cache" show --json | sed -n 's/.*"run_id": "\(.*\)".*/\1/p' | tail -1)
target/release/pipe --cache "$cache" show "$id"
exit $rc
