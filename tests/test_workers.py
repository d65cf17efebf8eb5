"""Evaluation networks in worker processes: same results as the one-process loop, in order."""

from __future__ import annotations

import torch

from benchmarks import workers as wk
from benchmarks.eval_networks import train_networks


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    y = torch.arange(n) % 4
    return protos[y] + 0.5 * torch.randn(n, 1, 8, 8, generator=g), y


def _run(**kw):
    x, y = _data(8, 1)
    tx, ty = _data(40, 2)
    return train_networks(x, y, tx, ty, "ConvNetW32", net_indices=[0, 1, 2], num_classes=4, channel=1,
                          im_size=(8, 8), epochs=2, seed=3, augmentation="none", device=torch.device("cpu"),
                          vectorize="sequential", **kw)


def test_two_workers_give_the_sequential_results_in_order():
    seq = _run()
    par = _run(workers=2)
    assert [r.accuracy for r in par] == [r.accuracy for r in seq]
    assert [r.epoch for r in par] == [r.epoch for r in seq]
    # distinct networks (the test would pass trivially if every worker trained network 0)
    single = _run(workers=1)
    assert [r.accuracy for r in single] == [r.accuracy for r in seq]


def test_map_networks_runs_here_for_one_worker_and_keeps_order():
    def fn(net_indices, base):
        return [base + net_indices[0]]

    assert list(wk.map_networks(fn, {"base": 10}, [3, 1, 2], workers=1)) == [13, 11, 12]


def test_default_workers_and_thread_split():
    assert wk.default_workers("cuda") == 1
    assert 1 <= wk.default_workers("cpu") <= wk.MAX_DEFAULT_WORKERS
    assert wk.threads_per_worker(2, threads=2) == 1
    assert wk.threads_per_worker(2, threads=5) == 2
    assert wk.threads_per_worker(4, threads=1) == 1
