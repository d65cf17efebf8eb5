#!/usr/bin/env bash
# Bring up a one-node SLURM cluster (slurmctld + slurmd + slurmdbd accounting) on this machine,
# as root, without systemd, and wait until its node is idle.
#
#   bash slurm/local/start.sh            # install if needed, configure, start, wait idle
#   NGPUS=4 bash slurm/local/start.sh    # number of fake GPUs on the node (default 2)
#
# Idempotent: when the cluster is already up (every daemon's PID alive and the node answering),
# it only waits for the node and returns. Every daemon is tracked by a PID file under
# $CONDBENCH_SLURM_STATE (default /var/lib/condbench-slurm/run); stop.sh stops them by PID.
# Configuration goes to /etc/slurm (where the Slurm client commands and submitit look); a
# slurm.conf there that this script did not write is never overwritten.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${CONDBENCH_SLURM_STATE:-/var/lib/condbench-slurm}"
ETC=/etc/slurm
NGPUS="${NGPUS:-2}"
MARKER="condbench-local-cluster"
t0=$(date +%s.%N)

log() { echo "start.sh: $*"; }
die() { echo "start.sh: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the daemons and /etc/slurm need it)"

alive() {  # alive NAME: the daemon's PID file names a live process
    local f="$STATE/run/$1.pid"
    [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

all_alive() {
    alive munged && alive mariadb && alive slurmdbd && alive slurmctld && alive slurmd
}

if all_alive && sinfo -h >/dev/null 2>&1; then
    log "cluster already running"
    exec bash "$HERE/wait_idle.sh"
fi

bash "$HERE/install.sh"

if [ -f "$ETC/slurm.conf" ] && ! grep -q "$MARKER" "$ETC/slurm.conf"; then
    die "$ETC/slurm.conf exists and was not written by this script; refusing to overwrite" \
        "a real cluster's configuration"
fi

mkdir -p "$STATE"/{run,log,slurmctld,slurmd} "$ETC"
chown slurm:slurm "$STATE/run" "$STATE/log" "$STATE/slurmctld"
chmod 755 "$STATE"

# ---- configuration --------------------------------------------------------------------
HOST="$(hostname -s)"
getent hosts "$HOST" >/dev/null || die "hostname '$HOST' does not resolve; add it to /etc/hosts"
# The node line as slurmd sees this machine, with RealMemory 5% under the real value so the
# node is never drained for "low memory" when a little memory is in use.
NODE_LINE="$(slurmd -C | head -n 1)"
mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")"
NODE_LINE="$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/" <<<"$NODE_LINE")"
NODE="$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$NODE_LINE")"

gpu_files=()
for ((i = 0; i < NGPUS; i++)); do
    dev="/dev/fakegpu$i"
    [ -e "$dev" ] || mknod "$dev" c 1 3   # same device numbers as /dev/null
    gpu_files+=("$dev")
done
GPU_FILES="/dev/fakegpu[0-$((NGPUS - 1))]"
[ "$NGPUS" -eq 1 ] && GPU_FILES=/dev/fakegpu0

if [ ! -s "$STATE/dbpass" ]; then
    (umask 077; head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE/dbpass")
fi
DBPASS="$(cat "$STATE/dbpass")"

fill() {  # fill TEMPLATE OUT MODE OWNER
    sed -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" -e "s|@NODE_LINE@|$NODE_LINE|g" \
        -e "s|@NODE@|$NODE|g" -e "s|@NGPUS@|$NGPUS|g" -e "s|@GPU_FILES@|$GPU_FILES|g" \
        -e "s|@DBPASS@|$DBPASS|g" "$1" > "$2.tmp"
    chmod "$3" "$2.tmp"; chown "$4" "$2.tmp"; mv "$2.tmp" "$2"
}
fill "$HERE/slurm.conf.in" "$ETC/slurm.conf" 644 root:root
fill "$HERE/gres.conf.in" "$ETC/gres.conf" 644 root:root
fill "$HERE/slurmdbd.conf.in" "$ETC/slurmdbd.conf" 600 slurm:slurm

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "$what did not come up within ${limit}s (logs: $STATE/log, $STATE/mysql)"
        sleep 0.2
    done
}

# ---- munge ------------------------------------------------------------------------------
if ! alive munged; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [ -s /etc/munge/munge.key ] || { mungekey --create; chown munge:munge /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
    wait_for 10 munged test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/run/munged.pid"
    log "munged running (pid $(cat "$STATE/run/munged.pid"))"
fi
wait_for 10 "munge authentication" bash -c 'munge -n | unmunge'

# ---- MariaDB (accounting storage) ---------------------------------------------------------
if ! alive mariadb; then
    # mariadbd runs as mysql: its PID and log files live in a folder that user owns.
    mkdir -p /run/mysqld "$STATE/mysql" && chown mysql:mysql /run/mysqld "$STATE/mysql"
    rm -f "$STATE/mysql/mariadb.pid"
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log"
    fi
    setsid /usr/sbin/mariadbd --user=mysql --pid-file="$STATE/mysql/mariadb.pid" \
        --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
        --log-error="$STATE/mysql/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 30 MariaDB mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    wait_for 10 "MariaDB PID file" test -s "$STATE/mysql/mariadb.pid"
    cp "$STATE/mysql/mariadb.pid" "$STATE/run/mariadb.pid"
    log "mariadbd running (pid $(cat "$STATE/run/mariadb.pid"))"
fi
mariadb --socket=/run/mysqld/mysqld.sock -u root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---- slurmdbd, slurmctld, slurmd ----------------------------------------------------------
if ! alive slurmdbd; then
    /usr/sbin/slurmdbd
    wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
    log "slurmdbd running (pid $(cat "$STATE/run/slurmdbd.pid"))"
fi
if ! alive slurmctld; then
    /usr/sbin/slurmctld
    wait_for 30 slurmctld scontrol ping
    log "slurmctld running (pid $(cat "$STATE/run/slurmctld.pid"))"
fi
if ! alive slurmd; then
    /usr/sbin/slurmd
    wait_for 30 "slurmd PID file" test -s "$STATE/run/slurmd.pid"
    log "slurmd running (pid $(cat "$STATE/run/slurmd.pid"))"
fi

bash "$HERE/wait_idle.sh"
log "cluster up in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}")s" \
    "(node $NODE, $NGPUS fake GPUs, partitions debug (default) and gpu)"
