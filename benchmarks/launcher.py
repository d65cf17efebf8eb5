"""The launcher: run (or resume) a sweep, report every cell's status, cancel its jobs.

Why ~500 lines: ``run``, ``status`` and ``cancel`` share the planning, recovery and job-state
code that decides whether a cell is finished, active or to run.

:func:`run_sweep` writes the expanded sweep into the store, splits the cells (:func:`plan`) into
finished (every record present: skipped), active (a recorded job is still queued or running:
re-attached, never submitted twice) and to run, submits the latter through the executor named
in :class:`~benchmarks.run_options.RunOptions` and follows every job until it ends. Before
planning, submissions a killed launcher left half-recorded are recovered
(:func:`benchmarks.executors.recover_submissions`). Which executor follows a recorded job is
the one that submitted it (``jobs/<cell_id>.json``), whatever the current run's executor is.

Expert stages (:mod:`benchmarks.stages`) come first: every stage a cell to run needs whose
experts are not all stored is submitted as its own job (or re-attached when its recorded
``jobs/stage-<key>.json`` job is still active). On SLURM the cells are submitted at once with
an ``afterok`` dependency on their stage's job; with the local and debug executors a cell waits
in the launcher until its stage has finished. A stage that fails fails its waiting cells (with a
failure naming the stage); on SLURM its cells are cancelled by the dependency.

:func:`store_status` and :func:`cancel_store` work on a results store alone (``status`` and
``cancel`` subcommands).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

from benchmarks import UserError, slurm_client
from benchmarks.cells import Cell
from benchmarks.executors import (
    EXECUTORS, Executor, Recovery, SlurmExecutor, Submitted, Work, executor_for, log_line, recover_submissions,
)
from benchmarks.stages import STAGE_PREFIX, ExpertStage, stages_for
from benchmarks.storage import write_problem
from benchmarks.run_options import RunOptions
from benchmarks.store import Store, read_json
from benchmarks.sweep import Sweep

PROGRESS_EVERY_S = 30.0
"""Seconds between the launcher's progress lines while it waits."""

LOCK_WAIT_S = 5.0
"""Seconds a launcher waits for the store's launcher lock (held briefly by ``status``/``cancel``
while they resolve interrupted submissions) before refusing to run beside another launcher."""


@dataclass
class CellStatus:
    """Where one cell stands: ``status`` is done | running | pending | unknown (SLURM did not
    answer about its job) | failed | cancelled | partial (some architectures' records missing) |
    corrupt (a record or the synthetic set is unreadable or does not match its checksum) |
    missing."""

    cell: Cell
    status: str
    job_id: Optional[str] = None
    job_state: Optional[str] = None
    log_path: Optional[str] = None
    error: Optional[str] = None
    missing_archs: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    """What one launcher run did (counts of cells) and every cell's status afterwards."""

    skipped: int = 0
    submitted: int = 0
    reattached: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    held: int = 0
    still_running: int = 0
    stages_submitted: int = 0
    stages_reattached: int = 0
    stages_done: int = 0
    stages_failed: int = 0
    statuses: list[CellStatus] = field(default_factory=list)


def _tracker(store: Store, info: Mapping[str, Any]) -> Optional[Executor]:
    """The executor that follows a recorded job (None for an executor this code does not know)."""
    name = str(info.get("executor"))
    return executor_for(name, store) if name in EXECUTORS else None


def is_active(store: Store, info: Optional[Mapping[str, Any]],
              states: Optional[Mapping[str, str]] = None) -> tuple[bool, str]:
    """(still queued or running?, state) for a recorded job (None: nothing recorded)."""
    if not info or info.get("state") == "CANCELLED_BY_USER":
        return False, "NONE"
    tracker = _tracker(store, info)
    if tracker is None:
        return False, "FINISHED"
    return tracker.is_active(info, states)


