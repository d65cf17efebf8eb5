"""Executors: where a sweep's cells run, all through one interface.

An :class:`Executor` submits cells (each a :class:`benchmarks.worker.CellJob`), follows the jobs
it or an earlier launcher recorded in ``jobs/<cell_id>.json``, settles a job that ended (done
when every record is there, else a failure is written) and cancels. The launcher
(:mod:`benchmarks.launcher`) never asks which executor it drives; it looks one up by name in
:data:`EXECUTORS` (``executor_for``) -- the run's for new cells, the recorded one for a tracked job.

Why ~700 lines: the three executors share the interface and their recovery code (interrupted
submissions, stage dependencies, settling a job from SLURM's accounting), which is the part a
split would duplicate or scatter; the SLURM client commands live in :mod:`benchmarks.slurm_client`.

Registered executors:

* ``slurm`` (:class:`SlurmExecutor`) -- :class:`submitit.SlurmExecutor`; cells are grouped by
  their resources (:meth:`benchmarks.profile.ClusterProfile.sbatch_parameters`, scaled by IPC)
  and each group is one job array limited to ``array_parallelism`` running tasks.
* ``local`` (:class:`LocalExecutor`) -- :class:`submitit.LocalExecutor`: one subprocess per cell,
  at most ``parallel`` at a time, logs in the same place as on SLURM.
* ``debug`` (:class:`DebugExecutor`) -- in this process, one cell after the other (breakpoints
  work); leaves jobs of other launchers alone.

Expert stages (:mod:`benchmarks.stages`) go through the same executors: ``submit_stages`` starts
one job per stage (:class:`benchmarks.stages.ExpertStageJob`; on SLURM one array of them, under a
``submitting/`` note like cells) and records it in ``jobs/stage-<key>.json``; ``settle_stage``
says whether it stored every expert. Only ``slurm`` has :attr:`Executor.dependencies`: its
``submit`` takes ``after`` (cell id -> job ids) and gives those cells
``--dependency=afterok:<ids>`` and ``--kill-on-invalid-dep=yes`` (cells with different
dependencies go to different arrays); for the others the launcher starts a cell once its stage
has finished.

**No duplicates on SLURM**: before ``sbatch`` runs, the array's unique job name and its cells are
written to ``submitting/<token>.json``; every submission is written to ``jobs/<cell_id>.json``
right after ``sbatch`` returns, and the ``submitting`` file is then removed. A launcher killed
in between leaves that file behind and the next one finds the array by its name
(:func:`recover_submissions`): tasks whose submitit pickle exists are tracked; tasks without one
(the launcher died *during* ``sbatch``, before submitit named the pickles) can never run, so they
are cancelled and their cells submitted again in the same run. The note is removed only once
SLURM has answered; while it cannot be asked, the note's cells are held back (never submitted
twice). One launcher at a time works on a store (:meth:`benchmarks.store.Store.launcher_lock`),
so no live submission is mistaken for an interrupted one.

A freshly submitted job may be unknown to SLURM's accounting for a moment: an UNKNOWN job counts
as active for :data:`UNKNOWN_GRACE_S` after its submission; an array task SLURM no longer lists
(:data:`benchmarks.slurm_client.GONE`: cancelled while pending) counts as ended after
:data:`GONE_GRACE_S`. While SLURM cannot be asked at all
(:data:`benchmarks.slurm_client.UNREACHABLE`) every job counts as active.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import signal
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import submitit

from benchmarks import UserError, slurm_client
from benchmarks.cells import Cell
from benchmarks.profile import ClusterProfile
from benchmarks.run_options import RunOptions
from benchmarks.stages import ExpertStage, ExpertStageJob
from benchmarks.storage import write_problem
from benchmarks.store import Store
from benchmarks.worker import CellJob
from methods.registry import Registry

UNKNOWN_GRACE_S = 120
"""Seconds after submission during which a SLURM job that SLURM does not know yet counts as
active; after that an UNKNOWN tracked job counts as gone."""

GONE_GRACE_S = 20
"""Seconds after submission before an array task SLURM no longer lists counts as ended (covers
the moment between ``sbatch`` returning and the tasks appearing in ``squeue``)."""

SUBMIT_SETTLE_S = 20
"""An interrupted submission SLURM has no job of yet is dropped only once its note is this old:
the ``sbatch`` of a launcher killed while it ran may still be on its way to the controller."""

Work = tuple[Cell, list[str]]
"""A cell and the evaluation architectures it still has to write records for."""


def log_line(msg: str) -> None:
    """The launcher's log format: ``[HH:MM:SS] message`` on stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Submitted:
    """A job the launcher follows: the cell (or expert ``stage``: then ``cell`` is None), the
    executor that runs it and its job id.

    ``job`` is the submitit job (None for a re-attached local job, whose process is not ours,
    and for the debug executor); ``reattached`` marks jobs an earlier launcher submitted."""

    cell: Optional[Cell]
    executor: str
    job_id: str
    archs: list[str]
    job: Any = None
    reattached: bool = False
    submitted: Optional[str] = None
    """ISO time of the submission (the UNKNOWN/GONE grace periods count from it)."""
    stage: Optional[ExpertStage] = None
    """The expert stage this job trains (:mod:`benchmarks.stages`), None for a cell's job."""

    @property
    def track_id(self) -> str:
        """The name of its ``jobs/`` file: the cell id or the stage id."""
        return self.stage.stage_id if self.stage is not None else self.cell.cell_id  # type: ignore[union-attr]


