"""Running sweep cells: executors, submission, re-attach, status and cancel.

The job each cell runs is :class:`benchmarks.worker.CellJob` (see there for checkpointing and
preemption).

**Executors** by name:

* ``slurm`` -- :class:`submitit.SlurmExecutor`; cells are grouped by their resources (the
  profile scaled by IPC, see :func:`slurm_parameters`) and each group is one job array
  (``executor.batch()``) limited to ``array_parallelism`` running tasks.
* ``local`` -- :class:`submitit.LocalExecutor`: one subprocess per cell, at most ``parallel``
  at a time, logs in the same place as on SLURM.
* ``debug`` -- in this process, one cell after the other (breakpoints work).

**No duplicates**: before ``sbatch`` runs, the array's unique job name and its cells are written
to ``submitting/<token>.json``; every submission is written to ``jobs/<cell_id>.json`` right
after ``sbatch`` returns, and the ``submitting`` file is then removed. A launcher killed in
between leaves that file behind: the next launcher finds the array by its name (``squeue``,
``sacct``) and tracks its tasks (:func:`recover_submissions`). A later run of the same sweep
first asks SLURM (``sacct`` through submitit) about the tracked job of every unfinished cell and
re-attaches to pending/running ones instead of submitting them again; finished cells (every
record present) are skipped.
"""

from __future__ import annotations

import math
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import submitit

from benchmarks.store import Store
from benchmarks.worker import CellJob
from benchmarks.sweep import Cell, Sweep

EXECUTORS = ("slurm", "local", "debug")
ACTIVE_SLURM_STATES = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED", "RESV_DEL_HOLD",
}
UNKNOWN_GRACE_S = 120
"""A freshly submitted job may be unknown to ``sacct`` for a moment; after this many seconds an
UNKNOWN tracked job counts as gone."""


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


def scaled_resources(profile: Mapping[str, Any], ipc: Optional[int]) -> tuple[int, float]:
    """(timeout_min, mem_gb) for a cell: the profile's values scaled by IPC.

    Rule (documented in ``slurm/gpu.yaml``): with ``scale_with_ipc: {reference_ipc: R,
    time_exponent: a, mem_exponent: b, max_timeout_min: T, max_mem_gb: M}``, a cell with IPC
    ``k`` gets ``timeout_min * max(1, k/R)**a`` minutes (rounded up, capped at T) and
    ``mem_gb * max(1, k/R)**b`` GB (capped at M). Cells up to IPC R use the base values. The
    whole-dataset baseline gets T (or the base time when T is unset) and the base memory."""
    timeout = int(profile.get("timeout_min", 60))
    mem = float(profile.get("mem_gb", 8))
    scale = profile.get("scale_with_ipc") or {}
    max_t = scale.get("max_timeout_min")
    max_m = scale.get("max_mem_gb")
    if ipc is None:
        return int(max_t or timeout), mem
    ref = float(scale.get("reference_ipc") or 0)
    if ref > 0:
        factor = max(1.0, ipc / ref)
        timeout = int(math.ceil(timeout * factor ** float(scale.get("time_exponent", 0) or 0)))
        mem = mem * factor ** float(scale.get("mem_exponent", 0) or 0)
    if max_t:
        timeout = min(timeout, int(max_t))
    if max_m:
        mem = min(mem, float(max_m))
    return timeout, round(mem, 1)


