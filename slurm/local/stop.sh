#!/usr/bin/env bash
# Stop the local cluster started by start.sh: each daemon by the PID in its PID file (never
# by process name), in reverse start order, waiting for each to exit. Named daemons only
# (e.g. `stop.sh slurmctld` to take the controller down; `start.sh` brings it back).
#
#   bash slurm/local/stop.sh [slurmd|slurmctld|slurmdbd|mariadb|munged ...]
set -euo pipefail
STATE="${CONDBENCH_SLURM_STATE:-/var/lib/condbench-slurm}"

stop_pid() {  # stop_pid NAME
    local f="$STATE/run/$1.pid" pid
    [ -s "$f" ] || return 0
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stop.sh: $1 (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "stop.sh: stopped $1 (pid $pid)"
    fi
    rm -f "$f"
}

for name in slurmd slurmctld slurmdbd mariadb munged; do
    if [ "$#" -eq 0 ] || [[ " $* " == *" $name "* ]]; then
        stop_pid "$name"
    fi
done