def make_job(store: Store, sweep_name: str, cell: Cell, archs: Sequence[str], options: RunOptions) -> CellJob:
    """The picklable job one cell runs, with the run's data root, device and checkpointing."""
    return CellJob(str(store.root), cell.to_json(), sweep_name=sweep_name, archs=list(archs),
                   data_root=str(options.data_root), device=options.device, download=options.download,
                   checkpoint_every=options.checkpoint_every, progress=options.progress, compile=options.compile)


def make_stage_job(store: Store, stage: ExpertStage, options: RunOptions) -> ExpertStageJob:
    """The picklable job of one expert stage, training into ``store``'s ``experts/``."""
    return ExpertStageJob(str(store.root), stage.to_json(), data_root=str(options.data_root), device=options.device,
                          download=options.download)


def job_log_path(job: Any) -> Optional[str]:
    """The stdout log of a submitit job (None when it has none)."""
    try:
        return str(job.paths.stdout)
    except Exception:
        return None


class Executor(ABC):
    """Runs cells and follows their jobs (see the module doc).

    ``submit`` starts jobs for (cell, archs) pairs and records each in ``jobs/<cell_id>.json``;
    ``capacity`` says how many more cells ``submit`` may take now (None: all of them);
    ``follows`` says whether the launcher waits for the jobs after submitting. For a recorded
    job (the ``jobs/`` mapping ``info``): ``state`` (the executor's state name), ``is_active``
    (queued or running), ``reattach`` (follow it again), ``finished`` (has it ended?), ``settle``
    ('done', or 'failed' with a failure written when the job could not write its own) and
    ``cancel``."""

    name: ClassVar[str] = ""
    reattaches: ClassVar[bool] = True
    """Whether a run with this executor waits for active jobs of earlier launchers."""
    dependencies: ClassVar[bool] = False
    """Whether :meth:`submit` can start a cell that waits for its expert stages' jobs (its
    ``after``); otherwise the launcher submits such a cell once its stages have finished."""

    def __init__(self, store: Store, options: Optional[RunOptions] = None) -> None:
        self.store = store
        self.options = options if options is not None else RunOptions(executor=self.name)

    # -- submission ---------------------------------------------------------------------------
    @abstractmethod
    def submit(self, sweep_name: str, items: Sequence[Work], log: Callable[[str], None] = log_line,
               after: Optional[Mapping[str, Sequence[str]]] = None) -> list[Submitted]:
        """Start a job for each item and record it; returns what to follow. ``after`` maps a
        cell id to the job ids it must wait for (only executors with :attr:`dependencies`)."""

    @abstractmethod
    def submit_stages(self, sweep_name: str, stages: Sequence[ExpertStage],
                      log: Callable[[str], None] = log_line) -> list[Submitted]:
        """Start a job for each expert stage and record it in ``jobs/<stage id>.json``."""

    def capacity(self, in_flight: Sequence[Submitted]) -> Optional[int]:
        """How many more cells :meth:`submit` may take while ``in_flight`` runs (None: all)."""
        return None

    @property
    def follows(self) -> bool:
        """Whether the launcher waits for the submitted jobs to end."""
        return True

    # -- following recorded jobs --------------------------------------------------------------
    @abstractmethod
    def state(self, info: Mapping[str, Any], states: Optional[Mapping[str, str]] = None) -> str:
        """The current state of a recorded job; ``states`` is a prefetched SLURM answer."""

    def is_active(self, info: Mapping[str, Any], states: Optional[Mapping[str, str]] = None) -> tuple[bool, str]:
        """(still queued or running?, state) of a recorded job."""
        state = self.state(info, states)
        return state == "RUNNING", state

    def reattach(self, cell: Optional[Cell], info: Mapping[str, Any]) -> Submitted:
        """Follow a job an earlier launcher submitted (``cell`` None: a stage's)."""
        archs = list(info.get("archs") or (cell.eval_archs if cell is not None else []))
        return Submitted(cell, self.name, str(info["job_id"]), archs, reattached=True, submitted=info.get("submitted"))

    def reattach_stage(self, stage: ExpertStage, info: Mapping[str, Any]) -> Submitted:
        """Follow an expert stage's job an earlier launcher submitted."""
        s = self.reattach(None, info)
        s.stage = stage
        return s

    @abstractmethod
    def finished(self, s: Submitted) -> bool:
        """Whether the job has ended (in any state)."""

    def final_state(self, s: Submitted) -> str:
        """The state a job ended in, for ``jobs/<cell_id>.json``."""
        return "UNKNOWN"

    def cancel(self, info: Mapping[str, Any]) -> bool:
        """Stop a recorded job; False when there was nothing this executor could stop."""
        return False

    def settle_stage(self, s: Submitted) -> str:
        """After a stage's job ended: 'done' when every expert is stored, 'cancelled' when it
        was cancelled, else 'failed' (writing a failure when the job left none)."""
        store, stage = self.store, s.stage
        assert stage is not None
        if stage.is_done(store.experts_root):
            store.update_job_state(stage.stage_id, "COMPLETED")
            store.clear_failure(stage.stage_id)
            return "done"
        info = store.read_job(stage.stage_id) or {}
        if info.get("state") == "CANCELLED_BY_USER" and str(info.get("job_id")) == s.job_id:
            return "cancelled"
        state = self.final_state(s)
        store.update_job_state(stage.stage_id, state)
        if state in ("CANCELLED", slurm_client.GONE):
            return "cancelled"
        if store.read_failure(stage.stage_id) is None:
            store.write_failure(stage.stage_id, f"job {s.job_id} ended in state {state} without storing all "
                                f"{stage.num_experts} experts", "", job_log_path(s.job) if s.job else None, s.job_id)
        return "failed"

    def settle(self, s: Submitted) -> str:
        """After a job ended: 'done' when every record it owed exists, 'cancelled' when
        ``benchmarks cancel`` or ``scancel`` stopped it, else 'failed' (writing a failure when
        the job died without writing its own). Raises ``OSError`` when the store cannot be
        written."""
        store = self.store
        missing = store.missing_archs(s.cell.cell_id, s.archs)
        if not missing:
            store.update_job_state(s.cell.cell_id, "COMPLETED")
            return "done"
        info = store.read_job(s.cell.cell_id) or {}
        if info.get("state") == "CANCELLED_BY_USER" and str(info.get("job_id")) == s.job_id:
            return "cancelled"
        state = self.final_state(s)
        store.update_job_state(s.cell.cell_id, state)
        failure = store.read_failure(s.cell.cell_id)
        own_failure = failure is not None and failure.get("job_id") in (None, s.job_id, s.job_id.split("_")[0])
        # scancel'ed outside the suite is not a failure -- unless the job wrote its own failure:
        # a task that ran and raised can briefly be missing from accounting (GONE) as it ends
        if state in ("CANCELLED", slurm_client.GONE) and not own_failure:
            return "cancelled"
        if not own_failure:
            # The job died without writing its own failure (cancelled, out of memory, node failure,
            # killed by the time limit without requeue): record what the executor knows.
            message = f"job {s.job_id} ended in state {state} without writing all records (missing: {', '.join(missing)})"
            if s.job is not None:
                try:
                    exc = s.job.exception()
                    if exc is not None:
                        text = str(exc).strip()
                        message = f"{message}: {text.splitlines()[-1] if text else type(exc).__name__}"
                except Exception:
                    pass
            store.write_failure(s.cell.cell_id, message, "", job_log_path(s.job) if s.job else None, s.job_id)
        return "failed"


