"""Per image-update step of DC, DSA, CAFE and DM, and one inner-loop epoch, against the
reference-structured oracles of ``tests/perf/reference_structured.py`` (ratios from one run).

Cases: 10 classes on 1x28x28 and 3x32x32 at IPC 1, 10, 50, and 100 classes on 3x32x32 at
IPC 1, 10; ConvNet-128 (instance norm), batch_real 256 per class with 10 classes and 32 per
class with 100 classes (documented smaller batch: 100 x 256 images with CAFE's reference graph
would need ~55 GiB). CAFE's oracle keeps the graph of the whole real batch; where that would
not fit in ~35 % of the memory available when the case starts, CAFE's batch_real is halved
until it does (same batch for both sides; the table's notes give the value used).
Quick mode (``CONDBENCH_PERF_QUICK=1``): ConvNetW32 on 16x16 images, batch_real 8 (2 with
100 classes), one round: it only checks that every case runs.

FLOPs (share of the matmul peak) are counted for the 10-class 3x32x32 IPC 10 case of every
method (one extra, uncounted warm-up call of the fast path); the other cases skip the count
to keep the suite's run time down.
"""

from __future__ import annotations

import os

import pytest
import torch

from methods.augment import DSA
from methods.cafe import cafe_loss, resolve_layer_weights
from methods.dc import match_step, resolve_path
from methods.dm import dm_loss
from methods.synthesis import augment_per_class, real_batch
from methods.networks import get_network
from methods.training import sgd, train_epoch
from tests.perf.conftest import (
    QUICK,
    affordable_batch,
    compare,
    graph_bytes_per_image,
    random_classdata,
)
from tests.perf.reference_structured import (
    cafe_step_reference,
    dc_step_reference,
    dm_step_reference,
    train_epoch_reference,
)

pytestmark = pytest.mark.perf

SHAPES = {"1x16x16": (1, 16), "3x16x16": (3, 16)} if QUICK else {"1x28x28": (1, 28), "3x32x32": (3, 32)}
MODEL = "ConvNetW32" if QUICK else "ConvNet"
_COLOUR = "3x16x16" if QUICK else "3x32x32"
_GREY = "1x16x16" if QUICK else "1x28x28"
CASES = (
    [(10, _COLOUR, ipc) for ipc in (10, 1, 50)]
    + [(10, _GREY, ipc) for ipc in (10, 1, 50)]
    + [(100, _COLOUR, ipc) for ipc in (1, 10)]
)
METHODS = ("cafe", "dc", "dsa", "dm")


def _strategy(channel: int) -> str:
    # DSA's defaults: no flip for the digit (1-channel) datasets
    return "color_crop_cutout_scale_rotate" if channel == 1 else "color_crop_cutout_flip_scale_rotate"


