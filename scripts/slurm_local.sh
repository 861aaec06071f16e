#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, for tests: munged, slurmctld and slurmd started by hand.
#
#   scripts/slurm_local.sh up      # installs slurm-wlm and munge with apt-get when missing (as root),
#                                  # writes the config under $SLURM_LOCAL_DIR, starts the daemons (~15 s)
#   scripts/slurm_local.sh down    # stops only the daemons that `up` started (by their pid files)
#   scripts/slurm_local.sh status
#
# State, spool, logs and pid files live in $SLURM_LOCAL_DIR (default /tmp/mnist_lab_slurm). Clients
# (sbatch, submitit) read /etc/slurm/slurm.conf, which is linked to the generated config. Needs root
# (munged runs as user munge, slurmd as root). No systemd: the packages' service scripts are not used.
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/mnist_lab_slurm}"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"

die() { echo "slurm_local: $*" >&2; exit 1; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: install them (apt-get install slurm-wlm munge)"
    echo "slurm_local: installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } \
        || die "apt-get could not install slurm-wlm and munge"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    [ "$(id -u)" = 0 ] || die "needs root (munged runs as user munge, slurmd as root)"
    install
    if running "$DIR/slurmctld.pid" && running "$DIR/slurmd.pid"; then
        echo "slurm_local: already up ($DIR)"; return
    fi
    mkdir -p "$DIR"/{state,spool,log,munge}
    # munge: key, and folders owned by munge with mode 700
    chown munge: "$DIR/munge" && chmod 700 "$DIR/munge"
    mkdir -p /run/munge && chown munge: /run/munge && chmod 755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    runuser -u munge -- munged --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" --socket=/run/munge/munge.socket.2 --force
    cp "$DIR/munge/munged.pid" "$DIR/munged.pid"

    cat > "$DIR/slurm.conf" <<CONF
ClusterName=mnistlab
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    mkdir -p /etc/slurm
    if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        die "/etc/slurm/slurm.conf exists and is not ours: move it away first"
    fi
    ln -sfn "$DIR/slurm.conf" /etc/slurm/slurm.conf
    slurmctld -f "$DIR/slurm.conf"
    slurmd -f "$DIR/slurm.conf" -N localhost
    for _ in $(seq 60); do
        if sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then
            echo "slurm_local: up ($DIR): $(sinfo -h -o '%P %D %T %c')"; return
        fi
        sleep 0.5
    done
    die "slurmd did not come up: see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
}

down() {
    local stopped=0
    if running "$DIR/slurmctld.pid"; then  # let jobs end first: a killed slurmd leaves their steps behind
        scancel --full --quiet "--clusters=mnistlab" $(squeue -h -o %i 2>/dev/null) 2>/dev/null || true
        for _ in $(seq 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    for daemon in slurmd slurmctld munged; do
        if running "$DIR/$daemon.pid"; then
            kill "$(cat "$DIR/$daemon.pid")" && stopped=$((stopped + 1))
            for _ in $(seq 40); do running "$DIR/$daemon.pid" || break; sleep 0.25; done
        fi
        rm -f "$DIR/$daemon.pid"
    done
    [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
    echo "slurm_local: down ($stopped daemons stopped)"
}

status() {
    for daemon in munged slurmctld slurmd; do
        if running "$DIR/$daemon.pid"; then echo "$daemon: running"; else echo "$daemon: stopped"; fi
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
esac
