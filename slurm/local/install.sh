#!/usr/bin/env bash
# Install the Debian packages of a one-node SLURM cluster (Debian 12 / Slurm 22.05), as root.
#
#   bash slurm/local/install.sh
#
# Installs munge, slurmctld, slurmd, slurm-client, and slurmdbd + mariadb-server (accounting:
# submitit polls job states with `sacct`; without accounting a cancelled job stays UNKNOWN and
# `job.result()` hangs). Idempotent: does nothing when every binary is already there.
#
# The packages' install scripts try to start their daemons through invoke-rc.d; on a machine
# without systemd that fails or starts them with the wrong configuration, so a temporary
# /usr/sbin/policy-rc.d that answers 101 ("action not allowed") blocks that during the install.
# It is only created when none exists and is removed again on exit. start.sh then starts the
# daemons directly.
set -euo pipefail

need=()
for bin in munged slurmctld slurmd sbatch sacct slurmdbd mariadbd; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$bin")
done
if [ ${#need[@]} -eq 0 ]; then
    echo "install.sh: SLURM, munge and MariaDB are already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: missing ${need[*]}; run as root to install them" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: no apt-get here; install munge, slurmctld, slurmd, slurm-client, slurmdbd" \
         "and mariadb-server with your package manager" >&2
    exit 1
fi

created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# An empty package list (fresh container) makes install fail: update when the cache is cold.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ] \
   || ! apt-cache show slurmctld >/dev/null 2>&1; then
    apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server >/dev/null
echo "install.sh: installed munge, slurmctld, slurmd, slurm-client, slurmdbd, mariadb-server"