def prefetch_states(store: Store, cells: Iterable[Cell]) -> dict[str, str]:
    """SLURM states of the recorded jobs of every unfinished cell, in two client calls."""
    ids = []
    for cell in cells:
        info = store.read_job(cell.cell_id)
        if info and info.get("executor") == SlurmExecutor.name and store.missing_archs(cell.cell_id,
                                                                                      list(cell.eval_archs)):
            ids.append(str(info.get("job_id")))
    return slurm_client.slurm_states(ids)


def cell_status(store: Store, cell: Cell, *, query: bool = True,
                states: Optional[Mapping[str, str]] = None) -> CellStatus:
    """The status of one cell from its records, recorded job and failure (``query``: ask the
    executor whether the recorded job is still active). A job that ended in a failed state
    without leaving a failure file (e.g. it could not write to the store) is shown as failed
    with SLURM's state."""
    missing = store.missing_archs(cell.cell_id, list(cell.eval_archs))
    info = store.read_job(cell.cell_id)
    job_id = None if not info else str(info.get("job_id"))
    log_path = None if not info else info.get("log_path")
    if not missing:
        return CellStatus(cell, "done", job_id, info.get("state") if info else None, log_path)
    state = info.get("state") if info else None
    if info and query:
        active, state = is_active(store, info, states)
        if active:
            kind = ("unknown" if state == slurm_client.UNREACHABLE
                    else "pending" if state in slurm_client.WAITING_STATES else "running")
            return CellStatus(cell, kind, job_id, state, log_path, missing_archs=missing)
    if info and info.get("state") == "CANCELLED_BY_USER":
        return CellStatus(cell, "cancelled", job_id, "CANCELLED", log_path, missing_archs=missing)
    corrupt = store.corrupt_records(cell.cell_id)
    if corrupt:
        return CellStatus(cell, "corrupt", job_id, state, log_path,
                          f"unreadable record(s): {', '.join(str(p) for p in corrupt)}", missing)
    failure = store.read_failure(cell.cell_id)
    if failure is not None:
        return CellStatus(cell, "failed", failure.get("job_id") or job_id, state,
                          failure.get("log_path") or log_path, failure.get("error"), missing)
    if info and state in slurm_client.TERMINAL_FAILURES:
        kind = "cancelled" if state in ("CANCELLED", slurm_client.GONE) else "failed"
        return CellStatus(cell, kind, job_id, state, log_path,
                          f"job {job_id} ended {state} (SLURM) without writing its records or a failure "
                          f"file: is {store.root} writable and not full? see its log", missing)
    partial = len(missing) < len(cell.eval_archs)
    return CellStatus(cell, "partial" if partial else "missing", job_id, state, log_path, missing_archs=missing)


def try_recover(store: Store, log: Callable[[str], None] = log_line) -> Optional[Recovery]:
    """Resolve interrupted submissions unless a launcher holds the store (it does so itself);
    None when it was left to that launcher."""
    try:
        with store.launcher_lock():
            return recover_submissions(store, log)
    except (UserError, OSError):  # another launcher holds the store, or it cannot even be locked
        return None


def store_status(store: Store, *, query: bool = True, recover: bool = True) -> list[CellStatus]:
    """Every cell's status (``query``: ask SLURM, and with ``recover`` first resolve
    interrupted submissions unless a launcher works on the store)."""
    _, raw = store.read_cells()
    if query and recover:
        try_recover(store)
    cells = [Cell.from_json(c) for c in raw]
    states = prefetch_states(store, cells) if query else None
    return [cell_status(store, c, query=query, states=states) for c in cells]


