"""Process-level parallelism for the evaluation networks: both cores busy where one network's
minibatches (10 images at IPC 1) cannot use two threads well.

:func:`map_networks` runs ``fn(**common, net_indices=[i])`` for every index in ``workers``
``spawn`` processes, each with ``threads // workers`` intra-op threads (``threads``: this
process's ``torch.get_num_threads()``), and returns the results in index order. The pool is
started once per process and kept (each spawned worker imports torch anew: seconds, not worth
paying per evaluation); the tensors (synthetic set, test set) travel through
``torch.multiprocessing``'s shared memory as handles. Every network is seeded by its index
(:func:`benchmarks.eval_networks.network_seed`), so each result equals the one-process loop's
at the same threads per network (floating-point kernels may differ between thread counts).

:func:`default_workers`: the cores this process may use (``os.sched_getaffinity``), at most
:data:`MAX_DEFAULT_WORKERS`; 1 on CUDA (one device, and the vectorised ensemble is its
parallel path).
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

MAX_DEFAULT_WORKERS = 8

_POOLS: dict[tuple[int, int], Any] = {}


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


def _init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run(task: tuple[Callable[..., list], dict[str, Any], int]) -> Any:
    fn, common, index = task
    (result,) = fn(**common, net_indices=[index])
    return result


def pool(workers: int, threads: int) -> Any:
    """The process's pool of ``workers`` spawned processes with ``threads`` threads each,
    started on first use and kept for later evaluations (closed at exit)."""
    key = (int(workers), int(threads))
    if key not in _POOLS:
        import torch.multiprocessing as mp

        _POOLS[key] = mp.get_context("spawn").Pool(key[0], initializer=_init, initargs=(key[1],))
        if len(_POOLS) == 1:
            atexit.register(close_pools)
    return _POOLS[key]


def close_pools() -> None:
    """Stop every worker pool of this process."""
    while _POOLS:
        _key, p = _POOLS.popitem()
        p.terminate()
        p.join()


def map_networks(fn: Callable[..., list], common: dict[str, Any], indices: Sequence[int], *, workers: int,
                 threads: Optional[int] = None) -> Iterator[Any]:
    """Yield ``fn(**common, net_indices=[i])[0]`` for every ``i`` of ``indices``, in order,
    computed by ``workers`` processes of :func:`pool` (``fn`` must be importable: a
    module-level function). With ``workers`` <= 1 or one index the calls run here, one after
    the other. A CPU tensor of ``common`` moves to shared memory when first sent (its storage is
    shared in place), so later networks and evaluations send only a handle."""
    indices = list(indices)
    if workers <= 1 or len(indices) <= 1:
        for i in indices:
            (result,) = fn(**common, net_indices=[i])
            yield result
        return
    n = min(int(workers), len(indices))
    yield from pool(n, threads_per_worker(n, threads)).imap(_run, [(fn, common, i) for i in indices])
