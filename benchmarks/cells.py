"""Cells: the unit of a sweep, and their stable ids.

A **cell** is one condensation run: (dataset, IPC, method + overrides, seed) plus the budgets
that change its result. Evaluation architectures are *not* part of a cell's identity: each cell
is evaluated on every architecture of ``eval_archs`` and writes one record per architecture, so
adding an architecture later evaluates only the missing ones, reusing the stored synthetic set.

Cell ids (:func:`cell_id`): the first 12 hex digits of the SHA-1 of the canonical JSON of every
field that affects results -- dataset, ipc, method, canonicalised overrides (values normalised
through the method's typed config, so ``0`` and ``0.0`` for a float field are the same cell; an
override equal to the method's registered default is dropped, so ``{lr_img: 1.0}`` where 1.0
is the default is the same cell as no override: ids hash the effective config), seed, iterations, num_eval, eval_epochs, the condensation architecture and, only when there are
any, the evaluation-plan overrides (so cells of a sweep without ``eval:`` keep their ids) and, for a
``tensor:`` dataset, the SHA-256 of its file (a file changed on disk makes new cells). The
label, the output folder, the profile, the executor and the kept learning-curve iterations
(``snapshots``) do not enter the id. The special method
``whole`` is the whole-dataset baseline (no condensation; ``ipc`` is null).

A cell is the contract between the launcher, the worker, the results store and ``analysis``:
``cells.json`` holds :meth:`Cell.to_json` of every cell of a sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

WHOLE = "whole"
"""Pseudo-method: train on the whole training set (the upper bound of every table)."""

ID_VERSION = 1
"""Salt of the cell-id hash; bump only if the meaning of a cell's fields changes."""


@dataclass(frozen=True)
class Cell:
    """One condensation run of a sweep (evaluated on each of ``eval_archs``)."""

    cell_id: str
    dataset: str
    ipc: Optional[int]
    method: str
    label: str
    overrides: Mapping[str, Any]
    seed: int
    eval_archs: tuple[str, ...]
    num_eval: int
    eval_epochs: Optional[int]
    iterations: Optional[int]
    train_arch: Optional[str]
    eval: Mapping[str, Any] = field(default_factory=dict)
    """Evaluation-plan overrides (``methods.protocol.EvalPlan`` fields, canonical values) that
    the worker hands the evaluator; empty: the method's own plan."""
    snapshots: tuple[int, ...] = ()
    """Iterations (ascending, each below the budget) at which the worker keeps the loop state
    of the run and evaluates it as a learning-curve point (:mod:`benchmarks.curves`); not part
    of the id: keeping states does not change the run's result."""

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        d["eval_archs"] = list(self.eval_archs)
        d["eval"] = dict(self.eval)
        d["snapshots"] = list(self.snapshots)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Cell":
        return cls(
            cell_id=d["cell_id"], dataset=d["dataset"], ipc=d["ipc"], method=d["method"],
            label=d["label"], overrides=dict(d.get("overrides") or {}), seed=int(d["seed"]),
            eval_archs=tuple(d["eval_archs"]), num_eval=int(d["num_eval"]),
            eval_epochs=d.get("eval_epochs"), iterations=d.get("iterations"),
            train_arch=d.get("train_arch"), eval=dict(d.get("eval") or {}),
            snapshots=tuple(sorted(int(n) for n in d.get("snapshots") or ())),
        )

    @property
    def is_whole(self) -> bool:
        return self.method == WHOLE

    def set_key(self) -> str:
        """What makes the cell's synthetic set: :func:`id_fields` without the evaluation
        (``num_eval``, ``eval_epochs``, ``eval``). Cells with equal keys condense the same set
        (e.g. DM evaluated with and without augmentation for the augmentation-robust score),
        so the worker condenses it once and the others reuse it."""
        fields = id_fields(dataset=self.dataset, ipc=self.ipc, method=self.method, overrides=self.overrides,
                           seed=self.seed, iterations=self.iterations, num_eval=0, eval_epochs=None,
                           train_arch=self.train_arch)
        del fields["num_eval"], fields["eval_epochs"]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha1(canonical.encode()).hexdigest()[:12]

    def describe(self) -> str:
        ipc = "whole" if self.ipc is None else f"ipc={self.ipc}"
        return f"{self.dataset} {ipc} {self.label} seed={self.seed}"


def effective_overrides(method: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` without the ones equal to the registered defaults of ``method``
    (``methods.registry.method_info(method).defaults()``, compared as canonical JSON so
    ``True`` and ``1`` stay different); unchanged for a method the registry does not know."""
    if not overrides:
        return {}
    try:
        from methods.registry import method_info

        defaults = method_info(method).defaults()
    except Exception:  # whole, or a name the registry does not know: nothing to compare with
        return dict(overrides)

    def same(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    return {k: v for k, v in overrides.items() if not (k in defaults and same(v, defaults[k]))}


def id_fields(
    *, dataset: str, ipc: Optional[int], method: str, overrides: Mapping[str, Any], seed: int,
    iterations: Optional[int], num_eval: int, eval_epochs: Optional[int], train_arch: Optional[str],
    eval: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The fields a cell id is computed from (everything that affects the results).

    The evaluation-plan overrides enter only when there are any, so every cell of a sweep
    without ``eval:`` keeps the id it had before the key existed; method overrides enter as
    :func:`effective_overrides` (cells without default-valued overrides keep their ids)."""
    effective = effective_overrides(method, overrides)
    fields = {
        "v": ID_VERSION, "dataset": dataset, "ipc": ipc, "method": method,
        "overrides": {k: effective[k] for k in sorted(effective)}, "seed": seed,
        "iterations": iterations, "num_eval": num_eval, "eval_epochs": eval_epochs,
        "train_arch": train_arch,
    }
    if eval:
        fields["eval"] = {k: eval[k] for k in sorted(eval)}
    if str(dataset).lower().startswith("tensor:"):
        fields["data"] = tensor_file_digest(str(dataset)[len("tensor:"):])
    return fields


_DIGESTS: dict[tuple[str, int, int], str] = {}


def tensor_file_digest(path: str) -> Optional[str]:
    """SHA-256 of a tensor dataset file (None when it cannot be read): part of the id of its
    cells, so a file that changed on disk between runs of a sweep makes new cells instead of
    being mixed with results of the old contents. Cached per path, size and mtime."""
    import os

    try:
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            _DIGESTS[key] = digest.hexdigest()
    except OSError:
        return None
    return _DIGESTS[key]


def cell_id(**fields: Any) -> str:
    """Stable 12-hex-digit id: SHA-1 of the canonical JSON of :func:`id_fields`."""
    canonical = json.dumps(id_fields(**fields), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]