EXECUTORS: Registry[type[Executor]] = Registry("executor", error=UserError)
"""Executor classes by name (``slurm``, ``local``, ``debug``)."""


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: register an :class:`Executor` subclass under ``name``."""

    def deco(cls: type[Executor]) -> type[Executor]:
        cls.name = name
        return EXECUTORS.decorator(name, lambda c: c)(cls)

    return deco


def executor_names() -> list[str]:
    return EXECUTORS.names()


def executor_for(name: str, store: Store, options: Optional[RunOptions] = None) -> Executor:
    """The executor registered as ``name``; an unknown name is a :class:`UserError` listing
    the valid ones."""
    return EXECUTORS.get(name)(store, options)


# --------------------------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------------------------


def sbatch_preview(params: Mapping[str, Any], folder: Path) -> list[str]:
    """The ``#SBATCH`` lines submitit would write for ``params`` (for ``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    text = _make_sbatch_string(command="python -m submitit.core._submit", folder=folder, **params)
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _active(state: str, submitted: Optional[str]) -> bool:
    """Whether a SLURM job in ``state`` (submitted at ISO time ``submitted``) is still queued or
    running, or must be assumed to be (see the module doc for UNREACHABLE, GONE, UNKNOWN)."""
    if state in slurm_client.ACTIVE_STATES or state == slurm_client.UNREACHABLE:
        return True
    if state == slurm_client.GONE:
        return _seconds_since(submitted) < GONE_GRACE_S
    if state == "UNKNOWN":
        return _seconds_since(submitted) < UNKNOWN_GRACE_S
    return False


