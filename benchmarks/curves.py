"""Learning curves: the accuracy of one run's synthetic set at a few of its iterations.

A method run below its paper's budget says little by its final number alone; the trend of one
run toward the published number says more (issue 15). A sweep entry's ``snapshots: [10, 50,
200]`` makes each of its runs keep its loop state after those iterations
(:attr:`methods.context.RunContext.keep_at`), in

    <out>/snapshots/<cell_id>/it<N:06d>.pt

-- each the dict of :meth:`methods.loop.LoopState.snapshot` exactly as the cell's checkpoint
file ``<out>/checkpoints/<cell_id>.pt`` holds it (``iteration`` = N iterations done,
``images``, ``tensors``, ``counters``, ``identity``, ...), so a copy of that checkpoint made by
hand at iteration N is a kept state too. Each kept state is evaluated exactly like the cell's
final set (the same evaluation plan and plan overrides, evaluation epochs, number of networks,
network seeds and architectures) and written as a learning-curve record

    <out>/curves/<cell_id>__<arch>__it<N:06d>.json

a :class:`benchmarks.record.Record` like the cell's records (same writer, same fields) with
``iterations`` = N and ``status`` = ``"curve"``; its cost has the wall time of the condensation
up to N (``condense_wall_time_s``, from the state's ``elapsed_s``), the method's counters at N
and the evaluation's times (``condense_peak_memory_mb`` is None: not measured at N). The last
point of a curve is the cell's own record in ``records/``.

**The set at iteration N** (:func:`set_at`) is the cell's final :class:`SyntheticSet` with
its ``images`` replaced by the state's ``images``, and, when the final set stores them, its
learned learning rate by the state's ``tensors["syn_lr"]`` and its soft labels by the state's
``tensors["label_logits"]`` (MTT/DATM's learned tensors, :data:`KEPT_TENSORS`). Everything
else -- labels, evaluation plan, ZCA whitening (the images of a ZCA run are kept whitened),
normalisation, config -- is the final set's. A state whose method, seed, IPC, data, image shape
or iteration count does not match the cell is skipped with a one-line reason, as is a final set
with a learned tensor the state lacks (the point would mix iterations).

The sweep worker evaluates a cell's kept states right after its records
(:func:`benchmarks.worker.run_cell`); ``python -m benchmarks curve STORE`` (:func:`run_curves`)
evaluates those of a store's cells that have a final set and lack curve records -- points
left by an interrupted job, or states copied by hand. Both skip points already written, and
write each point as soon as it is computed.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional, Sequence

from benchmarks import UserError
from benchmarks.cells import Cell
from benchmarks.store import Store

CURVE_STATUS = "curve"
"""``status`` of a learning-curve record (a cell's own records say ``done``)."""

KEPT_TENSORS = {"syn_lr": "learned_lr", "label_logits": "soft_labels"}
"""Learned tensors of a loop state (``state["tensors"]`` key) -> the :class:`SyntheticSet`
field they become (MTT/DATM: the learned lr and the soft-label logits)."""


class CurveError(UserError):
    """A kept state that cannot be made into a point of its cell's curve."""


@dataclass
class CurveSummary:
    """What one evaluation pass did: ``written`` (iteration, arch, mean accuracy) points,
    ``skipped`` one-line reasons for kept states that could not be evaluated."""

    written: list[tuple[int, str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def load_kept_state(path: Any) -> dict[str, Any]:
    """The kept loop state in ``path`` (CPU tensors, ``weights_only``); :class:`CurveError`
    when it is unreadable or no loop state."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, not a torch file
        first = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise CurveError(f"kept state {path} is unreadable ({type(exc).__name__}: {first}); delete it") from None
    if not isinstance(state, dict) or not isinstance(state.get("iteration"), int) \
            or not isinstance(state.get("images"), torch.Tensor):
        raise CurveError(f"kept state {path} is no loop state (it needs 'iteration' and 'images'); delete it")
    return state


def set_at(final: Any, state: Mapping[str, Any], *, source: str = "<state>") -> Any:
    """The synthetic set at the state's iteration: ``final`` (the cell's
    :class:`~methods.synset.SyntheticSet`) with the state's images and learned tensors (module
    doc); :class:`CurveError` naming ``source`` when the state belongs to another run."""
    import torch

    identity = state.get("identity") or {}
    for key, ours in (("method", final.method), ("seed", int(final.seed)), ("ipc", int(final.ipc))):
        theirs = identity.get(key)
        if theirs is not None and theirs != ours:
            raise CurveError(f"kept state {source} belongs to another run ({key} {theirs!r}, the cell's set has "
                             f"{ours!r}); delete it")
    data, ours = state.get("dataset_fingerprint"), final.extra.get("dataset_fingerprint")
    if data is not None and ours is not None and data != ours:
        raise CurveError(f"kept state {source} was condensed from other data ({data}, the cell's set from {ours}); "
                         "delete it")
    images = state["images"]
    if tuple(images.shape) != tuple(final.images.shape):
        raise CurveError(f"kept state {source} holds images of shape {tuple(images.shape)}, the cell's set "
                         f"{tuple(final.images.shape)}; delete it")
    changes: dict[str, Any] = {"images": images.detach().cpu().to(final.images.dtype).clone()}
    tensors = state.get("tensors") or {}
    for key, name in KEPT_TENSORS.items():
        if getattr(final, name) is None:
            continue
        if not isinstance(tensors.get(key), torch.Tensor):
            raise CurveError(f"kept state {source} has no learned {key} although the cell's set stores its "
                             f"{name.replace('_', ' ')}; its point would mix iterations, so it is skipped")
        value = tensors[key].detach().cpu()
        changes[name] = float(value) if name == "learned_lr" else value.float().clone()
    n = int(state["iteration"])
    counters = state.get("counters") or {}
    cost: dict[str, float] = {"iterations": float(n)}
    cost.update({k: float(v) for k, v in counters.items()
                 if k != "elapsed_s" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    if isinstance(counters.get("elapsed_s"), (int, float)):
        cost["wall_time_s"] = float(counters["elapsed_s"])
    return replace(final, cost=cost, **changes)


def evaluate_kept_states(
    store: Store,
    cell: Cell,
    synset: Any,
    dataset: Any,
    *,
    sweep_name: str,
    archs: Optional[Sequence[str]] = None,
    num_eval: Optional[int] = None,
    device: Any = "cpu",
    progress: bool = False,
    compile: str = "off",
    log: Callable[[str], None] = print,
) -> CurveSummary:
    """Evaluate every kept state of ``cell`` that lacks a curve record on each of ``archs``
    (default the cell's ``eval_archs``) with ``num_eval`` networks (default the cell's) and
    write each record when it is done (module doc). ``synset`` is the cell's final set,
    ``dataset`` the loaded :class:`benchmarks.data.Dataset`. One log line per point; kept
    states that cannot be used are logged and listed in the summary, not raised."""
    from benchmarks.evaluate import evaluate_synset
    from benchmarks.record import dataset_fields, method_fields
    from benchmarks.storage import disk_cache
    from benchmarks.worker import cell_record

    summary = CurveSummary()
    archs = list(cell.eval_archs if archs is None else archs)
    kept = store.kept_iterations(cell.cell_id)
    lost = [n for n in cell.snapshots if n not in kept]
    if lost and not store.checkpoint_path(cell.cell_id).is_file():
        log(f"cell {cell.cell_id}: no kept state for iteration(s) {', '.join(map(str, lost))} (the set was condensed "
            "before they were asked for); run the cell again with --force to keep them")
    meta = method_fields(cell.method, dict(cell.overrides), dict(synset.config))
    meta.update(dataset_fields(cell.dataset))
    for n in kept:
        todo = [a for a in archs if not store.has_curve_record(cell.cell_id, a, n)]
        if not todo:
            continue
        path = store.snapshot_path(cell.cell_id, n)
        try:
            state = load_kept_state(path)
            if int(state["iteration"]) != n:
                raise CurveError(f"kept state {path} holds iteration {state['iteration']}, its name says {n}; "
                                 "rename or delete it")
            point = set_at(synset, state, source=str(path))
            problem = point.evaluation_problem()
            if problem is not None:
                raise CurveError(f"kept state {path} cannot be evaluated: {problem}")
        except CurveError as exc:
            summary.skipped.append(str(exc))
            log(f"cell {cell.cell_id}: skipped: {exc}")
            continue
        condense_cost = {"condense_wall_time_s": point.cost.get("wall_time_s"), "condense_peak_memory_mb": None}
        condense_cost.update({k: v for k, v in point.cost.items() if k != "wall_time_s"})
        for arch in todo:
            res = evaluate_synset(point, dataset, arch, num_eval=num_eval or cell.num_eval, epochs=cell.eval_epochs,
                                  plan_overrides=dict(cell.eval) or None, seed=cell.seed, device=device,
                                  progress=progress, cache=disk_cache(store.cache_dir), compile=compile)
            store.write_curve_record(cell_record(
                cell, res, sweep_name=sweep_name, method_config=dict(synset.config), meta=meta,
                condense_cost=condense_cost, synset_path=store.synset_relpath(cell.cell_id), iterations=n,
                status=CURVE_STATUS))
            mean = math.fsum(res.accuracies) / max(1, len(res.accuracies))
            summary.written.append((n, res.arch, mean))
            log(f"curve {cell.cell_id} ({cell.describe()}) iteration {n} on {res.arch}: mean accuracy "
                f"{100 * mean:.2f}% over {res.num_eval} nets")
    return summary


def run_curves(
    store: Store,
    *,
    cells: Sequence[str] = (),
    archs: Optional[Sequence[str]] = None,
    num_eval: Optional[int] = None,
    data_root: Optional[str] = None,
    device: Optional[str] = None,
    compile: Optional[str] = None,
    progress: bool = False,
    running: bool = False,
    log: Callable[[str], None] = print,
) -> CurveSummary:
    """The ``curve`` command: evaluate the kept states of the store's cells (or of ``cells``,
    ids) that have a sound final set and lack curve records. ``data_root``, ``device`` and
    ``compile`` default to the spec the store was run with (``spec.yaml``; relative paths from
    the current folder), else ``data``, ``auto`` and ``auto``. :class:`UserError` for a store
    or cell that does not exist, or a bad ``num_eval``; a cell with kept states but no final
    set yet is named in the log and left for later -- unless ``running``: then its set at the
    earliest kept iteration N is rebuilt by resuming that state with a budget of N
    (:func:`set_from_state`) and serves as the template of every point."""
    from methods.errors import SyntheticSetFormatError
    from methods.synset import SyntheticSet

    from benchmarks.data import load_dataset
    from benchmarks.pipeline import resolve_device

    if num_eval is not None and (isinstance(num_eval, bool) or not isinstance(num_eval, int) or num_eval < 1):
        raise UserError(f"--num-eval must be an integer >= 1, got {num_eval!r}")
    if not store.root.is_dir():
        raise UserError(f"results store {store.root} does not exist; give the output folder of a sweep")
    sweep_name, raw = store.read_cells()
    by_id = {c["cell_id"]: Cell.from_json(c) for c in raw}
    unknown = [c for c in cells if c not in by_id]
    if unknown:
        raise UserError(f"cell(s) {', '.join(unknown)} are not in {store.root / 'cells.json'}; "
                        f"`python -m benchmarks status {store.root}` lists its cells")
    archs = None if archs is None else [_arch(a) for a in archs]
    spec = _spec_settings(store)
    data_root = data_root or spec.get("data_root") or "data"
    dev = resolve_device(device or spec.get("device") or "auto")
    compile = compile or spec.get("compile") or "auto"
    chosen = [by_id[c] for c in cells] if cells else list(by_id.values())
    summary = CurveSummary()
    work: list[tuple[Cell, list[int]]] = []
    for cell in chosen:
        kept = store.kept_iterations(cell.cell_id)
        if not kept:
            if cells:
                log(f"cell {cell.cell_id} ({cell.describe()}): no kept states in {store.snapshot_dir(cell.cell_id)}")
            continue
        wanted = list(cell.eval_archs if archs is None else archs)
        missing = [n for n in kept if any(not store.has_curve_record(cell.cell_id, a, n) for a in wanted)]
        if not missing:
            continue
        if not store.synset_path(cell.cell_id).is_file() and not running:
            log(f"cell {cell.cell_id} ({cell.describe()}): {len(missing)} kept state(s) but no final synthetic set "
                "yet (still running?); run this command again when the cell is done, or add --running")
            continue
        work.append((cell, missing))
    if not work:
        log(f"nothing to do in {store.root}: every kept state of "
            + ("the chosen cells" if cells else "its cells") + " has its curve records (or no cell kept any)")
        return summary
    datasets: dict[str, Any] = {}
    for cell, missing in work:
        if cell.dataset not in datasets:
            datasets[cell.dataset] = load_dataset(cell.dataset, data_root=data_root, device=dev)
        if not store.synset_path(cell.cell_id).is_file():  # running: the template from a kept state
            try:
                synset, problem = set_from_state(store, cell, datasets[cell.dataset], min(missing), device=dev,
                                                 compile=compile, log=log), None
            except UserError as exc:
                synset, problem = None, str(exc)
            if synset is None:
                line = f"cell {cell.cell_id}: its set cannot be rebuilt from a kept state ({problem})"
                summary.skipped.append(line)
                log(line)
                continue
        else:
            problem = store.synset_problem(cell.cell_id)
            try:
                synset = SyntheticSet.load(store.synset_path(cell.cell_id)) if problem is None else None
            except SyntheticSetFormatError as exc:
                problem, synset = str(exc), None
        if synset is None:
            line = f"cell {cell.cell_id}: its final synthetic set is unusable ({problem}); run the sweep again first"
            summary.skipped.append(line)
            log(line)
            continue
        log(f"cell {cell.cell_id} ({cell.describe()}): evaluating kept iteration(s) {', '.join(map(str, missing))}")
        one = evaluate_kept_states(store, cell, synset, datasets[cell.dataset], sweep_name=sweep_name, archs=archs,
                                   num_eval=num_eval, device=dev, progress=progress, compile=compile, log=log)
        summary.written += one.written
        summary.skipped += one.skipped
    return summary


def set_from_state(store: Store, cell: Cell, dataset: Any, iteration: int, *, device: Any, compile: str = "off",
                   log: Callable[[str], None] = print) -> Any:
    """The set of a cell that is still condensing, at its kept ``iteration``: the method resumes
    a copy of that kept state with a budget of exactly ``iteration``, so its loop ends at once
    and packages the set as a finished run would (labels, plan, learned tensors). The config
    then names the cell's own budget. A method whose schedule depends on the budget (CAFE)
    refuses the state (:class:`UserError`): its points wait for the final set."""
    import shutil
    import tempfile

    from benchmarks.pipeline import run_condense
    from methods.errors import MethodError

    if cell.method == "whole":
        raise CurveError("the whole-dataset baseline keeps no states")
    with tempfile.TemporaryDirectory(prefix="condbench-curve-") as tmp:
        ckpt = Path(tmp) / "state.pt"
        shutil.copyfile(store.snapshot_path(cell.cell_id, iteration), ckpt)
        try:
            synset = run_condense(cell.method, dict(cell.overrides), dataset, cell.ipc, cell.seed, device=device,
                                  iterations=int(iteration), checkpoint_path=ckpt, cache_dir=store.cache_dir,
                                  experts_root=store.experts_root, compile=compile, log=lambda msg: None)
        except (MethodError, UserError) as exc:
            raise CurveError(f"{cell.method} does not resume its state of iteration {iteration} with a budget of "
                             f"{iteration} ({str(exc).splitlines()[0]}); its points wait for the final set: run "
                             "this command again when the cell is done") from None
    budget = cell.iterations if cell.iterations is not None else synset.config.get("iterations")
    if "iterations" in synset.config and budget is not None:
        synset.config = {**synset.config, "iterations": int(budget)}
    log(f"cell {cell.cell_id} ({cell.describe()}): still condensing; its set rebuilt from the state kept at "
        f"iteration {iteration}")
    return synset


def _arch(name: str) -> str:
    from methods.networks import canonical_network_name

    try:
        return canonical_network_name(name)
    except Exception as exc:  # MethodError: unknown architecture
        raise UserError(f"--archs: {exc}") from None


def _spec_settings(store: Store) -> dict[str, Any]:
    """``data_root``, ``device`` and ``compile`` of the spec the store was run with (empty
    when ``spec.yaml`` is missing or unreadable)."""
    import yaml

    try:
        spec = yaml.safe_load((store.root / "spec.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(spec, dict):
        return {}
    return {k: str(spec[k]) for k in ("data_root", "device", "compile") if isinstance(spec.get(k), str)}