def plan(store: Store, sweep: Sweep, *, force: bool = False, recovery: Optional[Recovery] = None,
         log: Callable[[str], None] = log_line) -> tuple[list[Cell], list[tuple[Cell, dict]], list[Work]]:
    """Split the sweep's cells into (finished, still recorded as active, to submit). With
    ``force`` every cell without an active job is to submit, with all its architectures.
    Cells of an interrupted submission SLURM could not be asked about (``recovery.held``;
    ``recovery`` None: resolved here) are in none of the three: they are not submitted."""
    if recovery is None:
        recovery = recover_submissions(store, log)
    finished, active, todo = [], [], []
    states = prefetch_states(store, sweep.cells) if not force else None
    for cell in sweep.cells:
        if cell.cell_id in recovery.held:
            continue
        info = store.read_job(cell.cell_id)
        if force:
            running, _ = is_active(store, info)
            if running:
                active.append((cell, info))
            else:
                todo.append((cell, list(cell.eval_archs)))
            continue
        missing = store.missing_archs(cell.cell_id, list(cell.eval_archs))
        problem = None if cell.is_whole else store.synset_problem(
            cell.cell_id, needed=len(missing) < len(cell.eval_archs))
        if not missing and problem is None:
            finished.append(cell)
            continue
        running, _ = is_active(store, info, states)
        if running:
            active.append((cell, info))
            continue
        if problem is not None:
            log(f"cell {cell.cell_id} ({cell.describe()}): its stored synthetic set is corrupt ({problem}); "
                "recomputing the cell")
            store.delete_cell_results(cell.cell_id)
            missing = list(cell.eval_archs)
        todo.append((cell, missing))
    return finished, active, todo


def run_sweep(sweep: Sweep, options: RunOptions, *, log: Callable[[str], None] = log_line) -> RunSummary:
    """Run (or resume) a validated sweep into its store and follow its jobs until they end
    (unless the executor does not follow them: ``slurm`` with ``options.wait`` False).

    One launcher at a time per store (:meth:`benchmarks.store.Store.launcher_lock`; a second
    gets a :class:`UserError`). A store that cannot be created or written at the start is a
    :class:`UserError` naming the folder, the error and what to do; a write that fails later
    (disk full, made read-only) is one log line, and the launcher keeps following the other
    cells."""
    store = Store(sweep.output)
    executor = executor_for(options.executor, store, options)
    try:
        lock = store.launcher_lock(wait_s=LOCK_WAIT_S)
        lock.__enter__()
    except OSError as exc:
        raise UserError(write_problem(exc, store.root, "--output")) from None
    try:
        return _run_locked(store, executor, sweep, options, log)
    finally:
        lock.__exit__(None, None, None)