_UNSUBMITTED = re.compile(r"^(?:[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh)$")


def unsubmitted_files(folder: Path) -> list[Path]:
    """submitit's files of a submission that never got its job id: ``<uuid>.pkl`` pickles
    (renamed ``<job_id>_submitted.pkl`` once ``sbatch`` returned) and submission scripts. With
    one launcher per store (:meth:`benchmarks.store.Store.launcher_lock`), outside a
    submission every one of them is an orphan."""
    try:
        return [p for p in Path(folder).iterdir() if _UNSUBMITTED.match(p.name)]
    except OSError:
        return []


def _seconds_since(iso: Optional[str]) -> float:
    if not iso:
        return float("inf")
    try:
        then = dt.datetime.fromisoformat(iso)
    except ValueError:
        return float("inf")
    return (dt.datetime.now(dt.timezone.utc) - then).total_seconds()


@register_executor("slurm")
class SlurmExecutor(Executor):
    """Job arrays through submitit (one per distinct resource set), states from SLURM."""

    @property
    def profile(self) -> ClusterProfile:
        if self.options.profile is None:
            raise UserError("the slurm executor needs a cluster profile; name one with --profile or "
                            "'profile:' in the spec")
        return self.options.profile

    @property
    def follows(self) -> bool:
        return self.options.wait

    def parameters(self, ipc: Optional[int], job_name: str) -> dict[str, Any]:
        """sbatch parameters of one cell: the profile's, scaled by IPC, and the run's array
        parallelism override."""
        return self.profile.sbatch_parameters(ipc, job_name=job_name,
                                              array_parallelism=self.options.array_parallelism)

    dependencies = True

    def cell_parameters(self, cell: Cell, job_name: str, after: Sequence[str] = ()) -> dict[str, Any]:
        """:meth:`parameters` of ``cell``, plus ``--dependency=afterok:<ids>`` and
        ``--kill-on-invalid-dep=yes`` when it waits for the jobs ``after`` (its expert stages)."""
        params = self.parameters(cell.ipc, job_name)
        if after:
            params["dependency"] = "afterok:" + ":".join(sorted(str(j) for j in after))
            params["additional_parameters"] = {**dict(params.get("additional_parameters") or {}),
                                               "kill_on_invalid_dep": "yes"}
        return params

    def arrays(self, sweep_name: str, items: Sequence[Work],
               after: Optional[Mapping[str, Sequence[str]]] = None) -> list[list[Work]]:
        """``items`` grouped into job arrays: cells with equal sbatch parameters (dependencies
        included) share one."""
        after = after or {}
        groups: dict[tuple, list[Work]] = {}
        for cell, archs in items:
            params = self.cell_parameters(cell, f"cb-{sweep_name}", after.get(cell.cell_id, ()))
            groups.setdefault(tuple(sorted((k, repr(v)) for k, v in params.items())), []).append((cell, archs))
        return list(groups.values())

    def submit_stages(self, sweep_name: str, stages: Sequence[ExpertStage],
                      log: Callable[[str], None] = log_line) -> list[Submitted]:
        """One array of every stage, with the profile's resources (at no IPC), under the same
        ``submitting/`` note as cells (a killed launcher's next run finds it by name)."""
        if not stages:
            return []
        store = self.store
        token = uuid.uuid4().hex[:12]
        job_name = f"cb-{sweep_name}-{token}"
        executor = submitit.SlurmExecutor(folder=store.logs_dir)
        executor.update_parameters(**self.parameters(None, job_name))
        store.begin_submission(token, job_name, [(st.stage_id, []) for st in stages])
        jobs = self._sbatch(executor, token, [make_stage_job(store, st, self.options) for st in stages])
        submitted = utc_now_iso()
        try:
            for st, job in zip(stages, jobs):
                store.write_job(st.stage_id, job_id=str(job.job_id), executor=self.name, archs=[],
                                log_path=job_log_path(job))
            store.end_submission(token)
        except OSError as exc:
            log(f"expert stage array {str(jobs[0].job_id).split('_')[0]} submitted but not recorded: "
                f"{write_problem(exc, store.root, '--output')}")
        log(f"submitted {len(stages)} expert stage(s) as SLURM job(s) {', '.join(str(j.job_id) for j in jobs)}")
        return [Submitted(None, self.name, str(job.job_id), [], job, submitted=submitted, stage=st)
                for st, job in zip(stages, jobs)]

    def _sbatch(self, executor: Any, token: str, calls: Sequence[Any]) -> list[Any]:
        """Submit ``calls`` as one batch; a refusal is a :class:`UserError` (see :meth:`submit`)."""
        store = self.store
        before = set(unsubmitted_files(store.logs_dir))
        echoed = io.StringIO()  # submitit echoes sbatch's stderr; the UserError says it in one line
        try:
            with contextlib.redirect_stderr(echoed), executor.batch():
                jobs = [executor.submit(call) for call in calls]
        except Exception as exc:  # sbatch refused or could not be run
            for path in set(unsubmitted_files(store.logs_dir)) - before:
                path.unlink(missing_ok=True)
            profile = self.profile
            message, definite = slurm_client.sbatch_problem(
                exc, f"profile '{profile.name}'" + (f" ({profile.path})" if profile.path else ""))
            if definite:
                store.end_submission(token)
            raise UserError(message) from None
        return jobs

    def submit(self, sweep_name: str, items: Sequence[Work], log: Callable[[str], None] = log_line,
               after: Optional[Mapping[str, Sequence[str]]] = None) -> list[Submitted]:
        """One ``sbatch`` per array (see the module doc). A refused ``sbatch`` is a
        :class:`UserError` naming the profile field to change (:func:`benchmarks.slurm_client.sbatch_problem`); the
        pickles and submission scripts it wrote are removed, and its ``submitting/`` note too
        when SLURM definitely refused (kept when the answer is ambiguous, e.g. the controller
        did not answer: the next run asks SLURM whether the array exists)."""
        out: list[Submitted] = []
        store = self.store
        after = after or {}
        for group in self.arrays(sweep_name, items, after):
            # A unique job name per array lets a later launcher find it if this one dies between
            # sbatch returning and the jobs/ files being written (see recover_submissions).
            token = uuid.uuid4().hex[:12]
            job_name = f"cb-{sweep_name}-{token}"
            executor = submitit.SlurmExecutor(folder=store.logs_dir)
            executor.update_parameters(**self.cell_parameters(group[0][0], job_name,
                                                              after.get(group[0][0].cell_id, ())))
            store.begin_submission(token, job_name, [(cell.cell_id, list(archs)) for cell, archs in group])
            jobs = self._sbatch(executor, token, [make_job(store, sweep_name, cell, archs, self.options)
                                                  for cell, archs in group])
            submitted = utc_now_iso()
            try:
                for (cell, archs), job in zip(group, jobs):
                    store.write_job(cell.cell_id, job_id=str(job.job_id), executor=self.name, archs=archs,
                                    log_path=job_log_path(job))
                store.end_submission(token)
            except OSError as exc:  # followed from memory; the kept note lets the next run track them
                log(f"array {str(jobs[0].job_id).split('_')[0]} submitted but not recorded: "
                    f"{write_problem(exc, store.root, '--output')}")
            out += [Submitted(cell, self.name, str(job.job_id), archs, job, submitted=submitted)
                    for (cell, archs), job in zip(group, jobs)]
            log(f"submitted {len(group)} cell(s) as SLURM array {str(jobs[0].job_id).split('_')[0]}")
        return out

    def state(self, info: Mapping[str, Any], states: Optional[Mapping[str, str]] = None) -> str:
        job_id = str(info.get("job_id"))
        if states is not None and job_id in states:
            return states[job_id]
        return slurm_client.job_state(job_id)

    def is_active(self, info: Mapping[str, Any], states: Optional[Mapping[str, str]] = None) -> tuple[bool, str]:
        state = self.state(info, states)
        return _active(state, info.get("submitted")), state

    def reattach(self, cell: Optional[Cell], info: Mapping[str, Any]) -> Submitted:
        s = super().reattach(cell, info)
        s.job = submitit.SlurmJob(folder=info.get("folder") or self.store.logs_dir, job_id=s.job_id)
        return s

    def finished(self, s: Submitted) -> bool:
        """submitit's own ``sacct`` polling, and the suite's client for what submitit never
        settles: an array task cancelled while pending (GONE) or one SLURM forgot (UNKNOWN past
        the grace period). While SLURM cannot be asked, nothing counts as finished."""
        if s.job.done(force_check=True):
            return True
        return not _active(slurm_client.job_state(s.job_id), s.submitted)

    def final_state(self, s: Submitted) -> str:
        """Accounting's word first (submitit read it from ``sacct`` when it saw the job end;
        ``squeue`` may still say COMPLETING), else the suite's client (GONE, UNKNOWN)."""
        try:
            said = str(s.job.state or "").split()
        except Exception:
            said = []
        state = said[0].upper() if said else "UNKNOWN"
        if state in slurm_client.ACTIVE_STATES or state == "UNKNOWN":
            state = slurm_client.job_state(s.job_id)
        return state

    def cancel(self, info: Mapping[str, Any]) -> bool:
        return slurm_client.cancel(str(info["job_id"]))


