#!/usr/bin/env bash
# Wait until the local cluster's node accepts work (idle, or already running jobs).
#
#   bash slurm/local/wait_idle.sh [TIMEOUT_S]     (default 60)
#
# A node left DOWN/DRAINED by an earlier unclean stop is resumed once.
set -euo pipefail
limit="${1:-60}"
end=$((SECONDS + limit))
resumed=0
while :; do
    state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1 || true)"
    case "$state" in
        idle|mixed|allocated|completing) echo "wait_idle.sh: node $state"; exit 0 ;;
        down*|drain*|fail*)
            if [ "$resumed" = 0 ]; then
                scontrol update nodename="$(sinfo -h -N -o '%N' | head -n 1)" state=resume \
                    >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ $SECONDS -ge $end ]; then
        echo "wait_idle.sh: node not idle after ${limit}s (state: '${state:-no answer}')" >&2
        sinfo -N -l >&2 || true
        exit 1
    fi
    sleep 0.3
done