def _run_locked(store: Store, executor: Executor, sweep: Sweep, options: RunOptions,
                log: Callable[[str], None]) -> RunSummary:
    try:
        store.init(sweep.name, sweep.spec_text, [c.to_json() for c in sweep.cells])
    except OSError as exc:
        raise UserError(write_problem(exc, store.root, "--output")) from None
    recovery = recover_submissions(store, log)
    finished, active, todo = plan(store, sweep, force=options.force, recovery=recovery, log=log)
    summary = RunSummary(skipped=len(finished), held=len(recovery.held & {c.cell_id for c in sweep.cells}))
    try:
        if options.force:
            for cell, _ in todo:
                store.delete_cell_results(cell.cell_id)
        for cell, _ in todo:
            store.clear_failure(cell.cell_id)
    except OSError as exc:
        raise UserError(write_problem(exc, store.root, "--output")) from None
    log(f"sweep '{sweep.name}': {len(sweep.cells)} cells -> {len(finished)} finished (skipped), "
        f"{len(active) if executor.reattaches else 0} already queued/running (re-attached), "
        f"{len(todo)} to run [{executor.name}]" + (f", {summary.held} held back" if summary.held else ""))

    in_flight: list[Submitted] = []
    if executor.reattaches:
        for cell, info in active:
            tracker = _tracker(store, info)
            if tracker is not None:
                in_flight.append(tracker.reattach(cell, info))
    summary.reattached = len(in_flight)
    stage_flight, blocked, after, held_cells = _start_stages(store, executor, sweep.name, todo, recovery, summary, log)
    summary.held += len(held_cells)
    queue = [w for w in todo if w[0].cell_id not in held_cells
             and (executor.dependencies or not any(w in ws for ws in blocked.values()))]
    total = len(in_flight) + len(queue) + (0 if executor.dependencies else sum(len(ws) for ws in blocked.values()))
    last_report = 0.0
    while True:
        for st in list(stage_flight):
            tracker = executor if st.executor == executor.name else executor_for(st.executor, store)
            if not tracker.finished(st):
                continue
            stage_flight.remove(st)
            waiting = _settle_stage(store, tracker, st, blocked.pop(st.track_id, []), summary, log,
                                    submitted=executor.dependencies)
            if not executor.dependencies:
                queue += waiting
        room = executor.capacity(in_flight)
        take = queue if room is None else queue[:room]
        if take:
            try:
                in_flight += executor.submit(sweep.name, take, log, after=after)
                summary.submitted += len(take)
            except OSError as exc:  # the store stopped accepting writes: submit nothing more
                log(f"{len(queue)} cell(s) not submitted: {write_problem(exc, store.root, '--output')}")
                total -= len(queue)
                take = queue
            queue = queue[len(take):]
        if not executor.follows:
            summary.still_running = len(in_flight)
            summary.statuses = store_status(store, recover=False)
            return summary
        for s in list(in_flight):
            tracker = executor if s.executor == executor.name else executor_for(s.executor, store)
            if not tracker.finished(s):
                continue
            in_flight.remove(s)
            try:
                outcome = tracker.settle(s)
            except OSError as exc:
                summary.failed += 1
                log(f"cell {s.cell.cell_id} ({s.cell.describe()}): job {s.job_id} ended, its outcome cannot "
                    f"be written: {write_problem(exc, store.root, '--output')}")
                continue
            if outcome == "done":
                summary.done += 1
                log(f"cell {s.cell.cell_id} ({s.cell.describe()}) done: {_accuracy_note(store, s.cell)}")
            elif outcome == "cancelled":
                summary.cancelled += 1
                log(f"cell {s.cell.cell_id} ({s.cell.describe()}) cancelled (job {s.job_id})")
            else:
                summary.failed += 1
                fail = store.read_failure(s.cell.cell_id) or {}
                log(f"cell {s.cell.cell_id} ({s.cell.describe()}) FAILED: {one_line(fail.get('error'))} "
                    f"(log: {fail.get('log_path')})")
        now = time.monotonic()
        if now - last_report > PROGRESS_EVERY_S or not (in_flight or queue or stage_flight):
            ended = summary.done + summary.failed + summary.cancelled
            log(f"progress: {ended}/{total} finished ({summary.done} done, {summary.failed} failed"
                + (f", {summary.cancelled} cancelled" if summary.cancelled else "")
                + f"), {len(in_flight)} in flight, {len(queue)} waiting"
                + (f", {len(stage_flight)} expert stage(s) running" if stage_flight else ""))
            last_report = now
        if not (in_flight or queue or stage_flight):
            break
        time.sleep(options.poll_s)
    summary.statuses = store_status(store, query=False)
    return summary


def _accuracy_note(store: Store, cell: Cell) -> str:
    """``ConvNet 89.4 ± 0.3 % (3 nets)`` for each record of a finished cell (what a user
    watching a sweep wants to see as each cell ends)."""
    import statistics

    parts = []
    for arch in cell.eval_archs:
        rec = read_json(store.record_path(cell.cell_id, arch))
        accs = rec.get("accuracies") if isinstance(rec, dict) else None
        if not accs:
            continue
        spread = f" ± {100 * statistics.pstdev(accs):.1f}" if len(accs) > 1 else ""
        parts.append(f"{arch} {100 * statistics.fmean(accs):.1f}{spread} % ({len(accs)} nets)")
    return ", ".join(parts) or "records written"