@dataclass
class Recovery:
    """What :func:`recover_submissions` did: ``recovered`` cells now tracked, ``resubmit`` cells
    whose tasks could never run (cancelled; to be submitted again in this run) and ``held``
    cells of submissions SLURM could not be asked about (not to be submitted in this run)."""

    recovered: int = 0
    resubmit: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)


def recover_submissions(store: Store, log: Callable[[str], None] = log_line,
                        find: Optional[Callable[[str], Optional[dict[int, str]]]] = None,
                        cancel: Optional[Callable[[str], bool]] = None,
                        settle_s: float = SUBMIT_SETTLE_S) -> Recovery:
    """Resolve the SLURM submissions a killed launcher left half-recorded (the
    ``submitting/<token>.json`` notes; see the module doc). ``find`` maps a job name to its
    array tasks (default :func:`benchmarks.slurm_client.jobs_named`), ``cancel`` cancels a task
    (default :func:`benchmarks.slurm_client.cancel`).

    Per note: SLURM cannot be asked -> the note stays and its cells are held; SLURM knows no
    job of it -> it never happened (once the note is ``settle_s`` old: an ``sbatch`` may still
    be on its way) and its cells are submitted normally; otherwise every task with its submitit
    pickle is tracked and every task without one is cancelled, its cell submitted again. The
    caller must hold the store's launcher lock."""
    find = find or slurm_client.jobs_named
    cancel = cancel or slurm_client.cancel
    result = Recovery()
    for intent in store.pending_submissions():
        name = str(intent["job_name"])
        cells = intent["cells"]
        found = find(name)
        age = _seconds_since(intent.get("started"))
        if found == {} and age < settle_s:
            time.sleep(max(0.0, settle_s - age))
            found = find(name)
        if found is None:
            result.held.update(str(c["cell_id"]) for c in cells)
            log(f"SLURM did not answer about the interrupted submission '{name}': its {len(cells)} cell(s) "
                "are not submitted again until it does (re-run once the controller is back)")
            continue
        tracked, lost, unresolved = 0, [], False
        for index, job_id in sorted(found.items()):
            if index >= len(cells):
                continue
            cell_id = str(cells[index]["cell_id"])
            info = store.read_job(cell_id)
            if info and str(info.get("job_id")) == job_id:
                continue
            job = submitit.SlurmJob(folder=store.logs_dir, job_id=job_id)
            if not job.paths.submitted_pickle.exists():
                # killed during sbatch: submitit never renamed the pickle, the task cannot run
                if cancel(job_id) or not _active(slurm_client.job_state(job_id), None):
                    lost.append(cell_id)
                else:
                    unresolved = True
                    result.held.add(cell_id)
                continue
            store.write_job(cell_id, job_id=job_id, executor=SlurmExecutor.name,
                            archs=list(cells[index].get("archs") or []), log_path=job_log_path(job))
            tracked += 1
        result.recovered += tracked
        result.resubmit += lost
        if found:
            log(f"interrupted submission '{name}': {tracked} task(s) tracked"
                + (f", {len(lost)} without their job file cancelled and submitted again" if lost else "")
                + (" (some could not be cancelled: re-run once SLURM answers)" if unresolved else ""))
        if unresolved:
            continue
        for path in unsubmitted_files(store.logs_dir):
            path.unlink(missing_ok=True)
        store.end_submission(intent["token"])
    return result


