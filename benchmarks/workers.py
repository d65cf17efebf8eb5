"""Process-level parallelism for the evaluation networks: both cores busy where one network's
minibatches (10 images at IPC 1) cannot use two threads well.

:func:`map_networks` runs ``fn(**common, net_indices=[i])`` for every index in ``workers``
``spawn`` processes, each with ``threads // workers`` intra-op threads (``threads``: this
process's ``torch.get_num_threads()``), and returns the results in index order. The shared
tensors (synthetic set, test set) go to each worker once, through ``torch.multiprocessing``'s
shared memory, not once per network. Every network is seeded by its index
(:func:`benchmarks.eval_networks.network_seed`), so each result equals the one-process loop's
at the same threads per network (floating-point kernels may differ between thread counts).

:func:`default_workers`: the cores this process may use (``os.sched_getaffinity``), at most
:data:`MAX_DEFAULT_WORKERS`; 1 on CUDA (one device, and the vectorised ensemble is its
parallel path).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

MAX_DEFAULT_WORKERS = 8

_STATE: dict[str, Any] = {}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device: Optional[torch.device | str] = None) -> int:
    """Worker processes for the evaluation networks: 1 on CUDA, else the usable cores (<= 8)."""
    if device is not None and torch.device(device).type == "cuda":
        return 1
    return max(1, min(MAX_DEFAULT_WORKERS, available_cores()))


def threads_per_worker(workers: int, threads: Optional[int] = None) -> int:
    total = torch.get_num_threads() if threads is None else int(threads)
    return max(1, total // max(1, int(workers)))


def _init(fn: Callable[..., list], common: dict[str, Any], threads: int) -> None:
    torch.set_num_threads(threads)
    _STATE["fn"], _STATE["common"] = fn, common


def _run(index: int) -> Any:
    (result,) = _STATE["fn"](**_STATE["common"], net_indices=[index])
    return result


def map_networks(fn: Callable[..., list], common: dict[str, Any], indices: Sequence[int], *, workers: int,
                 threads: Optional[int] = None) -> Iterator[Any]:
    """Yield ``fn(**common, net_indices=[i])[0]`` for every ``i`` of ``indices``, in order,
    computed by ``workers`` processes (``fn`` must be importable: a module-level function).
    With ``workers`` <= 1 or one index the calls run here, one after the other."""
    indices = list(indices)
    if workers <= 1 or len(indices) <= 1:
        for i in indices:
            (result,) = fn(**common, net_indices=[i])
            yield result
        return
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = min(int(workers), len(indices))
    with ctx.Pool(n, initializer=_init, initargs=(fn, common, threads_per_worker(n, threads))) as pool:
        yield from pool.imap(_run, indices)
