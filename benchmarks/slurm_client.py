"""The SLURM client commands the suite runs itself: job states, jobs by name, cancel.

Every command goes through :func:`client_output`, which answers None when the command is
missing, fails or hangs, so a launcher on a machine without SLURM (or with a slow controller)
degrades to "state unknown" instead of crashing. Submission itself is submitit's
(:class:`benchmarks.executors.SlurmExecutor`).

States are SLURM's names (``squeue -o %T``, ``sacct -o State``), upper case, first word only
(``CANCELLED by 0`` -> ``CANCELLED``).
"""

from __future__ import annotations

import subprocess
from typing import Iterable, Optional, Sequence

ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED", "RESV_DEL_HOLD",
})
"""States of a job that is still queued or running (it will run, or runs, again)."""

WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "UNKNOWN"})
"""Active states in which the job has not started (``status`` shows such a cell as pending)."""


def client_output(cmd: Sequence[str], timeout: float = 60) -> Optional[str]:
    """stdout of a SLURM client command, or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """States of many SLURM jobs in two calls: ``squeue -r`` (queued/running, array tasks
    expanded) and one ``sacct`` for the rest (finished). Ids neither knows are left out."""
    wanted = {str(j) for j in job_ids}
    states: dict[str, str] = {}
    if not wanted:
        return states
    for line in (client_output(["squeue", "-h", "-r", "-o", "%i|%T"]) or "").splitlines():
        jid, _, state = line.partition("|")
        if jid in wanted:
            states[jid] = state.strip().upper()
    rest = sorted(wanted - set(states))
    if rest:
        bases = sorted({j.split("_")[0] for j in rest})
        out = client_output(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(bases)])
        for line in (out or "").splitlines():
            jid, _, state = line.partition("|")
            if jid in wanted and jid not in states:
                states[jid] = (state.split() or ["UNKNOWN"])[0].upper()
    return states


def job_state(job_id: str) -> str:
    """State of one job (see :func:`slurm_states`); ``UNKNOWN`` when SLURM does not know it."""
    return slurm_states([job_id]).get(str(job_id), "UNKNOWN")


def jobs_named(job_name: str) -> Optional[dict[int, str]]:
    """Array task index -> job id of every SLURM job called ``job_name`` (a plain job counts as
    task 0), from ``squeue -r`` (queued/running) and ``sacct`` (finished, last 30 days).
    None when SLURM could not be asked."""
    outputs = [client_output(["squeue", "-h", "-r", "-n", job_name, "-o", "%i"]),
               client_output(["sacct", "-n", "-P", "-X", "-S", "now-30days", "--name", job_name, "-o", "JobID"])]
    if all(out is None for out in outputs):
        return None
    found: dict[int, str] = {}
    for line in " ".join(out or "" for out in outputs).split():
        base, _, task = line.partition("_")
        if not base.isdigit():
            continue
        if not task:
            found.setdefault(0, base)
        elif task.isdigit():
            found.setdefault(int(task), line)
        # an unexpanded pending range like 12_[0-3] is covered by squeue -r
    return found


def cancel(job_id: str) -> bool:
    """``scancel`` one job (or array task); False when the command failed."""
    return client_output(["scancel", str(job_id)]) is not None
