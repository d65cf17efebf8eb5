"""The SLURM client commands the suite runs itself: job states, jobs by name, cancel.

:func:`sbatch_problem` turns a failed ``sbatch`` into one line naming the profile field to
change. Every command goes through :func:`client_output`, which answers None when the command is
missing, fails or hangs, so a launcher on a machine without SLURM (or with a slow controller)
degrades to "state unknown" instead of crashing. Submission itself is submitit's
(:class:`benchmarks.executors.SlurmExecutor`).

States are SLURM's names (``squeue -o %T``, ``sacct -o State``), upper case, first word only
(``CANCELLED by 0`` -> ``CANCELLED``), plus three of the suite's own for a job SLURM does not
list: :data:`UNREACHABLE` (neither ``squeue`` nor ``sacct`` answered: nothing is known, so the
job must be assumed alive), :data:`GONE` (SLURM knows the array but no longer lists this task:
a pending task cancelled on its own, which ``sacct`` never records) and ``UNKNOWN`` (SLURM
answered and knows nothing of the job: just submitted and not yet in accounting, or long gone).
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

UNREACHABLE = "UNREACHABLE"
"""State of every job when SLURM could not be asked (controller down, client missing)."""

GONE = "GONE"
"""State of an array task SLURM no longer lists although it knows its array (cancelled while
pending: ``squeue`` drops it and ``sacct`` shows only the array's pending range)."""

TERMINAL_FAILURES = frozenset({
    "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", GONE,
})
"""End states of a job that did not complete (``status`` shows the cell as failed or cancelled
from SLURM's word even when the job could not write its failure file)."""


SBATCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("more processors requested than permitted", "cpus_per_task"),
    ("cpu count per node can not be satisfied", "cpus_per_task"),
    ("memory required by task is not available", "mem_gb"),
    ("memory specification", "mem_gb"),
    ("invalid generic resource", "gpus_per_node"),
    ("gres", "gpus_per_node"),
    ("invalid partition", "partition"),
    ("invalid account", "account"),
    ("invalid qos", "qos"),
    ("time limit", "timeout_min"),
    ("invalid feature specification", "constraint"),
    ("requested node configuration is not available", "cpus_per_task, mem_gb or gpus_per_node"),
)
"""sbatch error text (lower case) -> the cluster-profile field that causes it."""

_UNREACHABLE_TEXT = ("unable to contact slurm controller", "socket timed out", "connection refused",
                     "connect failure", "zero bytes were transmitted")


def sbatch_problem(exc: BaseException, where: str) -> tuple[str, bool]:
    """(one-line message, definite) for an ``sbatch`` that failed (``exc``: what submitit
    raised, its text holds sbatch's stderr); ``where`` names the cluster profile the message
    points to. ``definite``: SLURM refused the job, so nothing was submitted; otherwise
    (controller unreachable) it is unknown whether the array was queued and the submission
    note must stay."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.lower().startswith("sbatch: error:")]
    detail = (said[-1] if said else (lines[-1] if lines else type(exc).__name__)).replace("sbatch: error: ", "")
    low = text.lower()
    if isinstance(exc, FileNotFoundError):
        return (f"sbatch is not installed here ({detail}); run the launcher on a SLURM login node or use "
                "--executor local", True)
    if any(t in low for t in _UNREACHABLE_TEXT):
        return (f"sbatch could not reach the SLURM controller ({detail}); start it or retry later: the "
                "next run asks SLURM whether the array was queued and submits only what is not", False)
    for needle, fieldname in SBATCH_FIELDS:
        if needle in low:
            return f"sbatch refused the job array ({detail}): change '{fieldname}' in {where}", True
    definite = "batch job submission failed" in low
    return (f"sbatch failed ({detail}); check the resources of {where}"
            + ("" if definite else "; the next run asks SLURM whether the array was queued"), definite)


def client_output(cmd: Sequence[str], timeout: float = 60) -> Optional[str]:
    """stdout of a SLURM client command, or None when it is missing, fails or hangs."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _range_tasks(spec: str) -> Optional[set[int]]:
    """Task indices of an unexpanded array range like ``[0-3,7%2]`` (None if unparsable)."""
    body = spec.strip("[]").split("%")[0]
    tasks: set[int] = set()
    for part in body.split(","):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        tasks.update(range(int(lo), int(hi or lo) + 1))
    return tasks


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """States of many SLURM jobs in two calls: ``squeue -r`` (queued/running, array tasks
    expanded) and one ``sacct`` for the rest (finished, and the unexpanded range of an array's
    pending tasks). Every id gets a state: SLURM's, or :data:`UNREACHABLE`, :data:`GONE`,
    ``UNKNOWN`` (see the module doc)."""
    wanted = {str(j) for j in job_ids}
    states: dict[str, str] = {}
    if not wanted:
        return states
    queue = client_output(["squeue", "-h", "-r", "-o", "%i|%T"])
    listed_bases: set[str] = set()
    for line in (queue or "").splitlines():
        jid, _, state = line.partition("|")
        listed_bases.add(jid.split("_")[0])
        if jid in wanted:
            states[jid] = state.strip().upper()
    rest = sorted(wanted - set(states))
    acct = None
    if rest:
        bases = sorted({j.split("_")[0] for j in rest})
        acct = client_output(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(bases)])
        ranges: dict[str, list[tuple[set[int], str]]] = {}
        for line in (acct or "").splitlines():
            jid, _, raw = line.partition("|")
            state = (raw.split() or ["UNKNOWN"])[0].upper()
            base, _, task = jid.partition("_")
            listed_bases.add(base)
            if jid in wanted and jid not in states:
                states[jid] = state
            elif task.startswith("["):
                tasks = _range_tasks(task)
                if tasks is not None:
                    ranges.setdefault(base, []).append((tasks, state))
        for jid in rest:
            if jid in states:
                continue
            base, _, task = jid.partition("_")
            for tasks, state in ranges.get(base, []):
                if task.isdigit() and int(task) in tasks:
                    # squeue -r expands pending tasks: a "pending" one it does not list was cancelled
                    states[jid] = GONE if state in WAITING_STATES and queue is not None else state
                    break
    for jid in wanted - set(states):
        if queue is None and acct is None:
            states[jid] = UNREACHABLE
        elif "_" in jid and jid.split("_")[0] in listed_bases and queue is not None and acct is not None:
            states[jid] = GONE
        else:
            states[jid] = "UNKNOWN"
    return states


def job_state(job_id: str) -> str:
    """State of one job (see :func:`slurm_states`)."""
    return slurm_states([job_id])[str(job_id)]


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