def _batch_real(num_classes: int) -> int:
    """256 per class (the reference) with 10 classes, 32 with 100; ``CONDBENCH_PERF_BATCH_REAL``
    overrides the 10-class value (100 classes then use an eighth of it, at least 2)."""
    if QUICK:
        return 8 if num_classes <= 10 else 2
    base = int(os.environ.get("CONDBENCH_PERF_BATCH_REAL", "256"))
    return base if num_classes <= 10 else max(2, base // 8)


def _setup(method: str, num_classes: int, shape: str, ipc: int, device: torch.device):
    channel, size = SHAPES[shape]
    net = get_network(MODEL, channel, num_classes, (size, size), seed=0, device=device)
    net.train()
    batch = _batch_real(num_classes)
    if method == "cafe":
        per_image = 1.3 * graph_bytes_per_image(net, channel, size, device)
        batch = affordable_batch(per_image, num_classes, batch, device)
    real = random_classdata(num_classes, max(batch, ipc), channel, size, device)
    init = torch.randn(num_classes * ipc, channel, size, size, generator=torch.Generator().manual_seed(1))
    syn = {k: init.to(device).clone().requires_grad_(True) for k in ("oracle", "fast")}
    opts = {k: torch.optim.SGD([v], lr=0.1, momentum=0.5) for k, v in syn.items()}
    gens = {k: torch.Generator().manual_seed(2) for k in ("oracle", "fast")}
    dsa = DSA(_strategy(channel)) if method in ("dsa", "dm") else None
    return net, real, batch, syn, opts, gens, dsa


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("num_classes,shape,ipc", CASES, ids=[f"{c}cl-{s}-ipc{i}" for c, s, i in CASES])
def test_image_step(benchmark, device, method, num_classes, shape, ipc):
    net, real, batch, syn, opts, gens, dsa = _setup(method, num_classes, shape, ipc, device)
    C = num_classes

    if method in ("dc", "dsa"):
        path = resolve_path("auto", device)

        def oracle():
            dc_step_reference(net, real, syn["oracle"], opts["oracle"], ipc, batch, gens["oracle"], dsa=dsa)
            net.zero_grad(set_to_none=True)

        def fast():
            def batches():
                for c in range(C):
                    x_real = real.sample(c, batch, gens["fast"])
                    x_syn = syn["fast"][c * ipc : (c + 1) * ipc]
                    if dsa is not None:
                        x_real, x_syn = dsa.siamese([x_real, x_syn], gens["fast"])
                    yield c, x_real, x_syn

            opts["fast"].zero_grad(set_to_none=True)
            match_step(net, batches(), distance="layerwise", path=path, inputs=[syn["fast"]])
            opts["fast"].step()

        notes = f"batch_real {batch}, path {path}"
    elif method == "cafe":
        weights = resolve_layer_weights(None, net.feature_names)

        def oracle():
            cafe_step_reference(net, real, syn["oracle"], opts["oracle"], ipc, batch, gens["oracle"], weights)
            net.zero_grad(set_to_none=True)

        def fast():
            rx = real_batch(real, batch, gens["fast"], device)
            loss = cafe_loss(net, rx, syn["fast"], C, layer_weights=weights)
            (grad,) = torch.autograd.grad(loss, syn["fast"])
            syn["fast"].grad = grad
            opts["fast"].step()
            syn["fast"].grad = None

        notes = f"batch_real {batch}"
    else:  # dm: frozen net, DSA on (DM's default)
        for p in net.parameters():
            p.requires_grad_(False)

        def oracle():
            dm_step_reference(net, real, syn["oracle"], opts["oracle"], ipc, batch, gens["oracle"], dsa=dsa)

        def fast():
            rx = real_batch(real, batch, gens["fast"], device)
            rx, sx = augment_per_class(dsa, rx, syn["fast"], C, gens["fast"])
            loss = dm_loss(net, rx, sx, C)
            (grad,) = torch.autograd.grad(loss, syn["fast"])
            syn["fast"].grad = grad
            opts["fast"].step()
            syn["fast"].grad = None

        notes = f"batch_real {batch}, DSA"
    big = ipc >= 50 or num_classes > 10 or method == "cafe"
    flops = QUICK or (C == 10 and shape == _COLOUR and ipc == 10)
    compare(benchmark, group=f"{method} image step", case=f"{C}cl {shape} IPC {ipc}", oracle=oracle, fast=fast,
            device=device, big=big, notes=notes, target=method, flops=flops)


INNER_CASES = [(shape, ipc) for shape in SHAPES for ipc in (10, 50)]


@pytest.mark.parametrize("augment", [False, True], ids=["dc", "dsa"])
@pytest.mark.parametrize("shape,ipc", INNER_CASES, ids=[f"{s}-ipc{i}" for s, i in INNER_CASES])
def test_inner_epochs(benchmark, device, shape, ipc, augment):
    """``epochs`` inner-loop epochs on the synthetic set (DC: 10 classes, batch 256, SGD 0.01):
    a DataLoader per epoch (reference) vs :func:`methods.training.train_epoch`."""
    channel, size = SHAPES[shape]
    epochs = 2 if QUICK else 10
    net = get_network(MODEL, channel, 10, (size, size), seed=0, device=device)
    images = torch.randn(10 * ipc, channel, size, size, generator=torch.Generator().manual_seed(3)).to(device)
    labels = torch.arange(10, device=device).repeat_interleave(ipc)
    opt = sgd(net.parameters(), 0.01)
    g_o, g_f = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    aug = DSA(_strategy(channel)) if augment else None

    def oracle():
        for _ in range(epochs):
            train_epoch_reference(net, images, labels, opt, g_o, augment=aug)

    def fast():
        for _ in range(epochs):
            train_epoch(net, images, labels, opt, batch_size=256, generator=g_f, augment=aug)

    compare(benchmark, group="inner-loop epochs" + (" (DSA)" if augment else ""), case=f"10cl {shape} IPC {ipc}",
            oracle=oracle, fast=fast, device=device, notes=f"{epochs} epochs per call", flops=QUICK)