def slurm_parameters(profile: Mapping[str, Any], ipc: Optional[int], *, job_name: str) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` arguments for one cell (see :func:`scaled_resources`)."""
    timeout, mem = scaled_resources(profile, ipc)
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": timeout,
        "mem": f"{max(1, int(math.ceil(mem * 1024)))}M",
        "cpus_per_task": int(profile.get("cpus_per_task", 1)),
        "array_parallelism": int(profile.get("array_parallelism", 64)),
        "stderr_to_stdout": True,
    }
    if profile.get("gpus_per_node"):
        params["gpus_per_node"] = int(profile["gpus_per_node"])
    for key in ("partition", "account", "qos", "constraint"):
        if profile.get(key):
            params[key] = str(profile[key])
    if profile.get("additional_parameters"):
        params["additional_parameters"] = dict(profile["additional_parameters"])
    if profile.get("setup"):
        params["setup"] = list(profile["setup"])
    return params


def sbatch_preview(params: Mapping[str, Any], folder: Path) -> list[str]:
    """The ``#SBATCH`` lines submitit would write for ``params`` (for ``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="python -m submitit.core._submit", folder=folder, **params)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


# --------------------------------------------------------------------------------------------
# Tracking jobs
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as finished
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _slurm_output(cmd: Sequence[str], timeout: float = 60) -> Optional[str]:
    """stdout of a SLURM client command, or None when it is missing, fails or hangs."""
    import subprocess

    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """States of many SLURM jobs in two calls: ``squeue -r`` (queued/running, array tasks
    expanded) and one ``sacct`` for the rest (finished). Missing ids are left out."""
    wanted = {str(j) for j in job_ids}
    states: dict[str, str] = {}
    if not wanted:
        return states
    for line in (_slurm_output(["squeue", "-h", "-r", "-o", "%i|%T"]) or "").splitlines():
        jid, _, state = line.partition("|")
        if jid in wanted:
            states[jid] = state.strip().upper()
    rest = sorted(wanted - set(states))
    if rest:
        bases = sorted({j.split("_")[0] for j in rest})
        out = _slurm_output(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(bases)])
        for line in (out or "").splitlines():
            jid, _, state = line.partition("|")
            if jid in wanted and jid not in states:
                states[jid] = (state.split() or ["UNKNOWN"])[0].upper()
    return states


def jobs_named(job_name: str) -> Optional[dict[int, str]]:
    """Array task index -> job id of every SLURM job called ``job_name`` (a plain job counts as
    task 0), from ``squeue -r`` (queued/running) and ``sacct`` (finished, last 30 days).
    None when SLURM could not be asked."""
    outputs = [_slurm_output(["squeue", "-h", "-r", "-n", job_name, "-o", "%i"]),
               _slurm_output(["sacct", "-n", "-P", "-X", "-S", "now-30days", "--name", job_name, "-o", "JobID"])]
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


def recover_submissions(store: Store, log: Callable[[str], None] = _log,
                        find: Optional[Callable[[str], Optional[dict[int, str]]]] = None) -> int:
    """Track the jobs of submissions a killed launcher left half-recorded; returns how many
    cells were recovered. A submission SLURM has no job of never happened: it is dropped and
    its cells are submitted normally."""
    recovered = 0
    for intent in store.pending_submissions():
        found = (find or jobs_named)(str(intent["job_name"]))
        cells = intent["cells"]
        if found is None:
            log(f"could not ask SLURM about the interrupted submission '{intent['job_name']}'; "
                f"cells without a tracked job will be submitted again")
        elif found:
            n = 0
            for index, job_id in sorted(found.items()):
                if index >= len(cells):
                    continue
                cell_id = str(cells[index]["cell_id"])
                info = store.read_job(cell_id)
                if info and str(info.get("job_id")) == job_id:
                    continue
                job = submitit.SlurmJob(folder=store.logs_dir, job_id=job_id)
                store.write_job(cell_id, job_id=job_id, executor="slurm",
                                archs=list(cells[index].get("archs") or []), log_path=_log_path_of(job))
                n += 1
            recovered += n
            log(f"recovered {n} job(s) of the interrupted submission '{intent['job_name']}' "
                f"(the launcher stopped before tracking them)")
        store.end_submission(intent["token"])
    return recovered


def tracked_state(store: Store, info: Mapping[str, Any], states: Optional[Mapping[str, str]] = None) -> str:
    """Current state of a tracked job: a SLURM state name, ``RUNNING``/``FINISHED`` for local
    jobs, or ``UNKNOWN``. ``states`` is a prefetched :func:`slurm_states` answer."""
    executor = info.get("executor")
    job_id = str(info.get("job_id"))
    if executor == "slurm" and states is not None and job_id in states:
        return states[job_id]
    if executor == "slurm":
        try:
            job = submitit.SlurmJob(folder=info.get("folder") or store.logs_dir, job_id=job_id)
            state = str(job.get_info(mode="force").get("State") or "UNKNOWN").split()[0].upper()
        except Exception:
            state = "UNKNOWN"
        if state == "UNKNOWN":
            out = _slurm_output(["squeue", "-h", "-j", job_id, "-o", "%T"], timeout=30)
            if out and out.strip():
                state = out.split()[0].upper()
        return state
    if executor == "local":
        try:
            return "RUNNING" if _pid_alive(int(job_id)) else "FINISHED"
        except ValueError:
            return "UNKNOWN"
    return "FINISHED"


def _seconds_since(iso: Optional[str]) -> float:
    import datetime as dt

    if not iso:
        return float("inf")
    try:
        then = dt.datetime.fromisoformat(iso)
    except ValueError:
        return float("inf")
    return (dt.datetime.now(dt.timezone.utc) - then).total_seconds()


def is_active(store: Store, info: Optional[Mapping[str, Any]],
              states: Optional[Mapping[str, str]] = None) -> tuple[bool, str]:
    """(still queued or running?, state) for a tracked job (None: nothing tracked)."""
    if not info or info.get("state") == "CANCELLED_BY_USER":
        return False, "NONE"
    state = tracked_state(store, info, states)
    if state in ACTIVE_SLURM_STATES or (info.get("executor") == "local" and state == "RUNNING"):
        return True, state
    if state == "UNKNOWN" and info.get("executor") == "slurm":
        return _seconds_since(info.get("submitted")) < UNKNOWN_GRACE_S, state
    return False, state


# --------------------------------------------------------------------------------------------
# Cell status
# --------------------------------------------------------------------------------------------


@dataclass
class CellStatus:
    cell: Cell
    status: str  # done | running | pending | failed | cancelled | partial | missing
    job_id: Optional[str] = None
    job_state: Optional[str] = None
    log_path: Optional[str] = None
    error: Optional[str] = None
    missing_archs: list[str] = field(default_factory=list)


def _prefetch(store: Store, cells: Iterable[Cell]) -> dict[str, str]:
    ids = []
    for cell in cells:
        info = store.read_job(cell.cell_id)
        if info and info.get("executor") == "slurm" and store.missing_archs(cell.cell_id, list(cell.eval_archs)):
            ids.append(str(info.get("job_id")))
    return slurm_states(ids)


def cell_status(store: Store, cell: Cell, *, query: bool = True,
                states: Optional[Mapping[str, str]] = None) -> CellStatus:
    missing = store.missing_archs(cell.cell_id, list(cell.eval_archs))
    info = store.read_job(cell.cell_id)
    job_id = None if not info else str(info.get("job_id"))
    log_path = None if not info else info.get("log_path")
    if not missing:
        return CellStatus(cell, "done", job_id, info.get("state") if info else None, log_path)
    if info and query:
        active, state = is_active(store, info, states)
        if active:
            kind = "pending" if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                                          "CONFIGURING", "UNKNOWN") else "running"
            return CellStatus(cell, kind, job_id, state, log_path, missing_archs=missing)
    if info and info.get("state") == "CANCELLED_BY_USER":
        return CellStatus(cell, "cancelled", job_id, "CANCELLED", log_path, missing_archs=missing)
    failure = store.read_failure(cell.cell_id)
    if failure is not None:
        return CellStatus(cell, "failed", failure.get("job_id") or job_id, info.get("state") if info else None,
                          failure.get("log_path") or log_path, failure.get("error"), missing)
    partial = len(missing) < len(cell.eval_archs)
    return CellStatus(cell, "partial" if partial else "missing", job_id,
                      info.get("state") if info else None, log_path, missing_archs=missing)


def store_status(store: Store, *, query: bool = True) -> list[CellStatus]:
    if query:
        recover_submissions(store)
    _, raw = store.read_cells()
    cells = [Cell.from_json(c) for c in raw]
    states = _prefetch(store, cells) if query else None
    return [cell_status(store, c, query=query, states=states) for c in cells]


# --------------------------------------------------------------------------------------------
# Executors and submission
# --------------------------------------------------------------------------------------------


@dataclass
class Submitted:
    cell: Cell
    job: Any  # submitit Job, or None for debug
    job_id: str
    archs: list[str]
    reattached: bool = False


def make_job(sweep_name: str, store: Store, cell: Cell, archs: Sequence[str], *, data_root: Path,
             device: str, download: bool, checkpoint_every: int) -> CellJob:
    return CellJob(str(store.root), cell.to_json(), sweep_name=sweep_name, archs=list(archs),
                   data_root=str(data_root), device=device, download=download,
                   checkpoint_every=checkpoint_every)


def _log_path_of(job: Any) -> Optional[str]:
    try:
        return str(job.paths.stdout)
    except Exception:
        return None


def submit_slurm(store: Store, sweep: Sweep, todo: Sequence[tuple[Cell, list[str]]], profile: Mapping[str, Any],
                 *, checkpoint_every: int = 10) -> list[Submitted]:
    """Submit ``todo`` as job arrays, one per distinct resource set; track every job id."""
    groups: dict[tuple, list[tuple[Cell, list[str]]]] = {}
    for cell, archs in todo:
        params = slurm_parameters(profile, cell.ipc, job_name=f"cb-{sweep.name}")
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        groups.setdefault(key, []).append((cell, archs))
    out: list[Submitted] = []
    for items in groups.values():
        # A unique job name per array lets a later launcher find it if this one dies between
        # sbatch returning and the jobs/ files being written (see recover_submissions).
        token = uuid.uuid4().hex[:12]
        job_name = f"cb-{sweep.name}-{token}"
        executor = submitit.SlurmExecutor(folder=store.logs_dir)
        executor.update_parameters(**slurm_parameters(profile, items[0][0].ipc, job_name=job_name))
        store.begin_submission(token, job_name, [(cell.cell_id, list(archs)) for cell, archs in items])
        try:
            with executor.batch():
                jobs = [executor.submit(make_job(sweep.name, store, cell, archs, data_root=sweep.data_root,
                                                 device=sweep.device, download=sweep.download,
                                                 checkpoint_every=checkpoint_every))
                        for cell, archs in items]
        except Exception:  # sbatch refused: nothing was submitted
            store.end_submission(token)
            raise
        for (cell, archs), job in zip(items, jobs):
            store.write_job(cell.cell_id, job_id=str(job.job_id), executor="slurm", archs=archs,
                            log_path=_log_path_of(job))
            out.append(Submitted(cell, job, str(job.job_id), archs))
        store.end_submission(token)
        _log(f"submitted {len(items)} cell(s) as SLURM array {str(jobs[0].job_id).split('_')[0]}")
    return out


def submit_local(store: Store, sweep: Sweep, cell: Cell, archs: list[str], *, timeout_min: int,
                 checkpoint_every: int = 10) -> Submitted:
    executor = submitit.LocalExecutor(folder=store.logs_dir)
    executor.update_parameters(timeout_min=timeout_min)
    job = executor.submit(make_job(sweep.name, store, cell, archs, data_root=sweep.data_root, device=sweep.device,
                                   download=sweep.download, checkpoint_every=checkpoint_every))
    store.write_job(cell.cell_id, job_id=str(job.job_id), executor="local", archs=archs, log_path=_log_path_of(job))
    return Submitted(cell, job, str(job.job_id), archs)


def reattach(store: Store, cell: Cell, info: Mapping[str, Any]) -> Submitted:
    job_id = str(info["job_id"])
    job: Any = None
    if info.get("executor") == "slurm":
        job = submitit.SlurmJob(folder=info.get("folder") or store.logs_dir, job_id=job_id)
    return Submitted(cell, job, job_id, list(info.get("archs") or cell.eval_archs), reattached=True)


def _finished(store: Store, s: Submitted) -> bool:
    if s.job is None:  # re-attached local job: its process is not ours
        return not _pid_alive(int(s.job_id))
    if isinstance(s.job, submitit.SlurmJob):
        return s.job.done(force_check=True)
    return s.job.done()


def _settle(store: Store, s: Submitted) -> str:
    """After a job ended: 'done' or 'failed' (writing a failure when the job could not)."""
    missing = store.missing_archs(s.cell.cell_id, s.archs)
    if not missing:
        store.update_job_state(s.cell.cell_id, "COMPLETED")
        return "done"
    state = "UNKNOWN"
    if isinstance(s.job, submitit.SlurmJob):
        try:
            state = str(s.job.get_info(mode="force").get("State") or "UNKNOWN").split()[0]
        except Exception:
            pass
    elif s.job is not None:
        state = str(s.job.state)
    store.update_job_state(s.cell.cell_id, state)
    failure = store.read_failure(s.cell.cell_id)
    if failure is None or failure.get("job_id") not in (None, s.job_id, s.job_id.split("_")[0]):
        # The job died without writing its own failure (cancelled, out of memory, node failure,
        # killed by the time limit without requeue): record what SLURM/submitit knows.
        message = f"job {s.job_id} ended in state {state} without writing all records (missing: {', '.join(missing)})"
        if s.job is not None:
            try:
                exc = s.job.exception()
                if exc is not None:
                    message = f"{message}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"
            except Exception:
                pass
        store.write_failure(s.cell.cell_id, message, "", _log_path_of(s.job) if s.job else None, s.job_id)
    return "failed"


@dataclass
class RunSummary:
    skipped: int = 0
    submitted: int = 0
    reattached: int = 0
    done: int = 0
    failed: int = 0
    still_running: int = 0
    statuses: list[CellStatus] = field(default_factory=list)


def plan(store: Store, sweep: Sweep, *, force: bool = False) -> tuple[list[Cell], list[tuple[Cell, dict]], list[tuple[Cell, list[str]]]]:
    """Split the sweep's cells into (finished, still tracked as active, to submit)."""
    recover_submissions(store)
    finished, active, todo = [], [], []
    states = _prefetch(store, sweep.cells) if not force else None
    for cell in sweep.cells:
        if force:
            info = store.read_job(cell.cell_id)
            running, _ = is_active(store, info)
            if running:
                active.append((cell, info))
                continue
            todo.append((cell, list(cell.eval_archs)))
            continue
        missing = store.missing_archs(cell.cell_id, list(cell.eval_archs))
        if not missing:
            finished.append(cell)
            continue
        info = store.read_job(cell.cell_id)
        running, _ = is_active(store, info, states)
        if running:
            active.append((cell, info))
        else:
            todo.append((cell, missing))
    return finished, active, todo


def run_sweep(
    sweep: Sweep,
    *,
    executor: str = "slurm",
    force: bool = False,
    wait: bool = True,
    parallel: int = 1,
    poll_s: float = 2.0,
    checkpoint_every: int = 10,
    log: Callable[[str], None] = _log,
) -> RunSummary:
    """Run (or resume) a validated sweep into its store and wait for it (unless ``wait=False``)."""
    if executor not in EXECUTORS:
        from benchmarks import UserError

        raise UserError(f"unknown executor '{executor}'; choose one of {', '.join(EXECUTORS)}")
    store = Store(sweep.output)
    store.init(sweep.name, sweep.spec_text, [c.to_json() for c in sweep.cells])
    finished, active, todo = plan(store, sweep, force=force)
    summary = RunSummary(skipped=len(finished))
    if force:
        for cell, _ in todo:
            store.delete_cell_results(cell.cell_id)
    log(f"sweep '{sweep.name}': {len(sweep.cells)} cells -> {len(finished)} finished (skipped), "
        f"{len(active)} already queued/running (re-attached), {len(todo)} to run [{executor}]")
    for cell, _ in todo:
        store.clear_failure(cell.cell_id)

    if executor == "debug":
        for i, (cell, archs) in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {cell.describe()}")
            store.write_job(cell.cell_id, job_id=f"debug-{os.getpid()}", executor="debug", archs=archs)
            try:
                make_job(sweep.name, store, cell, archs, data_root=sweep.data_root, device=sweep.device,
                         download=sweep.download, checkpoint_every=checkpoint_every)()
                summary.done += 1
            except Exception as exc:  # recorded in failures/ by the job
                log(f"cell {cell.cell_id} failed: {type(exc).__name__}: {exc}")
                summary.failed += 1
        summary.submitted = len(todo)
        summary.statuses = [cell_status(store, c, query=False) for c in sweep.cells]
        return summary

    pending: list[Submitted] = [reattach(store, cell, info) for cell, info in active]
    summary.reattached = len(pending)
    queue = list(todo)
    if executor == "slurm":
        if queue:
            pending += submit_slurm(store, sweep, queue, sweep.profile_data, checkpoint_every=checkpoint_every)
            summary.submitted = len(queue)
            queue = []
        if not wait:
            summary.still_running = len(pending)
            summary.statuses = store_status(store)
            return summary
    timeout_min = int(sweep.profile_data.get("timeout_min", 24 * 60)) if sweep.profile_data else 24 * 60
    total = len(pending) + len(queue)
    last_report = 0.0
    running: list[Submitted] = []
    running.extend(pending)
    while running or queue:
        while queue and executor == "local" and sum(1 for r in running if not r.reattached) < parallel:
            cell, archs = queue.pop(0)
            running.append(submit_local(store, sweep, cell, archs, timeout_min=timeout_min,
                                        checkpoint_every=checkpoint_every))
            summary.submitted += 1
        for s in list(running):
            if _finished(store, s):
                running.remove(s)
                outcome = _settle(store, s)
                if outcome == "done":
                    summary.done += 1
                else:
                    summary.failed += 1
                    fail = store.read_failure(s.cell.cell_id) or {}
                    log(f"cell {s.cell.cell_id} ({s.cell.describe()}) FAILED: {fail.get('error')} "
                        f"(log: {fail.get('log_path')})")
        now = time.monotonic()
        if now - last_report > 30 or not (running or queue):
            log(f"progress: {summary.done + summary.failed}/{total} finished "
                f"({summary.done} done, {summary.failed} failed), {len(running)} in flight, {len(queue)} waiting")
            last_report = now
        if running or queue:
            time.sleep(poll_s)
    summary.statuses = store_status(store, query=False)
    return summary


def cancel_store(store: Store, log: Callable[[str], None] = _log) -> list[str]:
    """Cancel every tracked, still active job of a store; returns the cancelled job ids."""
    recover_submissions(store, log)
    _, cells = store.read_cells()
    cancelled = []
    for c in cells:
        info = store.read_job(c["cell_id"])
        active, state = is_active(store, info)
        if not active or not info:
            continue
        job_id = str(info["job_id"])
        if info.get("executor") == "slurm":
            submitit.SlurmJob(folder=info.get("folder") or store.logs_dir, job_id=job_id).cancel(check=False)
        elif info.get("executor") == "local":
            try:
                os.kill(int(job_id), signal.SIGINT)
            except (ProcessLookupError, ValueError):
                continue
        store.update_job_state(c["cell_id"], "CANCELLED_BY_USER")
        cancelled.append(job_id)
        log(f"cancelled job {job_id} of cell {c['cell_id']} (was {state})")
    return cancelled
