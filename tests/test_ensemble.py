"""Vectorised training of N networks (methods/ensemble.py) against the sequential path.

Same seeds -> same per-network results: parameters agree to rtol=1e-4 / atol=1e-5 (float
reassociation inside vmap's batched kernels means allclose, not bit-equality), and each
network's generator has made exactly the same draws (states equal afterwards).
"""

from __future__ import annotations

import pytest
import torch

from methods.augment import DSA
from methods.errors import MethodError
from methods.rng import make_generator
from methods.ensemble import resolve_mode, train_ensemble, vectorizable
from methods.networks import get_network

RTOL, ATOL = 1e-4, 1e-5


def _nets(arch: str, seeds, channel=1, size=16, classes=4):
    gens = [make_generator(s) for s in seeds]
    nets = [get_network(arch, channel, classes, (size, size), generator=g, device="cpu") for g in gens]
    return nets, gens


def _data(n=24, channel=1, size=16, classes=4):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, channel, size, size, generator=g), torch.arange(n) % classes


SCHEDULE = [(0.01, True), (0.01, False), (0.001, True), (0.001, False)]


@pytest.mark.parametrize("augment", [None, DSA("color_crop_cutout_scale_rotate")], ids=["plain", "dsa"])
def test_vectorized_matches_sequential(augment):
    x, y = _data()
    seq_nets, seq_gens = _nets("ConvNet", [1, 2, 3])
    vec_nets, vec_gens = _nets("ConvNet", [1, 2, 3])
    kw = dict(momentum=0.9, weight_decay=5e-4, batch_size=10, augment=augment)
    assert train_ensemble(seq_nets, seq_gens, x, y, SCHEDULE, mode="sequential", **kw) == "sequential"
    assert train_ensemble(vec_nets, vec_gens, x, y, SCHEDULE, mode="vectorized", **kw) == "vectorized"
    for a, b, ga, gb in zip(seq_nets, vec_nets, seq_gens, vec_gens):
        assert torch.equal(ga.get_state(), gb.get_state())  # identical draws per network
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(pb, pa, rtol=RTOL, atol=ATOL, msg=name)
    # the networks did train (and differently from one another)
    fresh, _ = _nets("ConvNet", [1, 2, 3])
    assert not torch.allclose(fresh[0].classifier.weight, seq_nets[0].classifier.weight)
    assert not torch.allclose(seq_nets[0].classifier.weight, seq_nets[1].classifier.weight)


def test_groups_of_networks_give_the_same_results():
    x, y = _data()
    one, g1 = _nets("ConvNet", [1, 2, 3])
    grouped, g2 = _nets("ConvNet", [1, 2, 3])
    train_ensemble(one, g1, x, y, SCHEDULE[:2], momentum=0.9, batch_size=10, mode="vectorized")
    train_ensemble(grouped, g2, x, y, SCHEDULE[:2], momentum=0.9, batch_size=10, mode="vectorized", max_images=20)
    for a, b in zip(one, grouped):
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pb, pa, rtol=RTOL, atol=ATOL)


def test_sequential_equals_plain_train_epoch_loop():
    """The sequential path is the evaluation protocol's loop (optimizer re-created per flag)."""
    from methods.training import sgd, train_epoch

    x, y = _data()
    nets, gens = _nets("ConvNet", [5])
    ref, rgens = _nets("ConvNet", [5])
    train_ensemble(nets, gens, x, y, SCHEDULE, momentum=0.9, weight_decay=5e-4, batch_size=10, mode="sequential")
    opt = None
    for lr, new in SCHEDULE:
        if new or opt is None:
            opt = sgd(ref[0].parameters(), lr, momentum=0.9, weight_decay=5e-4)
        train_epoch(ref[0], x, y, opt, batch_size=10, generator=rgens[0])
    for pa, pb in zip(ref[0].parameters(), nets[0].parameters()):
        assert torch.equal(pa, pb)


def test_batchnorm_falls_back_to_sequential():
    nets, gens = _nets("ConvNetBN", [1, 2])
    assert not vectorizable(nets[0])
    x, y = _data()
    assert train_ensemble(nets, gens, x, y, SCHEDULE[:1], batch_size=10, mode="vectorized") == "sequential"


def test_mode_rule_and_errors():
    assert resolve_mode("auto", "cpu") == "sequential"
    assert resolve_mode("auto", "cuda") == "vectorized"
    assert resolve_mode("vectorized", "cpu") == "vectorized"
    with pytest.raises(MethodError, match="valid modes"):
        resolve_mode("fast", "cpu")
    nets, gens = _nets("ConvNet", [1])
    with pytest.raises(MethodError, match="generators"):
        train_ensemble(nets, gens + gens, *_data(), SCHEDULE)


def test_bf16_autocast_trains_close_to_fp32():
    x, y = _data()
    a, ga = _nets("ConvNet", [3])
    b, gb = _nets("ConvNet", [3])
    train_ensemble(a, ga, x, y, SCHEDULE, batch_size=10, mode="sequential")
    train_ensemble(b, gb, x, y, SCHEDULE, batch_size=10, mode="sequential", bf16=True)
    diffs = [(pa - pb).abs().max().item() for pa, pb in zip(a[0].parameters(), b[0].parameters())]
    assert 0 < max(diffs) < 0.05  # bf16 changes the arithmetic, but only slightly


def test_a_schedule_without_new_optimisers_gets_each_lr_in_both_modes():
    """A cosine-like schedule changes lr without re-creating the optimiser: the sequential
    path must apply each epoch's lr to the live optimiser, as the vectorised SGD does."""
    x, y = _data()
    schedule = [(0.05, True), (0.02, False), (0.005, False)]
    seq, gs = _nets("ConvNet", [4, 5])
    vec, gv = _nets("ConvNet", [4, 5])
    frozen, gf = _nets("ConvNet", [4, 5])
    kw = dict(momentum=0.9, weight_decay=5e-4, batch_size=10)
    train_ensemble(seq, gs, x, y, schedule, mode="sequential", **kw)
    train_ensemble(vec, gv, x, y, schedule, mode="vectorized", **kw)
    train_ensemble(frozen, gf, x, y, [(0.05, True)] * 3, mode="sequential", **kw)
    for a, b, c in zip(seq, vec, frozen):
        for pa, pb in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(pb, pa, rtol=RTOL, atol=ATOL)
        assert not torch.allclose(a.classifier.weight, c.classifier.weight)