def _start_stages(store: Store, executor: Executor, sweep_name: str, todo: list[Work], recovery: Recovery,
                  summary: RunSummary, log: Callable[[str], None]
                  ) -> tuple[list[Submitted], dict[str, list[Work]], dict[str, list[str]], set[str]]:
    """Submit (or re-attach) the expert stages the cells ``todo`` need and whose experts are
    not all stored. Returns (stage jobs to follow, stage id -> cells that wait for it (in the
    launcher, or on SLURM through their dependency), cell id -> stage job ids its SLURM job
    depends on, cells held back because their stage's submission could not be resolved)."""
    stages, needs = stages_for(cell for cell, _ in todo)
    flight: dict[str, Submitted] = {}
    held: set[str] = set()
    start: list[ExpertStage] = []
    for st in stages:
        if st.is_done(store.experts_root):
            continue
        if st.stage_id in recovery.held:
            held.add(st.stage_id)
            continue
        info = store.read_job(st.stage_id)
        running, state = is_active(store, info)
        if running:
            tracker = _tracker(store, info)
            if executor.reattaches and tracker is not None:
                flight[st.stage_id] = tracker.reattach_stage(st, info)  # type: ignore[arg-type]
                summary.stages_reattached += 1
                log(f"{st.describe()}: job {info['job_id']} already {state} (re-attached)")  # type: ignore[index]
            else:
                held.add(st.stage_id)
                log(f"{st.describe()}: job {info['job_id']} of another launcher is {state}; its cells wait "  # type: ignore[index]
                    f"for a run after it ended")
            continue
        store.clear_failure(st.stage_id)
        start.append(st)
    if start:
        log(f"{len(start)} expert stage(s) to run: " + "; ".join(st.describe() for st in start))
        for s in executor.submit_stages(sweep_name, start, log):
            flight[s.track_id] = s
        summary.stages_submitted += len(start)
    blocked: dict[str, list[Work]] = {}
    after: dict[str, list[str]] = {}
    held_cells: set[str] = set()
    for work in todo:
        sid = needs.get(work[0].cell_id)
        if sid is None:
            continue
        if sid in held:
            held_cells.add(work[0].cell_id)
        elif sid in flight:
            blocked.setdefault(sid, []).append(work)
            if executor.dependencies:
                after[work[0].cell_id] = [flight[sid].job_id]
    if held_cells:
        log(f"{len(held_cells)} cell(s) held back until their expert stage's job can be followed")
    return list(flight.values()), blocked, after, held_cells


def _settle_stage(store: Store, tracker: Executor, s: Submitted, waiting: list[Work], summary: RunSummary,
                  log: Callable[[str], None], *, submitted: bool = False) -> list[Work]:
    """Settle a stage's ended job; returns the cells that waited for it and may run now (none
    when it failed: each gets a failure naming the stage). ``submitted``: the waiting cells'
    jobs were submitted with a dependency on the stage (SLURM, which cancels them when it
    failed; they are counted when their jobs settle)."""
    stage = s.stage
    assert stage is not None
    try:
        outcome = tracker.settle_stage(s)
    except OSError as exc:
        outcome = "failed"
        log(f"{stage.describe()}: job {s.job_id} ended, its outcome cannot be written: "
            f"{write_problem(exc, store.root, '--output')}")
    if outcome == "done":
        summary.stages_done += 1
        log(f"{stage.describe()}: done (job {s.job_id})" + (f"; {len(waiting)} cell(s) can run" if waiting else ""))
        return waiting
    summary.stages_failed += 1
    fail = store.read_failure(stage.stage_id) or {}
    why = one_line(fail.get("error")) or outcome
    log(f"{stage.describe()} {outcome.upper()} (job {s.job_id}): {why}"
        + (f"; SLURM cancels the {len(waiting)} cell(s) that depend on it" if submitted and waiting else
           f"; its {len(waiting)} waiting cell(s) fail" if waiting else ""))
    for cell, _ in waiting:
        if not submitted:
            summary.failed += 1
        try:
            store.write_failure(cell.cell_id, f"its expert stage {stage.stage_id} ({stage.describe()}) {outcome}: "
                                f"{why}; rerun the sweep to retry the stage", "", fail.get("log_path"), s.job_id)
        except OSError:
            pass
    return []


