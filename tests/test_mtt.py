"""MTT/DATM: the matching loss and its gradient through the unrolled student steps against a
float64 oracle, TESLA's memory-constant gradient equal to the plain one, the hyper-parameter
table, checks of the trajectories, resume, and the learned lr / soft labels reaching the
evaluator."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from benchmarks.data import Dataset
from benchmarks.evaluate import EvaluationError, evaluate_synset
from benchmarks.experts import train_expert
from methods.augment import DSA
from methods.config import build_config
from methods.context import MemoryCheckpointStore, RunContext, StopRequested
from methods.errors import MethodError
from methods.mtt import (
    DEFAULT_ROW,
    HYPERPARAMETERS,
    FunctionalNet,
    MTTConfig,
    StepPlan,
    _start_window,
    plan_steps,
    table_row,
    unrolled_match,
)
from methods.networks import get_network
from methods.registry import get_method, method_info
from methods.rng import make_generator
from methods.trajectories import RESOURCE, TrajectoryKey, Trajectories
from tests.conftest import make_classdata
from tests.oracles_tm import linear_forward, mtt_oracle_loss

MODEL = "ConvNetW32"
TINY = dict(model=MODEL, syn_steps=3, expert_epochs=1, max_start_epoch=2, lr_img=100.0, lr_lr=1e-5,
            lr_teacher=0.01, zca=False, num_experts=2, expert_train_epochs=3, iterations=4)


def _linear_case(soft: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c, dim, n = 4, 12, 8
    images = torch.randn(n, 1, 3, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    if soft:
        labels = torch.randn(n, c, generator=g, dtype=torch.float64).requires_grad_(True)
    else:
        labels = torch.arange(c).repeat_interleave(n // c)
    start = 0.1 * torch.randn(c * dim + c, generator=g, dtype=torch.float64)
    target = start + 0.05 * torch.randn(c * dim + c, generator=g, dtype=torch.float64)
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    batches = [torch.randperm(n, generator=g)[:5] for _ in range(4)]
    return c, dim, images, labels, start, target, lr, batches


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("memory_constant", [False, True])
def test_loss_and_gradient_equal_the_plain_transcription(soft, memory_constant):
    c, dim, images, labels, start, target, lr, batches = _linear_case(soft)
    steps = [StepPlan(b, None) for b in batches]
    loss, g_img, g_lr, g_lab = unrolled_match(linear_forward(c, dim), start, target, images, labels, lr, steps,
                                              memory_constant=memory_constant)
    ref = mtt_oracle_loss(start, target, images, labels, lr, batches, c)
    wrt = [images, lr] + ([labels] if soft else [])
    ref_grads = torch.autograd.grad(ref, wrt)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(g_img, ref_grads[0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g_lr, ref_grads[1], rtol=1e-10, atol=1e-14)
    if soft:
        torch.testing.assert_close(g_lab, ref_grads[2], rtol=1e-10, atol=1e-14)
    else:
        assert g_lab is None
    # the gradient is the derivative: a central difference along a random direction agrees
    d = torch.randn(images.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        up = mtt_oracle_loss(start, target, images + eps * d, labels, lr, batches, c)
        down = mtt_oracle_loss(start, target, images - eps * d, labels, lr, batches, c)
    assert abs(float((up - down) / (2 * eps)) - float((g_img * d).sum())) < 1e-7 * max(1.0, float(g_img.abs().sum()))
    assert float(g_img.abs().max()) > 0 and float(g_lr.abs()) > 0


@pytest.mark.parametrize("soft", [False, True])
def test_memory_constant_gradient_equals_the_unrolled_one_on_a_convnet_with_dsa(soft):
    data = make_classdata(4, 3, 1, 16)
    net = get_network(MODEL, 1, 4, (16, 16), seed=3).double()
    forward = FunctionalNet(net)
    g = torch.Generator().manual_seed(1)
    start = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    target = start + 0.01 * torch.randn(start.shape, generator=g, dtype=torch.float64)
    images = data.images[:8].double().clone().requires_grad_(True)
    labels = (torch.randn(8, 4, generator=g, dtype=torch.float64).requires_grad_(True) if soft
              else torch.arange(4).repeat_interleave(2))
    dsa = DSA("color_crop_cutout_scale_rotate")
    steps = plan_steps(8, 5, 3, images.shape, dsa, make_generator(0), make_generator(1))
    assert any(s.draw is not None and s.draw.ops for s in steps)
    out = []
    for mc in (False, True):
        lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        out.append(unrolled_match(forward, start, target, images, labels, lr, steps, dsa, memory_constant=mc))
    (l0, gi0, gl0, gy0), (l1, gi1, gl1, gy1) = out
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    torch.testing.assert_close(gi1, gi0, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(gl1, gl0, rtol=1e-9, atol=1e-13)
    if soft:
        torch.testing.assert_close(gy1, gy0, rtol=1e-9, atol=1e-13)


def test_table_rows_and_missing_ipc_message():
    assert table_row("cifar10", 1) == HYPERPARAMETERS[("cifar10", 1)]
    row = table_row("CIFAR10", 1)
    assert (row.syn_steps, row.expert_epochs, row.max_start_epoch, row.lr_lr, row.lr_teacher, row.zca) == (
        50, 2, 2, 1e-7, 0.01, True)
    assert table_row("digits", 7) == DEFAULT_ROW
    with pytest.raises(MethodError) as exc:
        MTTConfig().resolve("cifar10", 20)
    msg = str(exc.value)
    assert "no row for cifar10 at IPC 20" in msg and "IPC 1, 10, 50" in msg and "syn_steps" in msg and "--set" in msg
    assert "\n" not in msg
    full = dict(syn_steps=5, expert_epochs=2, max_start_epoch=4, lr_img=10.0, lr_lr=1e-5, lr_teacher=0.01, zca=False)
    assert MTTConfig(**full).resolve("cifar10", 20).syn_steps == 5
    assert MTTConfig(syn_steps=7).resolve("cifar10", 10) == dataclasses.replace(HYPERPARAMETERS[("cifar10", 10)], syn_steps=7)
    with pytest.raises(MethodError, match="batch norm"):
        build_config(MTTConfig, {"model": "ConvNetBN"})
    with pytest.raises(MethodError, match="init must be"):
        build_config(MTTConfig, {"init": "kmeans"})


def test_registry_variant_and_eval_plan():
    info = method_info("datm")
    assert info.variant_of == "mtt" and info.family == "trajectory_matching"
    assert info.overrides["soft_labels"] is True and info.overrides["init"] == "correct"
    plan = get_method("mtt").eval_plan(make_classdata(2, 2, 1, 16, name="digits"))
    assert plan.dsa and plan.epochs_with_aug == 1000 and plan.lr_source == "learned"
    assert plan.resolve("digits", "ConvNet", learned_lr=0.02).epochs == 1000


def test_datm_window_grows_from_half_to_max():
    cfg = get_method("datm", dict(max_start_epoch=20)).config
    row = cfg.resolve("digits", 1)
    assert _start_window(cfg, row, 0, 1000) == (0, 10)
    assert _start_window(cfg, row, 50, 1000) == (0, 15)
    assert _start_window(cfg, row, 100, 1000) == (0, 20)
    assert _start_window(cfg, row, 900, 1000) == (0, 20)
    mtt = get_method("mtt", dict(max_start_epoch=20)).config
    assert _start_window(mtt, row, 0, 1000) == (0, 20)


# --------------------------------------------------------------------------------------------
# Runs on tiny data with tiny trained experts
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    data = make_classdata(4, 12, 1, 16, name="synthetic")
    key = TrajectoryKey(dataset="synthetic", arch=MODEL, zca=False, epochs=3, batch=16)
    experts = [train_expert(data, key, i, device=torch.device("cpu")) for i in range(2)]
    return data, Trajectories(key=key, experts=experts)


def _ctx(trajectories, **kw):
    return RunContext(resources={RESOURCE: trajectories}, **kw)


def test_resume_is_bit_identical(tiny):
    data, traj = tiny
    for name in ("mtt", "datm"):
        a = get_method(name, TINY).condense(data, 2, seed=3, context=_ctx(traj))
        store = MemoryCheckpointStore()
        with pytest.raises(StopRequested):
            get_method(name, TINY).condense(data, 2, seed=3, context=_ctx(traj, checkpoint=store, stop_after=2))
        assert store.load()["iteration"] == 2
        b = get_method(name, TINY).condense(data, 2, seed=3, context=_ctx(traj, checkpoint=store))
        assert torch.equal(a.images, b.images) and a.learned_lr == b.learned_lr
        assert a.learned_lr != TINY["lr_teacher"]  # the lr is learned
        if name == "datm":
            assert torch.equal(a.soft_labels, b.soft_labels)
    mc = get_method("mtt", dict(TINY, memory_constant=True)).condense(data, 2, seed=3, context=_ctx(traj))
    plain = get_method("mtt", TINY).condense(data, 2, seed=3, context=_ctx(traj))
    torch.testing.assert_close(mc.images, plain.images, rtol=1e-4, atol=1e-5)


def test_learned_lr_and_soft_labels_reach_the_evaluator(tiny):
    data, traj = tiny
    ds = Dataset(name="synthetic", train=data, test_images=data.images[:16], test_labels=data.labels[:16],
                 num_classes=4, channel=1, im_size=(16, 16), mean=data.mean, std=data.std,
                 class_names=tuple("abcd"))
    mtt = get_method("mtt", TINY).condense(data, 2, seed=0, context=_ctx(traj))
    res = evaluate_synset(mtt, ds, MODEL, num_eval=1, epochs=2)
    assert res.plan["lr"] == pytest.approx(mtt.learned_lr) and res.plan["lr_source"] == "learned"
    assert res.plan["augmentation"].startswith("dsa:") and res.labels == "hard"
    with pytest.raises(EvaluationError, match="learned lr"):
        evaluate_synset(dataclasses.replace(mtt, learned_lr=None), ds, MODEL, num_eval=1, epochs=2)
    datm = get_method("datm", TINY).condense(data, 2, seed=0, context=_ctx(traj))
    assert datm.soft_labels is not None and datm.soft_labels.shape == (8, 4)
    res = evaluate_synset(datm, ds, MODEL, num_eval=1, epochs=2)
    assert res.labels == "soft" and res.plan["loss"] == "soft_ce" and res.plan["lr"] == pytest.approx(datm.learned_lr)
    with pytest.raises(EvaluationError, match="soft labels"):
        evaluate_synset(dataclasses.replace(datm, soft_labels=None), ds, MODEL, num_eval=1, epochs=2)


def test_datm_starts_from_correctly_classified_images_and_expert_logits(tiny):
    data, traj = tiny
    cfg = dict(TINY, iterations=1, lr_img=1e-12, lr_label=1e-12)
    syn = get_method("datm", cfg).condense(data, 2, seed=0, context=_ctx(traj))
    net = get_network(MODEL, 1, 4, (16, 16), seed=0)
    logits = FunctionalNet(net)(traj.experts[0][-1], syn.images)
    pred = logits.argmax(1)
    correct_available = []
    for c in range(4):
        idx = data.indices_by_class[c]
        correct_available.append(int((FunctionalNet(net)(traj.experts[0][-1], data.images[idx]).argmax(1) == c).sum()))
    for c in range(4):
        got = int((pred[2 * c : 2 * c + 2] == c).sum())
        assert got == min(2, correct_available[c])
    both = torch.stack([FunctionalNet(net)(e[-1], syn.images).detach() for e in traj.experts])
    ok = both.argmax(2) == torch.arange(4).repeat_interleave(2).view(1, -1)
    for j in range(8):
        want = both[ok[:, j], j].mean(0) if ok[:, j].any() else both[:, j].mean(0)
        torch.testing.assert_close(syn.soft_labels[j], want, rtol=1e-3, atol=1e-4)
    assert ok.any(0).sum() >= 4


def test_bad_trajectories_one_clear_message_each(tiny):
    data, traj = tiny
    m = get_method("mtt", TINY)
    with pytest.raises(MethodError) as exc:
        m.condense(data, 1, seed=0)
    assert "needs expert trajectories" in str(exc.value) and "condbench experts --dataset synthetic" in str(exc.value)
    cases = [
        (dataclasses.replace(traj, key=dataclasses.replace(traj.key, dataset="cifar10")), "of dataset 'cifar10'"),
        (dataclasses.replace(traj, key=dataclasses.replace(traj.key, arch="ConvNet")), "architecture 'ConvNet'"),
        (dataclasses.replace(traj, key=dataclasses.replace(traj.key, zca=True)), "trained with ZCA"),
    ]
    for bad, text in cases:
        with pytest.raises(MethodError, match=text) as exc:
            m.condense(data, 1, seed=0, context=_ctx(bad))
        assert "\n" not in str(exc.value) and "condbench experts" in str(exc.value)
    with pytest.raises(MethodError) as exc:
        get_method("mtt", dict(TINY, max_start_epoch=3)).condense(data, 1, seed=0, context=_ctx(traj))
    assert "max_start_epoch 3 + expert_epochs 1 = 4 exceeds the 3 epochs" in str(exc.value)
    assert "max_start_epoch=2" in str(exc.value)
    with pytest.raises(MethodError, match="no row for cifar10 at IPC 3"):
        get_method("mtt", dict(model=MODEL)).condense(
            dataclasses.replace(data, name="cifar10"), 3, seed=0, context=_ctx(traj))


def test_a_diverging_run_stops_with_one_line(tiny):
    data, traj = tiny
    with pytest.raises(MethodError) as exc:
        get_method("mtt", dict(TINY, lr_lr=1e6, iterations=3)).condense(data, 2, seed=0, context=_ctx(traj))
    msg = str(exc.value)
    assert ("diverged" in msg or "learned lr became" in msg) and "lower" in msg and "\n" not in msg
