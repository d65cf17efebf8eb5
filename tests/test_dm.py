"""DM: loss equals the per-class oracle (and the class-mixing oracle for batch norm), the
network is frozen, siamese DSA per class, reproducibility, resume, and it beats random."""

from __future__ import annotations

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from methods import dm as dm_mod
from methods.config import build_config
from methods.context import MemoryCheckpointStore, RunContext, StopRequested
from methods.errors import MethodError
from methods.realdata import ClassData
from methods.registry import get_method
from methods.rng import make_generator
from methods.dm import DMConfig, dm_loss
from methods.networks import get_network
from methods.training import accuracy, sgd, train_epoch
from tests.conftest import make_classdata
from tests.oracles_fa import dm_oracle_loss

# float64 comparisons (see tests/test_cafe.py): the math must agree to rounding
RTOL = 1e-10
GRAD_TOL = 1e-9

SMALL = dict(model="ConvNetW32", batch_real=8)


def _check(net, num_classes, n, m, channel, size, mix):
    g = torch.Generator().manual_seed(0)
    real = torch.randn(num_classes * n, channel, size, size, generator=g, dtype=torch.float64)
    syn = torch.randn(num_classes * m, channel, size, size, generator=g, dtype=torch.float64).requires_grad_(True)
    ours = dm_loss(net, real, syn, num_classes)
    (g_ours,) = torch.autograd.grad(ours, syn)
    ref = dm_oracle_loss(net, list(real.split(n)), list(syn.split(m)), mix_classes=mix)
    (g_ref,) = torch.autograd.grad(ref, syn)
    torch.testing.assert_close(ours.detach(), ref.detach(), rtol=RTOL, atol=0.0)
    assert (g_ours - g_ref).abs().max() <= GRAD_TOL * g_ref.abs().max()
    return ours.detach(), real, syn


@pytest.mark.parametrize("channel,num_classes,size", [(1, 10, 28), (3, 10, 32), (3, 100, 16), (1, 100, 16)])
def test_loss_and_gradient_equal_per_class_oracle(channel, num_classes, size):
    net = get_network("ConvNetW32", channel, num_classes, (size, size), seed=1).double()
    for p in net.parameters():
        p.requires_grad_(False)
    _check(net, num_classes, 4, 2, channel, size, mix=False)


def test_batchnorm_variant_mixes_classes_in_one_pass():
    net = get_network("ConvNetBN", 3, 10, (16, 16), seed=1).double()
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    ours, real, syn = _check(net, 10, 4, 2, 3, 16, mix=True)
    per_class = dm_oracle_loss(net, list(real.split(4)), list(syn.split(2)), mix_classes=False)
    assert not torch.allclose(ours, per_class.detach())  # batch statistics really are mixed


def test_defaults_and_eval_protocol():
    cfg = DMConfig()
    assert (cfg.iterations, cfg.lr_img, cfg.momentum_img, cfg.batch_real, cfg.init, cfg.model, cfg.dsa) == (
        20000, 1.0, 0.5, 256, "real", "ConvNet", True,
    )
    m = get_method("dm")
    assert m.uses_dsa_in_eval() and m.eval_epochs_no_aug == 1000
    data = make_classdata(10, 5, 1, 16, name="mnist")
    assert m.eval_defaults(data) == {"dsa": True, "dsa_strategy": "color_crop_cutout_scale_rotate", "epochs_no_aug": 1000}
    with pytest.raises(MethodError, match="unknown architecture 'ConvNett'"):
        build_config(DMConfig, {"model": "ConvNett"})
    with pytest.raises(MethodError, match="lr_img must be > 0"):
        build_config(DMConfig, {"lr_img": 0.0})
    with pytest.raises(MethodError, match="unknown DSA strategy"):
        build_config(DMConfig, {"dsa_strategy": "zoom"})


def test_network_is_frozen_and_one_siamese_draw_per_class(monkeypatch):
    from methods.augment import DSA

    nets, calls = [], []
    real_get = dm_mod.get_network

    def capture(*a, **k):
        nets.append(real_get(*a, **k))
        return nets[-1]

    orig = DSA.siamese

    def spy(self, tensors, generator):
        calls.append([t.shape[0] for t in tensors])
        return orig(self, tensors, generator)

    monkeypatch.setattr(dm_mod, "get_network", capture)
    monkeypatch.setattr(DSA, "siamese", spy)
    data = make_classdata(10, 20, 1, 16)
    s = get_method("dm", dict(SMALL, iterations=3)).condense(data, 2, seed=0)
    assert len(nets) == 3 and len({id(n) for n in nets}) == 3  # a fresh network per iteration
    for net in nets:
        assert all(not p.requires_grad and p.grad is None for p in net.parameters())
    assert calls == [[8, 2]] * (10 * 3)
    assert s.cost["image_steps"] == 3 and s.cost["iterations"] == 3 and s.cost["seconds_per_image_step"] > 0


def test_seeded_runs_are_bit_identical_and_resume_equals_uninterrupted():
    data = make_classdata(10, 20, 1, 16)
    ov = dict(SMALL, iterations=4)
    a = get_method("dm", ov).condense(data, 2, seed=7)
    b = get_method("dm", ov).condense(data, 2, seed=7)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, get_method("dm", ov).condense(data, 2, seed=8).images)
    store = MemoryCheckpointStore()
    with pytest.raises(StopRequested):
        get_method("dm", ov).condense(data, 2, seed=7, context=RunContext(checkpoint=store, stop_after=3))
    assert store.load()["iteration"] == 3
    resumed = get_method("dm", ov).condense(data, 2, seed=7, context=RunContext(checkpoint=store))
    assert torch.equal(a.images, resumed.images)
    assert resumed.cost["image_steps"] == 4


def _noisy_blobs(per_class: int, seed: int, sigma: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class prototypes under heavy noise: single real images are poor representatives."""
    protos = torch.randn(10, 1, 16, 16, generator=torch.Generator().manual_seed(123))
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = torch.randn(labels.numel(), 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    return protos[labels] + sigma * noise, labels


def _test_accuracy(images, labels, test_x, test_y, epochs=60):
    accs = []
    for k in range(2):
        net = get_network("ConvNetW32", 1, 10, (16, 16), seed=100 + k)
        opt = sgd(net.parameters(), 0.01, momentum=0.9, weight_decay=5e-4)
        g = make_generator(k)
        for _ in range(epochs):
            train_epoch(net, images, labels, opt, batch_size=256, generator=g)
        accs.append(accuracy(net, test_x, test_y))
    return sum(accs) / len(accs)


def test_short_dm_run_beats_random_at_ipc_10():
    """60 DM iterations (lr 10, the README's value for large IPC; no DSA, to keep it short)
    on noisy class blobs; both sets trained and tested identically (2 nets, 60 epochs).
    Measured: random 0.36/0.31/0.34 vs DM 0.41/0.38/0.39 for seeds 0/1/2."""
    x, y = _noisy_blobs(100, 1)
    test_x, test_y = _noisy_blobs(50, 2)
    train = ClassData(images=x, labels=y, num_classes=10, mean=(0.0,), std=(1.0,), name="blobs")
    rnd = get_method("random").condense(train, 10, seed=0)
    dm = get_method("dm", dict(model="ConvNetW32", iterations=60, batch_real=64, dsa=False, lr_img=10.0)).condense(
        train, 10, seed=0
    )
    acc_random = _test_accuracy(rnd.images, rnd.labels, test_x, test_y)
    acc_dm = _test_accuracy(dm.images, dm.labels, test_x, test_y)
    assert acc_dm > acc_random + 0.02, (acc_dm, acc_random)
