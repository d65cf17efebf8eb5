"""Evaluation protocol (reference evaluate_synset) and DC's evaluation augmentation."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
import torch.nn.functional as F

import benchmarks.eval_networks as nw
from benchmarks.data import Dataset
from benchmarks.dc_augment import DCAugment
from benchmarks.evaluate import (
    EvalResult,
    EvaluationError,
    evaluate_synset,
    effective_plan,
    evaluate_whole_dataset,
    lr_schedule,
    network_seed,
)
from methods.protocol import EvalPlan, dc_strategy
from methods.realdata import ClassData
from methods.synset import SyntheticSet
from tests.conftest import make_classdata


def _dataset(num_classes=4, per_class=30, channel=1, size=16, seed=0, name="blobs") -> Dataset:
    """Blobs split 1/3 train, 2/3 test (train per class = per_class // 3)."""
    full = make_classdata(num_classes, per_class, channel, size, seed, name)
    train_idx, test_idx = [], []
    for idx in full.indices_by_class:
        k = idx.numel() // 3
        train_idx.append(idx[:k])
        test_idx.append(idx[k:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    train = ClassData(full.images[tr], full.labels[tr], num_classes, full.mean, full.std, name=name)
    return Dataset(name, train, full.images[te], full.labels[te], num_classes, channel, (size, size),
                   full.mean, full.std, tuple(str(i) for i in range(num_classes)))


def _synset(ds: Dataset, ipc: int, plan: EvalPlan = EvalPlan(), method="random", **kw) -> SyntheticSet:
    idx = torch.cat([ix[:ipc] for ix in ds.train.indices_by_class])
    return SyntheticSet(ds.train.images[idx], ds.train.labels[idx], method, {}, 0, ipc, ds.num_classes,
                        dataset=ds.name, eval_plan=plan, **kw)


# -- schedule ---------------------------------------------------------------------------------


def test_lr_schedule_drops_after_epoch_half_plus_one():
    sched = list(lr_schedule(10, 0.01))
    assert [ep for ep, _, _ in sched] == list(range(11))  # E + 1 epochs
    assert [new for _, _, new in sched] == [ep in (0, 7) for ep in range(11)]
    assert all(lr == 0.01 for ep, lr, _ in sched if ep <= 6)  # E//2+1 = 6 still at the base lr
    assert all(lr == pytest.approx(0.001) for ep, lr, _ in sched if ep >= 7)
    assert [new for _, _, new in lr_schedule(0)] == [True]


def test_training_recreates_the_optimizer_and_resets_momentum(monkeypatch):
    ds = _dataset()
    created, used = [], []
    real_make, real_train_epoch = nw.make_optimizer, nw.train_epoch

    def spy_make(name, params, lr, momentum=0.0, weight_decay=0.0):
        opt = real_make(name, params, lr, momentum=momentum, weight_decay=weight_decay)
        created.append((opt, lr, len(opt.state)))
        return opt

    def spy_train_epoch(net, images, labels, optimizer, **kw):
        used.append(optimizer)
        return real_train_epoch(net, images, labels, optimizer, **kw)

    monkeypatch.setattr(nw, "make_optimizer", spy_make)
    monkeypatch.setattr(nw, "train_epoch", spy_train_epoch)
    nw.train_and_test(ds.train.images, ds.train.labels, ds.test_images, ds.test_labels, "ConvNetW32",
                   num_classes=4, channel=1, im_size=(16, 16), epochs=6, seed=0, net_index=0,
                   augment=None, device="cpu")
    assert len(used) == 7
    assert [lr for _, lr, _ in created] == [0.01, pytest.approx(0.001)]
    first, second = created[0][0], created[1][0]
    assert created[1][2] == 0  # the new optimiser starts without momentum buffers
    assert len(first.state) > 0  # while the old one had them
    assert used[:5] == [first] * 5 and used[5:] == [second] * 2  # drop after epoch 6//2+1 = 4
    assert first.param_groups[0]["momentum"] == 0.9 and first.param_groups[0]["weight_decay"] == 5e-4


# -- plan -------------------------------------------------------------------------------------


def evaluation_plan(eval_defaults, arch, dataset, epochs=None):
    r = effective_plan(EvalPlan.from_eval_defaults(eval_defaults), arch, dataset, epochs=epochs)
    return r.epochs, r.augmentation


def test_evaluation_plan_follows_the_reference_rule():
    assert evaluation_plan({"dsa": False, "epochs_no_aug": 300}, "ConvNet", "cifar10") == (300, "none")
    assert evaluation_plan({"dsa": False, "epochs_no_aug": 600}, "ConvNet", "cifar10") == (600, "none")
    assert evaluation_plan({"dsa": True, "dsa_strategy": "color_crop"}, "ConvNet", "cifar10") == (1000, "dsa:color_crop")
    assert evaluation_plan({"dsa": True}, "convnet", "mnist") == (1000, "dsa:color_crop_cutout_scale_rotate")
    assert evaluation_plan({}, "ConvNet", "MNIST") == (1000, "dc:crop_scale_rotate")
    assert evaluation_plan({}, "ConvNetBN", "mnist") == (1000, "dc:crop_noise")  # ConvNetBN wins
    assert evaluation_plan({}, "ConvNetBN", "cifar10") == (1000, "dc:crop_noise")
    assert evaluation_plan({}, "ConvNet", "digits") == (300, "none")
    assert evaluation_plan({"epochs_no_aug": 600}, "ConvNet", "mnist", epochs=5) == (5, "dc:crop_scale_rotate")
    with pytest.raises(EvaluationError, match="epochs must be >= 0"):
        evaluation_plan({}, "ConvNet", "mnist", epochs=-1)
    assert dc_strategy("svhn", "ResNet18") is None


# -- accuracy and determinism -----------------------------------------------------------------


def test_same_seed_gives_bit_identical_accuracies_and_other_seeds_differ():
    ds = _dataset()
    syn = _synset(ds, 2)
    a = evaluate_synset(syn, ds, "ConvNetW32", num_eval=2, epochs=8, seed=3)
    b = evaluate_synset(syn, ds, "ConvNetW32", num_eval=2, epochs=8, seed=3)
    assert a.accuracies == b.accuracies
    assert network_seed(3, "convnetw32", 1) == network_seed(3, "ConvNetW32", 1) != network_seed(3, "ConvNetW32", 0)
    single = nw.train_and_test(syn.images, syn.labels, ds.test_images, ds.test_labels, "ConvNetW32",
                            num_classes=4, channel=1, im_size=(16, 16), epochs=8, seed=3, net_index=1,
                            augment=None, device="cpu")
    assert single[0] == a.accuracies[1]  # each network reproducible on its own
    c = evaluate_synset(syn, ds, "ConvNetW32", num_eval=2, epochs=8, seed=4)
    assert c.accuracies != a.accuracies


def test_tiny_synthetic_set_beats_chance():
    ds = _dataset(num_classes=4, per_class=30)
    result = evaluate_synset(_synset(ds, 5), ds, "ConvNetW32", num_eval=2, epochs=30, seed=0)
    assert isinstance(result, EvalResult)
    assert result.num_eval == 2 and len(result.accuracies) == 2 and result.epochs == 30
    assert result.augmentation == "none" and result.device == "cpu"
    assert result.mean > 0.6  # chance is 0.25
    assert result.train_time_s > 0 and result.test_time_s > 0 and result.wall_time_s >= result.train_time_s
    d = result.to_dict()
    assert d["mean"] == result.mean and d["accuracies"] == result.accuracies


def test_whole_dataset_baseline_runs_the_same_protocol():
    ds = _dataset(num_classes=3, per_class=24)
    result = evaluate_whole_dataset(ds, "MLP", num_eval=1, epochs=3, seed=0)
    assert result.epochs == 3 and len(result.accuracies) == 1 and 0 <= result.mean <= 1


def test_each_trained_network_is_logged_with_its_accuracy(caplog):
    ds = _dataset(num_classes=3, per_class=24)
    with caplog.at_level("INFO", logger="benchmarks.evaluate"):
        result = evaluate_whole_dataset(ds, "MLP", num_eval=2, epochs=1, seed=0, vectorize="sequential")
    lines = [r.getMessage() for r in caplog.records if "network" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["MLP network 1/2", "MLP network 2/2"]
    assert f"{100 * result.accuracies[1]:.2f} %" in lines[1]


def test_incompatible_synset_is_rejected():
    ds = _dataset()
    other = _dataset(channel=3)
    with pytest.raises(EvaluationError, match=r"images are \(3, 16, 16\), the dataset's are \(1, 16, 16\)"):
        evaluate_synset(_synset(other, 1), ds, "ConvNet", num_eval=1, epochs=1)
    with pytest.raises(EvaluationError, match="num_eval"):
        evaluate_synset(_synset(ds, 1), ds, "ConvNet", num_eval=0, epochs=1)


@pytest.mark.skipif(importlib.util.find_spec("methods.augment") is None, reason="methods.augment (DSA) not present")
def test_dsa_defaults_train_with_dsa(monkeypatch):
    ds = _dataset()
    syn = _synset(ds, 2, EvalPlan(dsa=True, dsa_strategy="color_crop_cutout_scale_rotate"))
    seen = []
    real = nw.make_augment

    def spy(aug):
        out = real(aug)
        seen.append(out)
        return out

    monkeypatch.setattr(nw, "make_augment", spy)
    result = evaluate_synset(syn, ds, "ConvNetW32", num_eval=1, epochs=2)
    assert result.augmentation == "dsa:color_crop_cutout_scale_rotate"
    assert type(seen[0]).__name__ == "DSA"


# -- DC augmentation --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["crop", "scale", "rotate", "noise", "crop_scale_rotate", "crop_noise"])
def test_dc_augment_keeps_shape_and_is_seeded(strategy):
    x = torch.randn(40, 3, 13, 11, generator=torch.Generator().manual_seed(0))
    aug = DCAugment(strategy)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_dc_crop_takes_windows_of_the_mean_padded_image():
    x = torch.randn(20, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    out = DCAugment("crop")(x, torch.Generator().manual_seed(2))
    mean = x.mean(dim=(0, 2, 3)).view(2, 1, 1)
    for i in range(20):
        canvas = mean.expand(2, 16, 16).clone()
        canvas[:, 4:12, 4:12] = x[i]
        windows = [canvas[:, r:r + 8, c:c + 8] for r in range(8) for c in range(8)]  # offsets 0..7
        assert any(torch.equal(out[i], w) for w in windows)


def test_dc_scale_matches_per_image_nearest_resize():
    x = torch.randn(30, 2, 13, 17, generator=torch.Generator().manual_seed(3))
    out = DCAugment("scale")(x, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    torch.randint(1, (30,), generator=g)  # the op choice draw
    fh = 0.8 + 0.4 * torch.rand(30, generator=g, dtype=torch.float64)
    fw = 0.8 + 0.4 * torch.rand(30, generator=g, dtype=torch.float64)
    for i in range(30):  # the reference's per-image procedure
        h, w = int(fh[i] * 13), int(fw[i] * 13)
        tmp = F.interpolate(x[i:i + 1], [h, w])[0]
        m = max(h, w, 13, 17)
        canvas = torch.zeros(2, m, m)
        canvas[:, (m - h) // 2:(m - h) // 2 + h, (m - w) // 2:(m - w) // 2 + w] = tmp
        r, c = (m - 13) // 2, (m - 17) // 2
        assert torch.equal(out[i], canvas[:, r:r + 13, c:c + 17])


def test_dc_rotate_fills_with_mean_and_noise_is_small():
    const = torch.full((6, 1, 10, 10), 0.7)
    assert torch.allclose(DCAugment("rotate")(const, torch.Generator().manual_seed(0)), const, atol=1e-6)
    x = torch.randn(50, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    out = DCAugment("crop_noise")(x, torch.Generator().manual_seed(1))
    diff = (out - x).abs().amax(dim=(1, 2, 3))
    noisy = diff < 0.01
    assert 10 < int(noisy.sum()) < 40  # one op per image, chosen uniformly
    assert 0 < float(diff[noisy].max()) < 0.006


def test_dc_augment_rejects_unknown_ops():
    with pytest.raises(ValueError, match="unknown DC augmentation op"):
        DCAugment("crop_blur")


def test_long_training_logs_a_heartbeat_within_each_network(monkeypatch, caplog):
    """A network whose training outlasts the heartbeat interval says where it is in the job log
    (pass and images) instead of staying silent until it is tested."""
    from benchmarks import eval_networks
    from methods import training

    class Every(training.Heartbeat):
        def __init__(self, say, every_s=30.0):
            super().__init__(say, every_s=0.0)

    monkeypatch.setattr(eval_networks, "Heartbeat", Every)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 8, 8, generator=g), torch.arange(20) % 4
    with caplog.at_level(logging.INFO, logger="benchmarks.evaluate"):
        eval_networks.train_and_test(x, y, x, y, "ConvNetW32", num_classes=4, channel=1, im_size=(8, 8), epochs=2,
                                     seed=0, net_index=1, augment=None, device="cpu", batch_size=8)
    beats = [r.getMessage() for r in caplog.records if "pass" in r.getMessage()]
    # 3 passes (E + 1) x 3 minibatches, one line each with interval 0
    assert len(beats) == 9
    assert beats[0].startswith("ConvNetW32 network 2: pass 1/3 (8/20 images)")
    assert beats[-1].startswith("ConvNetW32 network 2: pass 3/3 (20/20 images)")


def test_heartbeat_speaks_only_after_its_interval():
    from methods.training import Heartbeat

    said = []
    hb = Heartbeat(said.append, every_s=3600)
    hb.beat(lambda: "early")
    assert said == []
    hb.last -= 3600
    hb.beat(lambda: "due")
    hb.beat(lambda: "again")
    assert said == ["due"]
