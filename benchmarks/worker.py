"""The cell worker: what one sweep job runs, in whichever executor it was sent to.

:class:`CellJob` is a :class:`submitit.helpers.Checkpointable`: it condenses one cell (or reuses
the cell's stored synthetic set), evaluates it on every architecture that has no record yet, and
writes one record per architecture into the results store (:func:`run_cell`). The condensation
checkpoints its loop state to ``<out>/checkpoints/<cell_id>.pt`` every ``checkpoint_every``
iterations. When SLURM announces a preemption or the time limit (submitit's ``USR2`` signal),
submitit calls :meth:`CellJob.checkpoint`, which saves the *latest* consistent loop snapshot
(``RunContext.save_latest``: the state after the last finished iteration) and hands submitit a
copy of the job to requeue. The requeued job loads the checkpoint and continues at the next
iteration; because every random draw comes from generators whose state is in the checkpoint,
its final synthetic set equals an uninterrupted run's (on CPU; GPU kernels may differ in the
last bits). A cell that raises writes ``failures/<cell_id>.json`` (error, traceback, log path,
job id) and re-raises, so SLURM marks the job failed; the other cells are unaffected. When the
store cannot take even that file (read-only, full), the job prints the failure as one line to
its log (stderr) and SLURM's state shows it (``benchmarks status``).

The synthetic set is written with its size and SHA-256 (``synsets/<cell_id>.json``); a stored
set that does not match them, or does not load, is recomputed (with a log line) and the cell
re-evaluated on every architecture.

A cell with ``snapshots`` (iteration counts) keeps the loop state after each of them in
``<out>/snapshots/<cell_id>/it<N:06d>.pt`` while it condenses; once the cell's records are
written, every kept state of the cell without a curve record is evaluated like the final set
(same plan, networks and architectures) and written to ``<out>/curves/`` as soon as it is done
(:func:`benchmarks.curves.evaluate_kept_states`). A job stopped during that step leaves a done
cell; ``python -m benchmarks curve STORE`` evaluates the points still missing.

Trajectory matching (MTT, DATM) reads its expert trajectories from the store's ``experts/``
folder (:attr:`benchmarks.store.Store.experts_root`), which the sweep's expert stage filled
before the cell started (:mod:`benchmarks.stages`).
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import time
import traceback as _traceback
from typing import Any, Callable, Mapping, Optional, Sequence

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from benchmarks.record import Record, as_plan_dict, dataset_fields, method_fields, plan_from_result
from benchmarks.storage import disk_cache, exclusive_lock
from benchmarks.store import Store, code_version
from benchmarks.sweep import Cell, WHOLE


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def configure_job_logging() -> None:
    """In a job process whose logging nobody configured, send INFO records (the evaluation's
    per-network lines and heartbeats, data loading) to stdout in ``_log``'s format, so a job
    log shows progress during minutes of evaluation. Does nothing where the root logger already
    has a handler (the CLI's, pytest's), e.g. cells run in the launcher's own process."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(lambda record: not record.name.startswith("submitit"))  # it prints its own
    root.addHandler(handler)
    root.setLevel(logging.INFO)


