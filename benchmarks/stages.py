"""Shared stages of a sweep: the expert trajectories trajectory matching needs, as jobs of their own.

MTT and DATM (Cazenavette et al., CVPR 2022, §3.1; Guo et al., ICLR 2024) distil from expert
trajectories trained beforehand on the full training set. In a sweep that training is an
:class:`ExpertStage`: one per distinct :class:`~methods.trajectories.TrajectoryKey` among the
sweep's cells (:func:`stages_for`; cells with equal keys share it, and it trains the largest
number of experts any of them asks for). The experts go to ``<store>/experts/<key folder>/``
(the layout of :mod:`benchmarks.experts`), so every cell of the store, in this sweep or a later
one, reads the same files.

The launcher (:mod:`benchmarks.launcher`) submits every stage whose experts are not all stored
(:meth:`ExpertStage.status`) as a job (:class:`ExpertStageJob`), tracked like a cell in
``jobs/stage-<key folder>.json``: a killed launcher finds the job there and re-attaches instead
of submitting it again. On SLURM the cells that need a stage are submitted at once with
``--dependency=afterok:<stage job>`` (and ``--kill-on-invalid-dep=yes``, so a failed stage
cancels them instead of leaving them pending forever); the local and debug executors run the
stage first and submit its cells when it has finished. A stage job that is preempted is
requeued by submitit and, like any rerun, skips finished experts and resumes an interrupted one
from its last epoch (:func:`benchmarks.experts.train_experts`): no expert is trained twice.
"""

from __future__ import annotations

import sys
import time
import traceback as _traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from submitit.helpers import Checkpointable

from benchmarks import UserError
from benchmarks.cells import Cell
from methods.errors import MethodError
from methods.trajectories import TrajectoryKey

STAGE_PREFIX = "stage-"
"""Prefix of a stage's id, and so of its ``jobs/`` and ``failures/`` files."""


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class ExpertStage:
    """Train experts ``0 .. num_experts - 1`` of ``key`` (one stage serves every cell of the key)."""

    key: TrajectoryKey
    num_experts: int

    @property
    def stage_id(self) -> str:
        """``stage-<key folder>``: the name of its ``jobs/`` file."""
        return STAGE_PREFIX + self.key.folder_name()

    def describe(self) -> str:
        return f"experts of {self.key.describe()} ({self.num_experts})"

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key.to_dict(), "num_experts": int(self.num_experts)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ExpertStage":
        return cls(key=TrajectoryKey.from_dict(d["key"]), num_experts=int(d["num_experts"]))

    def folder(self, experts_root: str | Path) -> Path:
        from benchmarks.experts import expert_dir

        return expert_dir(experts_root, self.key)

    def finished_experts(self, experts_root: str | Path) -> list[int]:
        """The experts whose file exists and loads as expert ``i`` of this key with
        ``epochs + 1`` snapshots (read memory-mapped: the check reads no trajectory)."""
        import torch

        from benchmarks.experts import MAGIC

        folder = self.folder(experts_root)
        done = []
        for i in range(int(self.num_experts)):
            path = folder / f"expert_{i}.pt"
            if not path.is_file():
                continue
            try:
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:
                continue
            if (isinstance(data, dict) and data.get("magic") == MAGIC and data.get("key") == self.key.to_dict()
                    and int(data.get("index", -1)) == i
                    and getattr(data.get("trajectory"), "ndim", 0) == 2
                    and data["trajectory"].shape[0] == self.key.epochs + 1):
                done.append(i)
        return done

    def status(self, experts_root: str | Path) -> str:
        """``done`` (every expert file exists and loads), ``partial`` or ``missing``."""
        n = len(self.finished_experts(experts_root))
        return "done" if n == self.num_experts else "partial" if n or self.folder(experts_root).is_dir() else "missing"

    def is_done(self, experts_root: str | Path) -> bool:
        return self.status(experts_root) == "done"


def stage_of(cell: Cell) -> Optional[ExpertStage]:
    """The expert stage ``cell`` needs (None: its method needs none). The key is the one the
    method's config derives for the cell's dataset and IPC (:meth:`methods.mtt.MTTConfig.trajectory_key`);
    a cell whose config cannot derive one (an IPC the table lacks) needs none here, and its job
    fails with the config's one-line message."""
    if cell.is_whole or cell.ipc is None:
        return None
    from benchmarks.data import canonical_dataset_name
    from benchmarks.experts import experts_needed

    try:
        need = experts_needed(cell.method, canonical_dataset_name(cell.dataset), int(cell.ipc),
                              overrides=dict(cell.overrides))
    except (MethodError, UserError):  # e.g. an IPC the hyperparameter table lacks: the cell's own job says so
        return None
    return None if need is None else ExpertStage(key=need[0], num_experts=int(need[1]))


def stages_for(cells: Iterable[Cell]) -> tuple[list[ExpertStage], dict[str, str]]:
    """(the distinct stages ``cells`` need, cell id -> stage id). Cells whose keys are equal
    share one stage, with the largest number of experts asked for."""
    by_key: dict[TrajectoryKey, int] = {}
    needs: dict[str, TrajectoryKey] = {}
    for cell in cells:
        stage = stage_of(cell)
        if stage is None:
            continue
        by_key[stage.key] = max(by_key.get(stage.key, 0), stage.num_experts)
        needs[cell.cell_id] = stage.key
    stages = {key: ExpertStage(key, n) for key, n in by_key.items()}
    ordered = sorted(stages.values(), key=lambda s: s.stage_id)
    return ordered, {cid: stages[key].stage_id for cid, key in needs.items()}


class ExpertStageJob(Checkpointable):
    """The picklable job of one stage: :func:`benchmarks.experts.run_experts_stage` into the
    store's ``experts/`` folder. On a preemption submitit requeues it (the default
    :meth:`checkpoint`), and the rerun skips finished experts and resumes an interrupted one.
    A failure is written to ``failures/<stage id>.json`` and re-raised (SLURM marks the job
    failed, and the cells depending on it are cancelled)."""

    def __init__(self, store_root: str, stage: Mapping[str, Any], *, data_root: str, device: str = "auto",
                 download: bool = False) -> None:
        self.store_root = str(store_root)
        self.stage = dict(stage)
        self.data_root = str(data_root)
        self.device = device
        self.download = download

    def __call__(self) -> dict[str, Any]:
        from benchmarks.experts import run_experts_stage
        from benchmarks.store import Store

        store = Store(self.store_root)
        stage = ExpertStage.from_json(self.stage)
        _log(f"stage {stage.stage_id}: {stage.describe()} into {stage.folder(store.experts_root)}")
        try:
            report = run_experts_stage(stage.key, stage.num_experts, store.experts_root, data_root=self.data_root,
                                       device=self.device, download=self.download, log=_log)
        except Exception as exc:
            try:
                store.write_failure(stage.stage_id, f"{type(exc).__name__}: {exc}", _traceback.format_exc())
            except OSError as write_exc:
                print(f"stage {stage.stage_id} failed ({exc}) and its failure could not be recorded: {write_exc}",
                      file=sys.stderr, flush=True)
            raise
        store.clear_failure(stage.stage_id)
        return {"stage_id": stage.stage_id, "trained": report.trained, "resumed": sorted(report.resumed),
                "skipped": report.skipped, "seconds": report.seconds}