def stage_statuses(store: Store, cells: Iterable[Cell]) -> list[tuple[ExpertStage, str, Optional[dict]]]:
    """(stage, done | partial | missing, its recorded job) of every expert stage ``cells`` need."""
    stages, _ = stages_for(cells)
    return [(st, st.status(store.experts_root), store.read_job(st.stage_id)) for st in stages]


def one_line(text: Any) -> str:
    """The last non-empty line of an error text (its cause), whole."""
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def verify_store(store: Store) -> tuple[list[str], list[str]]:
    """(problems, notes) of a consistency check of a results store: every record file parses,
    every stored synthetic set matches the size and checksum written with it and loads, every
    done cell has both its records and (unless it is ``whole``) its set. Notes: leftover temp
    files of killed writers (harmless; safe to delete) and interrupted submissions."""
    from methods.errors import SyntheticSetFormatError
    from methods.synset import SyntheticSet

    problems: list[str] = [f"unreadable record {p}" for p in store.corrupt_records()]
    notes: list[str] = []
    _, raw = store.read_cells()
    cells = [Cell.from_json(c) for c in raw]
    synsets = store.root / "synsets"
    for path in sorted(synsets.glob("*.pt")) if synsets.is_dir() else []:
        problem = store.synset_problem(path.stem)
        if problem is None:
            try:
                SyntheticSet.load(path)
            except SyntheticSetFormatError as exc:
                problem = str(exc)
        if problem is not None:
            problems.append(f"corrupt synthetic set: {problem}")
    for cell in cells:
        done = not store.missing_archs(cell.cell_id, list(cell.eval_archs))
        if done and not cell.is_whole and not store.synset_path(cell.cell_id).is_file():
            problems.append(f"cell {cell.cell_id} ({cell.describe()}) has its records but no synthetic set "
                            f"{store.synset_path(cell.cell_id)}")
    leftovers = sorted(p for p in store.root.rglob(".*.tmp") if "logs" not in p.relative_to(store.root).parts)
    notes += [f"leftover temp file of a killed writer (safe to delete): {p}" for p in leftovers]
    notes += [f"interrupted submission '{n['job_name']}' not resolved yet (the next run or status resolves it)"
              for n in store.pending_submissions()]
    return problems, notes


def cancel_store(store: Store, log: Callable[[str], None] = log_line) -> list[str]:
    """Cancel every recorded, still active job of a store; returns the cancelled job ids."""
    try_recover(store, log)
    _, cells = store.read_cells()
    cancelled = []
    for c in cells:
        info = store.read_job(c["cell_id"])
        active, state = is_active(store, info)
        if not active or not info:
            continue
        tracker = _tracker(store, info)
        if tracker is None or not tracker.cancel(info):
            continue
        job_id = str(info["job_id"])
        store.update_job_state(c["cell_id"], "CANCELLED_BY_USER")
        cancelled.append(job_id)
        log(f"cancelled job {job_id} of cell {c['cell_id']} (was {state})")
    for path in sorted((store.root / "jobs").glob(f"{STAGE_PREFIX}*.json")):
        info = store.read_job(path.stem)
        active, state = is_active(store, info)
        tracker = _tracker(store, info) if info else None
        if not active or tracker is None or not tracker.cancel(info):  # type: ignore[arg-type]
            continue
        store.update_job_state(path.stem, "CANCELLED_BY_USER")
        cancelled.append(str(info["job_id"]))  # type: ignore[index]
        log(f"cancelled job {info['job_id']} of expert stage {path.stem} (was {state})")  # type: ignore[index]
    return cancelled