class CellJob(Checkpointable):
    """Condense + evaluate one cell into the store (picklable; see module doc)."""

    def __init__(
        self,
        store_root: str,
        cell: Mapping[str, Any],
        *,
        sweep_name: str,
        archs: Sequence[str],
        data_root: str,
        device: str = "auto",
        download: bool = False,
        checkpoint_every: int = 10,
        progress: bool = False,
        compile: str = "off",
        threads: Optional[int] = None,
    ) -> None:
        self.store_root = str(store_root)
        self.cell = dict(cell)
        self.sweep_name = sweep_name
        self.archs = list(archs)
        self.data_root = str(data_root)
        self.device = device
        self.download = download
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.compile = compile
        self.threads = threads  # torch threads of the job's process (None: torch's default)
        self._context = None  # live RunContext while condensing (not pickled)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_context"] = None
        return state

    def __call__(self) -> dict[str, Any]:
        configure_job_logging()
        if getattr(self, "threads", None):
            import torch

            torch.set_num_threads(int(self.threads))
        store = Store(self.store_root)
        cell = Cell.from_json(self.cell)
        try:
            return run_cell(store, cell, self.archs, sweep_name=self.sweep_name, data_root=self.data_root,
                            device=self.device, download=self.download,
                            checkpoint_every=self.checkpoint_every, progress=self.progress,
                            on_context=self._set_context, compile=getattr(self, "compile", "off"))
        except Exception as exc:
            log_path, job_id = _job_log_and_id()
            error = f"{type(exc).__name__}: {exc}"
            try:
                store.write_failure(cell.cell_id, error, _traceback.format_exc(), log_path, job_id)
            except OSError as write_exc:
                from benchmarks.storage import write_problem

                print(f"cell {cell.cell_id} failed ({error.splitlines()[0] if error else ''}) and its failure "
                      f"could not be recorded: {write_problem(write_exc, store.root, '--output')}",
                      file=sys.stderr, flush=True)
            raise
        finally:
            self._context = None

    def _set_context(self, context: Any) -> None:
        self._context = context

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on the preemption/timeout signal: persist the latest loop state,
        then requeue a copy of this job (which resumes from the checkpoint file)."""
        context = self._context
        if context is not None:
            saved = context.save_latest()
            _log(f"checkpoint on signal: {'saved latest loop state' if saved else 'no state yet'}")
        return DelayedSubmission(self)  # pickled without the live context (__getstate__)


def _job_log_and_id() -> tuple[Optional[str], Optional[str]]:
    try:
        env = submitit.JobEnvironment()
        return str(env.paths.stdout), str(env.job_id)
    except Exception:  # not inside a submitit job (debug executor)
        return None, None


def run_cell(
    store: Store,
    cell: Cell,
    archs: Sequence[str],
    *,
    sweep_name: str,
    data_root: str,
    device: str = "auto",
    download: bool = False,
    checkpoint_every: int = 10,
    progress: bool = False,
    on_context: Optional[Callable[[Any], None]] = None,
    compile: str = "off",
) -> dict[str, Any]:
    """Condense (or reuse the stored synset) and write one record per missing architecture.
    ``compile`` is the mode of the compiled hot paths of condensation and evaluation."""
    from benchmarks.data import load_dataset
    from benchmarks.evaluate import evaluate_synset, evaluate_whole_dataset
    from benchmarks.pipeline import resolve_device, run_condense
    from methods.synset import SyntheticSet

    dev = resolve_device(device)
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    import torch

    _log(f"cell {cell.cell_id}: {cell.describe()} on {dev} (archs: {', '.join(archs)}"
         + (f"; {torch.get_num_threads()} thread(s)" if dev.type == "cpu" else "")
         + (f"; CUDA_VISIBLE_DEVICES={gpus})" if gpus is not None else ")"))
    dataset = load_dataset(cell.dataset, data_root=data_root, device=dev, download=download)
    synset = None
    condense_cost: dict[str, Any] = {}
    method_config: dict[str, Any] = {}
    if cell.method != WHOLE:
        from benchmarks.storage import atomic_write_bytes
        from methods.errors import SyntheticSetFormatError

        path = store.synset_path(cell.cell_id)
        if path.is_file():
            problem = store.synset_problem(cell.cell_id)
            if problem is None:
                try:
                    synset = SyntheticSet.load(path)
                    _log(f"reusing stored synthetic set {path}")
                except SyntheticSetFormatError as exc:
                    problem = str(exc)
            if problem is not None:
                _log(f"stored synthetic set of cell {cell.cell_id} is corrupt ({problem}); recomputing it "
                     "and re-evaluating every architecture")
                store.delete_cell_results(cell.cell_id)
                archs = list(cell.eval_archs)
        reused_from = None
        if synset is None:
            # one condensation per set: a cell whose set another cell makes too (only the
            # evaluation differs) waits for it and copies its set instead of condensing again
            with exclusive_lock(store.set_lock_path(cell.set_key()), f"the synthetic set of {cell.describe()}"):
                synset, reused_from = _sibling_set(store, cell)
                if synset is None:
                    extra = {}
                    if on_context is not None and "on_context" in inspect.signature(run_condense).parameters:
                        extra["on_context"] = on_context
                    synset = run_condense(
                        cell.method, dict(cell.overrides), dataset, cell.ipc, cell.seed, device=dev,
                        iterations=cell.iterations, checkpoint_path=store.checkpoint_path(cell.cell_id),
                        checkpoint_every=checkpoint_every, cache_dir=store.cache_dir, progress=progress,
                        log=_log, experts_root=store.experts_root, compile=compile,
                        keep_at=cell.snapshots, keep_dir=store.snapshot_dir(cell.cell_id), **extra,
                    )
                    atomic_write_bytes(path, synset.to_bytes())
                else:
                    _log(f"reusing the synthetic set of cell {reused_from} (the same method, overrides, seed and "
                         "budget; only the evaluation differs)")
                    atomic_write_bytes(path, store.synset_path(reused_from).read_bytes())
                store.write_synset_digest(cell.cell_id)
                store.checkpoint_path(cell.cell_id).unlink(missing_ok=True)
        method_config = dict(synset.config)
        condense_cost = {
            "condense_wall_time_s": synset.cost.get("wall_time_s"),
            "condense_peak_memory_mb": synset.cost.get("peak_memory_mb"),
        }
        condense_cost.update({k: v for k, v in synset.cost.items() if k not in ("wall_time_s", "peak_memory_mb")})
        if reused_from is not None:
            condense_cost["set_reused_from"] = reused_from  # the cost is that cell's, paid once
    if synset is not None and synset.evaluation_problem() is not None:
        from methods.errors import SyntheticSetFormatError

        raise SyntheticSetFormatError(f"the synthetic set of cell {cell.cell_id} cannot be evaluated: "
                                      f"{synset.evaluation_problem()}")
    plan_overrides = dict(cell.eval) or None  # the sweep's evaluation-plan overrides
    meta = method_fields(cell.method, dict(cell.overrides), method_config if synset is not None else None)
    meta.update(dataset_fields(cell.dataset))
    written = []
    for arch in archs:
        if store.has_record(cell.cell_id, arch):
            continue
        if synset is None:
            kwargs = {} if cell.eval_epochs is None else {"epochs": cell.eval_epochs}
            res = evaluate_whole_dataset(dataset, arch, num_eval=cell.num_eval, seed=cell.seed,
                                         plan_overrides=plan_overrides, device=dev, progress=progress,
                                         compile=compile, **kwargs)
        else:
            res = evaluate_synset(synset, dataset, arch, num_eval=cell.num_eval, epochs=cell.eval_epochs,
                                  plan_overrides=plan_overrides, seed=cell.seed, device=dev,
                                  progress=progress, cache=disk_cache(store.cache_dir), compile=compile)
        store.write_record(cell_record(
            cell, res, sweep_name=sweep_name, method_config=method_config, meta=meta, condense_cost=condense_cost,
            synset_path=None if synset is None else store.synset_relpath(cell.cell_id)))
        written.append(arch)
        mean = sum(res.accuracies) / max(1, len(res.accuracies))
        _log(f"cell {cell.cell_id} on {res.arch}: mean accuracy {100 * mean:.2f}% over {res.num_eval} nets")
    if synset is not None:
        from benchmarks.curves import evaluate_kept_states

        evaluate_kept_states(store, cell, synset, dataset, sweep_name=sweep_name, device=dev, progress=progress,
                             compile=compile, log=_log)
    store.clear_failure(cell.cell_id)
    return {"cell_id": cell.cell_id, "archs_written": written}


def _sibling_set(store: Store, cell: Cell) -> tuple[Any, Optional[str]]:
    """The sound stored set of another cell of the store with the same
    :meth:`~benchmarks.cells.Cell.set_key` (and that cell's id), else (None, None)."""
    from methods.errors import SyntheticSetFormatError
    from methods.synset import SyntheticSet

    try:
        _, raw = store.read_cells()
    except Exception:  # no cells.json (a hand-made store): nothing to share
        return None, None
    key = cell.set_key()
    for other in raw:
        other_id = other.get("cell_id")
        if other_id == cell.cell_id or not store.synset_path(other_id).is_file():
            continue
        try:
            if Cell.from_json(other).set_key() != key or store.synset_problem(other_id) is not None:
                continue
            return SyntheticSet.load(store.synset_path(other_id)), other_id
        except (KeyError, TypeError, ValueError, SyntheticSetFormatError):
            continue
    return None, None


def cell_record(
    cell: Cell,
    res: Any,
    *,
    sweep_name: str,
    method_config: Mapping[str, Any],
    meta: Mapping[str, Any],
    condense_cost: Mapping[str, Any],
    synset_path: Optional[str],
    iterations: Optional[int] = None,
    status: str = "done",
) -> Record:
    """The :class:`Record` of ``cell`` evaluated as ``res`` (a
    :class:`benchmarks.evaluate.EvalResult`): the cell's fields, the executed plan, the
    accuracies and the cost (``condense_cost`` plus the evaluation's times). ``iterations``
    and ``status`` default to the cell's budget and ``done``; a learning-curve point passes
    its iteration count and ``curve`` (:mod:`benchmarks.curves`). ``meta``:
    :func:`benchmarks.record.method_fields` + :func:`benchmarks.record.dataset_fields`."""
    cost = dict(condense_cost)
    cost.update({
        "eval_wall_time_s": res.wall_time_s, "eval_peak_memory_mb": res.peak_memory_mb,
        "eval_train_time_s": res.train_time_s, "eval_test_time_s": res.test_time_s,
    })
    plan = as_plan_dict(res.plan) or plan_from_result(res.epochs, res.augmentation)
    selected = None if res.selected_epochs is None else tuple(int(e) for e in res.selected_epochs)
    return Record(
        cell_id=cell.cell_id, sweep=sweep_name, dataset=cell.dataset, ipc=cell.ipc,
        method=cell.method, label=cell.label, overrides=dict(cell.overrides),
        method_config=dict(method_config), iterations=cell.iterations if iterations is None else int(iterations),
        seed=cell.seed, train_arch=cell.train_arch, eval_arch=res.arch, num_eval=res.num_eval,
        eval_epochs=res.epochs, eval_augmentation=None if res.augmentation is None else str(res.augmentation),
        eval_plan=plan, labels=res.labels, selected_epochs=selected,
        accuracies=tuple(float(a) for a in res.accuracies), cost=cost, synset_path=synset_path,
        code_version=code_version(), host=socket.gethostname(), device=str(res.device), status=status, **meta,
    )