# --------------------------------------------------------------------------------------------
# Local subprocesses
# --------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie child of ours counts as finished)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@register_executor("local")
class LocalExecutor(Executor):
    """One submitit local subprocess per cell, at most ``options.parallel`` of this run's at once.

    With ``parallel`` > 1 the usable cores are split between the cells running at once (each
    job sets its torch threads to cores // parallel, at least 1), unless ``OMP_NUM_THREADS`` is
    set: N processes each using every core would oversubscribe the CPU and slow all of them."""

    def cell_threads(self) -> Optional[int]:
        """Torch threads of each cell's process (None: torch's default)."""
        from benchmarks.workers import available_cores

        if self.options.parallel <= 1 or os.environ.get("OMP_NUM_THREADS"):
            return None
        return max(1, available_cores() // self.options.parallel)

    def capacity(self, in_flight: Sequence[Submitted]) -> Optional[int]:
        # local jobs run on this machine whoever started them: a re-attached one (an earlier
        # launcher's, still running) takes a slot; re-attached SLURM jobs run elsewhere
        return max(0, self.options.parallel - sum(1 for s in in_flight if not s.reattached or s.executor == self.name))

    def submit_stages(self, sweep_name: str, stages: Sequence[ExpertStage],
                      log: Callable[[str], None] = log_line) -> list[Submitted]:
        out = []
        for st in stages:
            executor = submitit.LocalExecutor(folder=self.store.logs_dir)
            executor.update_parameters(timeout_min=self.options.timeout_min)
            job = executor.submit(make_stage_job(self.store, st, self.options))
            self.store.write_job(st.stage_id, job_id=str(job.job_id), executor=self.name, archs=[],
                                 log_path=job_log_path(job))
            log(f"started {st.describe()} as local process {job.job_id}")
            out.append(Submitted(None, self.name, str(job.job_id), [], job, stage=st))
        return out

    def submit(self, sweep_name: str, items: Sequence[Work], log: Callable[[str], None] = log_line,
               after: Optional[Mapping[str, Sequence[str]]] = None) -> list[Submitted]:
        out = []
        for cell, archs in items:
            executor = submitit.LocalExecutor(folder=self.store.logs_dir)
            executor.update_parameters(timeout_min=self.options.timeout_min)
            work = make_job(self.store, sweep_name, cell, archs, self.options)
            work.threads = self.cell_threads()
            job = executor.submit(work)
            self.store.write_job(cell.cell_id, job_id=str(job.job_id), executor=self.name, archs=archs,
                                 log_path=job_log_path(job))
            out.append(Submitted(cell, self.name, str(job.job_id), archs, job))
        return out

    def state(self, info: Mapping[str, Any], states: Optional[Mapping[str, str]] = None) -> str:
        try:
            return "RUNNING" if pid_alive(int(str(info.get("job_id")))) else "FINISHED"
        except ValueError:
            return "UNKNOWN"

    def finished(self, s: Submitted) -> bool:
        if s.job is None:  # re-attached: the process is not ours
            return not pid_alive(int(s.job_id))
        return s.job.done()

    def final_state(self, s: Submitted) -> str:
        return "UNKNOWN" if s.job is None else str(s.job.state)

    def cancel(self, info: Mapping[str, Any]) -> bool:
        """Stop a local job: SIGINT to its submitit controller (which stops its task), and where
        that does not end it within :data:`LOCAL_CANCEL_GRACE_S` -- a launcher started in the
        background by a script runs with SIGINT ignored, and so do its jobs -- SIGKILL to the
        task processes, then to the controller. The cell resumes from its last checkpoint."""
        try:
            pid = int(str(info["job_id"]))
            os.kill(pid, signal.SIGINT)
        except (ProcessLookupError, ValueError):
            return False
        deadline = time.monotonic() + LOCAL_CANCEL_GRACE_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            for child in child_pids(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True


LOCAL_CANCEL_GRACE_S = 3.0
"""Seconds a cancelled local job gets to stop on SIGINT before it is killed."""


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from ``/proc``; empty where it cannot be read)."""
    out = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


# --------------------------------------------------------------------------------------------
# In this process
# --------------------------------------------------------------------------------------------


@register_executor("debug")
class DebugExecutor(Executor):
    """Runs each cell in this process as it is submitted (breakpoints and pdb work).

    A failing cell writes its failure (the job does) and the next cell runs."""

    reattaches = False

    def submit_stages(self, sweep_name: str, stages: Sequence[ExpertStage],
                      log: Callable[[str], None] = log_line) -> list[Submitted]:
        out = []
        for st in stages:
            log(f"expert stage: {st.describe()}")
            job_id = f"debug-{os.getpid()}"
            self.store.write_job(st.stage_id, job_id=job_id, executor=self.name, archs=[])
            try:
                make_stage_job(self.store, st, self.options)()
            except Exception:  # recorded in failures/ by the job; settle_stage reports it
                pass
            out.append(Submitted(None, self.name, job_id, [], stage=st))
        return out

    def submit(self, sweep_name: str, items: Sequence[Work], log: Callable[[str], None] = log_line,
               after: Optional[Mapping[str, Sequence[str]]] = None) -> list[Submitted]:
        out = []
        for i, (cell, archs) in enumerate(items, 1):
            log(f"[{i}/{len(items)}] {cell.describe()}")
            job_id = f"debug-{os.getpid()}"
            self.store.write_job(cell.cell_id, job_id=job_id, executor=self.name, archs=archs)
            try:
                make_job(self.store, sweep_name, cell, archs, self.options)()
            except Exception:  # recorded in failures/ by the job; settle reports it
                pass
            out.append(Submitted(cell, self.name, job_id, list(archs)))
        return out

    def state(self, info: Mapping[str, Any], states: Optional[Mapping[str, str]] = None) -> str:
        return "FINISHED"

    def finished(self, s: Submitted) -> bool:
        return True

    def final_state(self, s: Submitted) -> str:
        return "FAILED"
