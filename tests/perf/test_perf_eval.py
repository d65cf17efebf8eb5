"""The evaluation protocol (train N networks + test pass) against its reference-structured
oracle, the vectorised-vs-sequential ensemble (the CPU/GPU rule of ``methods/ensemble.py``),
the test-pass variants (channels-last, bf16) and bf16's effect on accuracy.

Protocol sizes: the reference trains 20 networks for 300 epochs (DC, no augmentation) and tests
each on 10,000 images. Both counts are scaled by ``CONDBENCH_PERF_EVAL_SCALE`` (default 0.01:
3 epochs and 100 test images per network; 20 networks always), which keeps the reference's
proportion of training to test work at each IPC; the ratio is what the table reports.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.evaluate import lr_schedule, network_seed, test_accuracy, train_networks
from methods.rng import make_generator
from methods.ensemble import train_ensemble
from methods.networks import get_network
from methods.training import accuracy
from tests.perf.conftest import QUICK, compare, record
from tests.perf.reference_structured import NormalizedTestSet, evaluate_reference

pytestmark = pytest.mark.perf

ARCH = "ConvNetW32" if QUICK else "ConvNet"
CH, SIZE = (3, 16) if QUICK else (3, 32)
SCALE = float(os.environ.get("CONDBENCH_PERF_EVAL_SCALE", "0.01"))
NUM_NETS = 3 if QUICK else 20


def _protocol_sizes() -> tuple[int, int]:
    if QUICK:
        return 1, 20
    return max(1, round(300 * SCALE)), max(10, round(10000 * SCALE))


def _data(n: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, CH, SIZE, SIZE, generator=torch.Generator().manual_seed(99))
    y = torch.arange(n) % 10
    raw = (0.5 + 0.25 * (protos[y] + torch.randn(n, CH, SIZE, SIZE, generator=g))).clamp(0, 1)
    return raw, y


@pytest.mark.parametrize("ipc", [1, 10])
def test_evaluation_protocol(benchmark, device, ipc):
    epochs, n_test = _protocol_sizes()
    raw_syn, y_syn = _data(10 * ipc, 1, device)
    x_syn = ((raw_syn - 0.5) / 0.25).to(device)
    y_syn = y_syn.to(device)
    raw_test, y_test = _data(n_test, 2, device)
    test_set = NormalizedTestSet(raw_test, y_test, [0.5] * CH, [0.25] * CH)
    tx, ty = ((raw_test - 0.5) / 0.25).to(device), y_test.to(device)

    def oracle():
        gens = [make_generator(network_seed(0, ARCH, i)) for i in range(NUM_NETS)]
        evaluate_reference(lambda g: get_network(ARCH, CH, 10, (SIZE, SIZE), generator=g, device=device),
                           gens, x_syn, y_syn, test_set, epochs)

    def fast():
        train_networks(x_syn, y_syn, tx, ty, ARCH, net_indices=range(NUM_NETS), num_classes=10, channel=CH,
                       im_size=(SIZE, SIZE), epochs=epochs, seed=0, augmentation="none", device=device)

    compare(benchmark, group="evaluation protocol", case=f"{NUM_NETS} nets IPC {ipc}", oracle=oracle, fast=fast,
            device=device, big=True, flops=QUICK, target="eval",
            notes=f"{epochs}+1 epochs, {n_test} test images per net, vectorize=auto")


@pytest.mark.parametrize("ipc,epochs", [(1, 5), (10, 1)])
def test_ensemble_vectorized_vs_sequential(benchmark, device, ipc, epochs):
    """The device rule: 'oracle' = sequential, 'fast' = vectorised (training only)."""
    n_nets = 3 if QUICK else 20
    epochs = 1 if QUICK else epochs
    raw, y = _data(10 * ipc, 3, device)
    x, y = ((raw - 0.5) / 0.25).to(device), y.to(device)
    schedule = [(lr, new) for _ep, lr, new in lr_schedule(epochs)]

    def run(mode: str):
        gens = [make_generator(network_seed(0, ARCH, i)) for i in range(n_nets)]
        nets = [get_network(ARCH, CH, 10, (SIZE, SIZE), generator=g, device=device) for g in gens]
        train_ensemble(nets, gens, x, y, schedule, momentum=0.9, weight_decay=5e-4, mode=mode)

    compare(benchmark, group="ensemble training", case=f"{n_nets} nets IPC {ipc}, {epochs}+1 epochs",
            oracle=lambda: run("sequential"), fast=lambda: run("vectorized"), device=device, flops=False,
            big=True, oracle_label="sequential", fast_label="vectorized",
            notes="ours = vectorized (vmap), ref = sequential; <1 means sequential is faster")


@pytest.mark.parametrize("variant", ["channels_last", "bf16", "channels_last+bf16"])
def test_test_pass_variants(benchmark, device, variant):
    """One network's test pass: fp32 NCHW (oracle) vs a variant, both without autograd."""
    n = 64 if QUICK else 1000
    raw, y = _data(n, 4, device)
    x, y = ((raw - 0.5) / 0.25).to(device), y.to(device)
    net = get_network(ARCH, CH, 10, (SIZE, SIZE), seed=0, device=device)
    net_v = get_network(ARCH, CH, 10, (SIZE, SIZE), seed=0, device=device)
    cl, bf = "channels_last" in variant, "bf16" in variant
    compare(benchmark, group="test pass", case=f"{n} images, {variant}",
            oracle=lambda: accuracy(net, x, y, batch_size=1024),
            fast=lambda: test_accuracy(net_v, x, y, bf16=bf, channels_last=cl), device=device, flops=False,
            oracle_label="fp32 NCHW", fast_label=variant, notes="ref = fp32 NCHW no_grad")


def test_bf16_accuracy_effect(device):
    """The same evaluation (same seeds) with and without bf16 autocast; records both means."""
    ipc, epochs, n_test, nets = (1, 2, 40, 2) if QUICK else (1, 20, 500, 3)
    raw, y = _data(10 * ipc, 5, device)
    x, y = ((raw - 0.5) / 0.25).to(device), y.to(device)
    raw_t, yt = _data(n_test, 6, device)
    tx, yt = ((raw_t - 0.5) / 0.25).to(device), yt.to(device)
    kw = dict(net_indices=range(nets), num_classes=10, channel=CH, im_size=(SIZE, SIZE), epochs=epochs, seed=0,
              augmentation="none", device=device)
    fp32 = [r[0] for r in train_networks(x, y, tx, yt, ARCH, **kw)]
    bf16 = [r[0] for r in train_networks(x, y, tx, yt, ARCH, bf16=True, **kw)]
    m32, m16 = sum(fp32) / nets, sum(bf16) / nets
    record({"group": "bf16 accuracy effect", "case": f"{nets} nets, IPC {ipc}, {epochs}+1 epochs, {n_test} test",
            "value": f"fp32 {100 * m32:.2f} % vs bf16 {100 * m16:.2f} % (diff {100 * (m16 - m32):+.2f} pts)",
            "notes": "same seeds; per net fp32 " + ", ".join(f"{100 * a:.1f}" for a in fp32)
            + " / bf16 " + ", ".join(f"{100 * a:.1f}" for a in bf16)})
    assert abs(m16 - m32) < 0.25  # a gross bf16 failure would show as a collapse
