"""One condensation run from names to a :class:`SyntheticSet` (what the CLI and sweep jobs call).

:func:`run_condense` resolves the method (validating overrides before any data is loaded),
loads the dataset, validates the IPC, and runs the method with a :class:`RunContext` wired to a
:class:`~benchmarks.storage.FileCheckpointStore` (resume after preemption) and a
:func:`~benchmarks.storage.disk_cache` (e.g. herding's trained feature network).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Optional

import torch

from benchmarks import UserError
from benchmarks.data import Dataset, canonical_dataset_name, dataset_info, is_tensor_dataset, load_dataset
from benchmarks.storage import FileCheckpointStore, disk_cache
from methods.context import RunContext
from methods.errors import MethodError
from methods.registry import get_method
from methods.synset import SyntheticSet

_log = logging.getLogger(__name__)


class DeviceError(UserError):
    """An unusable ``--device`` specification."""


def resolve_device(spec: Optional[str | torch.device] = None) -> torch.device:
    """``None``/``'auto'`` -> CUDA when available, else CPU; anything else is checked."""
    if spec is None or str(spec).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"invalid device '{spec}'; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{spec}' requested but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{spec}' requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device '{spec}' requested but this PyTorch has no usable MPS (Apple GPU) "
                              "support here; use --device cpu or auto")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device '{spec}'; use auto, cpu, cuda or cuda:N")
    return device


def check_ipc(dataset_name: str, ipc: int) -> None:
    """Validate ``ipc`` from static metadata (no loading); raises :class:`MethodError`."""
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc <= 0:
        raise MethodError(f"IPC must be a positive integer, got {ipc!r}")
    if is_tensor_dataset(dataset_name):
        return  # checked after loading (ClassData.validate_ipc)
    smallest = dataset_info(dataset_name).min_train_per_class
    if smallest is not None and ipc > smallest:
        raise MethodError(
            f"IPC {ipc} is larger than the smallest class of dataset '{canonical_dataset_name(dataset_name)}' "
            f"({smallest} training images); choose IPC <= {smallest}"
        )


def run_condense(
    method_name: str,
    overrides: Optional[Mapping[str, Any]],
    dataset: Dataset | str,
    ipc: int,
    seed: int,
    *,
    data_root: str | os.PathLike = "data",
    device: Optional[str | torch.device] = None,
    download: bool = False,
    iterations: Optional[int] = None,
    checkpoint_path: Optional[str | os.PathLike] = None,
    checkpoint_every: int = 10,
    cache_dir: Optional[str | os.PathLike] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    on_context: Optional[Callable[[RunContext], None]] = None,
    compile: str = "off",
    experts_root: Optional[str | os.PathLike] = None,
    keep_at: Collection[int] = (),
    keep_dir: Optional[str | os.PathLike] = None,
) -> SyntheticSet:
    """Condense ``dataset`` with ``method_name`` (+ config ``overrides``) at ``ipc`` and ``seed``.

    ``dataset`` is a loaded :class:`Dataset` or a name (then loaded from ``data_root`` onto
    ``device``). ``checkpoint_path`` enables periodic state saves every ``checkpoint_every``
    iterations and resuming from an existing file; the file is left in place after success
    (the caller decides when to delete it). ``cache_dir`` holds reusable tensors such as
    herding's feature network. ``compile`` (``auto``/``on``/``off``, :mod:`methods.compile`)
    is the mode of the method's compiled hot paths (CAFE, DM). ``on_context`` receives the live :class:`RunContext` before the
    method starts (sweep jobs call its ``save_latest`` from the preemption handler).
    ``experts_root`` is the folder holding ``experts/`` (default ``$CONDBENCH_EXPERTS`` or
    ``.``): trajectory matching (MTT, DATM) gets its expert trajectories from there in
    ``RunContext.resources`` (:func:`benchmarks.experts.resources_for`; missing ones are an
    :class:`~benchmarks.experts.ExpertsError` naming the ``condbench experts`` command).
    ``keep_at`` (iteration counts) keeps the loop state after each of them in ``keep_dir`` as
    ``it<N:06d>.pt`` (:class:`~benchmarks.storage.FileCheckpointStore`; learning curves,
    :mod:`benchmarks.curves`); it needs ``checkpoint_path`` and ``keep_dir``. Raises
    :class:`MethodError`, :class:`~benchmarks.data.DataError` or
    :class:`~benchmarks.storage.CheckpointError` for user-fixable problems."""
    logger = log or (lambda msg: _log.info("%s", msg))
    method = get_method(method_name, overrides)  # unknown method / bad override: fail before data
    if keep_at and (checkpoint_path is None or keep_dir is None):
        raise MethodError("keeping the states of chosen iterations needs a checkpoint path and a folder for "
                          "the kept states (keep_dir)")
    if iterations is not None and (not isinstance(iterations, int) or iterations <= 0):
        raise MethodError(f"iterations must be a positive integer, got {iterations!r}")
    if isinstance(dataset, Dataset):
        dev = resolve_device(device) if device is not None else dataset.device
        data = dataset.to(dev)
    else:
        check_ipc(dataset, ipc)
        dev = resolve_device(device)
        data = load_dataset(dataset, data_root=data_root, device=dev, download=download)
    data.train.validate_ipc(ipc)
    try:
        from benchmarks.data import dataset_fingerprint

        fingerprint: Optional[str] = dataset_fingerprint(data.name)
    except UserError:  # a Dataset built in code: its name is no loadable dataset
        fingerprint = None
    from benchmarks.experts import resources_for

    if experts_root is None:
        experts_root = os.environ.get("CONDBENCH_EXPERTS", ".")
    resources = resources_for(method_name, data.train.name, ipc, overrides=overrides, experts_root=experts_root)
    context = RunContext(
        device=dev,
        resources=resources,
        iterations=iterations,
        progress=progress,
        checkpoint=(FileCheckpointStore(checkpoint_path, dataset=fingerprint, keep_dir=keep_dir)
                    if checkpoint_path is not None else None),
        keep_at=frozenset(int(n) for n in keep_at),
        checkpoint_every=checkpoint_every,
        cache=disk_cache(cache_dir) if cache_dir is not None else None,
        log=logger,
        compile=compile,
    )
    if on_context is not None:  # e.g. a sweep job keeping it to save state on a preemption signal
        on_context(context)
    logger(f"condensing {data.name} with {method.name} at IPC {ipc}, seed {seed} on {dev}")
    synset = method.condense(data.train, ipc, seed=int(seed), context=context)
    if fingerprint is not None:  # the set records which data it was condensed from
        synset.extra = {**synset.extra, "dataset_fingerprint": fingerprint}
    if iterations is not None and "iterations" in synset.config:
        # the saved config states the budget that ran, not the method's default
        synset.config = {**synset.config, "iterations": int(iterations)}
    logger(
        f"done: {len(synset)} images in {synset.cost.get('wall_time_s', float('nan')):.1f} s "
        f"(peak {synset.cost.get('peak_memory_mb', float('nan')):.0f} MiB)"
    )
    return synset




def default_synset_path(method: str, dataset: str, ipc: int, seed: int, folder: str | os.PathLike = "synsets") -> Path:
    """``<folder>/<method>_<dataset>_ipc<ipc>_seed<seed>.pt`` with a filesystem-safe dataset part."""
    name = canonical_dataset_name(dataset)
    if is_tensor_dataset(name):
        name = Path(name.split(":", 1)[1]).stem
    return Path(folder) / f"{method.lower()}_{name}_ipc{ipc}_seed{seed}.pt"
