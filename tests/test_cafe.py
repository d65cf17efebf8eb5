"""CAFE: loss/gradient equal the plain oracle, every ablation switch does what it says, the
loops' control flow, probe without autograd, reproducibility and checkpoint/resume."""

from __future__ import annotations

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from methods import synthesis
from methods.config import build_config
from methods.context import MemoryCheckpointStore, RunContext, StopRequested
from methods.errors import MethodError
from methods.registry import get_method
from methods.cafe import (
    CAFEConfig,
    cafe_loss,
    default_layer_weights,
    probe_class_accuracy,
    resolve_layer_weights,
)
from methods.networks import get_network
from tests.conftest import make_classdata
from tests.oracles_fa import cafe_oracle_loss

# Comparisons run in float64: the summed squared errors reach ~1e5 and instance norm on deep,
# small maps amplifies float32 rounding (up to ~1e-2 relative on single gradient entries of the
# 64x64 depth-4 case), while in float64 our batched loss and the per-class oracle agree to ~1e-15.
RTOL = 1e-10
GRAD_TOL = 1e-9  # relative to the largest gradient entry

SMALL = dict(model="ConvNetW32", batch_real=8, probe_per_class=8, batch_train=64)


def _batches(num_classes, n, m, channel, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(num_classes * n, channel, size, size, generator=g, dtype=torch.float64)
    syn = torch.randn(num_classes * m, channel, size, size, generator=g, dtype=torch.float64)
    return real, syn.requires_grad_(True)


def _net(model, channel, num_classes, size, seed):
    return get_network(model, channel, num_classes, (size, size), seed=seed).double()


def _compare(net, real, syn, num_classes, n, m, layer_spec, emb, disc, real_with_autograd=False):
    lw = resolve_layer_weights(layer_spec, net.feature_names)
    ours = cafe_loss(net, real, syn, num_classes, layer_weights=lw, embedding_weight=emb, discrimination_weight=disc)
    (g_ours,) = torch.autograd.grad(ours, syn)
    pairs = [(net.feature_names[i], w) for i, w in lw]
    ref = cafe_oracle_loss(
        net, list(real.split(n)), list(syn.split(m)), pairs, emb, disc, real_with_autograd=real_with_autograd
    )
    (g_ref,) = torch.autograd.grad(ref, syn)
    return ours.detach(), ref.detach(), g_ours, g_ref


def _assert_close(ours, ref, g_ours, g_ref):
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=0.0)
    scale = g_ref.abs().max()
    assert scale > 0
    assert (g_ours - g_ref).abs().max() <= GRAD_TOL * scale


@pytest.mark.parametrize(
    "channel,num_classes,size,model",
    [
        (1, 10, 28, "ConvNetW32"),  # MNIST geometry (first conv padded by 3)
        (3, 10, 32, "ConvNetW32"),  # CIFAR10 geometry
        (3, 100, 16, "ConvNetW32"),  # CIFAR100's class count
        (1, 100, 16, "ConvNetW32"),
        (3, 10, 64, "ConvNetD4"),  # TinyImageNet geometry, depth 4
    ],
)
def test_loss_and_gradient_equal_per_class_oracle(channel, num_classes, size, model):
    net = _net(model, channel, num_classes, size, 1)
    n, m = (4, 2) if size < 64 else (2, 1)
    real, syn = _batches(num_classes, n, m, channel, size)
    _assert_close(*_compare(net, real, syn, num_classes, n, m, None, 1.0, 0.01))


def test_chunked_real_pass_equals_one_pass(monkeypatch):
    """Real classes forwarded in chunks (2 classes of 4 images per chunk here) give the same
    loss and gradient as the oracle, and the chunked probe the same accuracies."""
    monkeypatch.setattr(synthesis, "CPU_REAL_CHUNK_IMAGES", 8)
    net = _net("ConvNetW32", 3, 10, 16, 5)
    assert synthesis.classes_per_chunk(net, 10, 4) == 2
    real, syn = _batches(10, 4, 2, 3, 16)
    _assert_close(*_compare(net, real, syn, 10, 4, 2, None, 1.0, 0.01))
    labels = torch.arange(10).repeat_interleave(4)
    chunked = probe_class_accuracy(net, real, labels, 10)
    monkeypatch.setattr(synthesis, "CPU_REAL_CHUNK_IMAGES", 4096)
    torch.testing.assert_close(chunked, probe_class_accuracy(net, real, labels, 10))


def test_real_branch_is_a_constant_target():
    """The gradient w.r.t. the images is the same with the real graph kept (released code)."""
    net = _net("ConvNetW32", 3, 10, 16, 2)
    real, syn = _batches(10, 6, 3, 3, 16)
    ours, ref, g_ours, g_ref = _compare(net, real, syn, 10, 6, 3, None, 1.0, 0.5, real_with_autograd=True)
    _assert_close(ours, ref, g_ours, g_ref)


def test_discrimination_zero_gives_alignment_only_gradient():
    net = _net("ConvNetW32", 3, 10, 16, 3)
    real, syn = _batches(10, 4, 2, 3, 16)
    ours, ref, g_ours, g_ref = _compare(net, real, syn, 10, 4, 2, None, 1.0, 0.0)
    _assert_close(ours, ref, g_ours, g_ref)
    _, _, g_with, _ = _compare(net, real, syn, 10, 4, 2, None, 1.0, 0.01)
    assert not torch.allclose(g_with, g_ours)  # the term matters when on


@pytest.mark.parametrize("spec", [{"block2": 1.0}, ((1, 1.0),), {-3: 1.0}])
def test_single_layer_selection_equals_single_layer_oracle(spec):
    net = _net("ConvNetW32", 1, 10, 16, 4)
    real, syn = _batches(10, 4, 2, 1, 16)
    lw = resolve_layer_weights(spec, net.feature_names)
    assert lw == [(1, 1.0)]
    ours = cafe_loss(net, real, syn, 10, layer_weights=lw, embedding_weight=0.0, discrimination_weight=0.0)
    (g_ours,) = torch.autograd.grad(ours, syn)
    ref = cafe_oracle_loss(net, list(real.split(4)), list(syn.split(2)), {"block2": 1.0}, 0.0, 0.0)
    (g_ref,) = torch.autograd.grad(ref, syn)
    _assert_close(ours.detach(), ref.detach(), g_ours, g_ref)


def test_default_layer_weights_by_depth():
    assert default_layer_weights(["block1", "block2", "block3", "pooled"]) == [
        ("block1", 0.1), ("block2", 0.1), ("block3", 1.0), ("pooled", 1.0),
    ]
    d4 = get_network("ConvNetD4", 3, 10, (64, 64), seed=0).feature_names
    assert [w for _, w in default_layer_weights(d4)] == [0.1, 0.1, 0.1, 1.0, 1.0]


def test_config_errors_are_clear():
    with pytest.raises(MethodError, match="unknown layer 'block9'.*block1, block2, block3, pooled"):
        build_config(CAFEConfig, {"layer_weights": {"block9": 1.0}})
    with pytest.raises(MethodError, match="out of range"):
        build_config(CAFEConfig, {"layer_weights": [[7, 1.0]]})
    with pytest.raises(MethodError, match="does not expose"):
        build_config(CAFEConfig, {"model": "MLP"})
    with pytest.raises(MethodError, match="every loss term has weight 0"):
        build_config(CAFEConfig, {"layer_weights": {}, "embedding_weight": 0.0, "discrimination_weight": 0.0})
    with pytest.raises(MethodError, match="window must be >= 2"):
        build_config(CAFEConfig, {"window": 1})
    with pytest.raises(MethodError, match="init must be"):
        build_config(CAFEConfig, {"init": "zeros"})
    with pytest.raises(MethodError, match="unknown DSA strategy"):
        build_config(CAFEConfig, {"dsa": True, "dsa_strategy": "colour"})
    # YAML lists become tuples
    cfg = build_config(CAFEConfig, {"layer_weights": [["block3", 1], ["pooled", 2]]})
    assert cfg.layer_weights == (("block3", 1.0), ("pooled", 2.0))


def test_defaults_match_released_code():
    cfg = CAFEConfig()
    assert (cfg.iterations, cfg.lr_img, cfg.momentum_img, cfg.lr_net) == (2000, 0.1, 0.5, 0.01)
    assert [round(f * 2000) for f in cfg.lr_milestones] == [1200, 1600, 1800]
    assert (cfg.batch_real, cfg.batch_train, cfg.probe_per_class, cfg.init) == (256, 256, 128, "noise")
    assert (cfg.embedding_weight, cfg.discrimination_weight, cfg.window) == (1.0, 0.01, 10)
    assert (cfg.lambda_outer, cfg.lambda_inner, cfg.dynamic_bilevel) == (0.04, 0.03, True)
    m = get_method("cafe")
    assert m.eval_epochs_no_aug == 600 and not m.uses_dsa_in_eval()
    assert get_method("cafe_dsa").config.dsa and get_method("cafe_dsa").uses_dsa_in_eval()


# ------------------------------------------------------------------------------------------
# The probe
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["ConvNetW32", "ConvNetBN"])
def test_probe_allocates_no_autograd_graph(model):
    data = make_classdata(10, 12, 3, 16)
    net = get_network(model, 3, 10, (16, 16), seed=0)
    assert all(p.requires_grad for p in net.parameters())
    seen = []

    def hook(module, inputs, output):
        seen.append((torch.is_grad_enabled(), output.requires_grad, output.grad_fn))

    handles = [m.register_forward_hook(hook) for m in net.modules() if len(list(m.children())) == 0]
    accs = probe_class_accuracy(net, data.images, data.labels, 10)
    for h in handles:
        h.remove()
    assert seen and all(s == (False, False, None) for s in seen)
    assert accs.shape == (10,) and not accs.requires_grad
    assert ((accs >= 0) & (accs <= 1)).all()
    assert all(p.grad is None for p in net.parameters())


def test_probe_is_mean_per_class_accuracy():
    data = make_classdata(4, 10, 1, 16)
    net = get_network("ConvNetW32", 1, 4, (16, 16), seed=0)
    accs = probe_class_accuracy(net, data.images, data.labels, 4)
    with torch.no_grad():
        pred = net(data.images).argmax(1)
    expected = torch.stack([(pred[data.labels == c] == c).float().mean() for c in range(4)])
    torch.testing.assert_close(accs, expected)


# ------------------------------------------------------------------------------------------
# Loops
# ------------------------------------------------------------------------------------------


def _run(overrides, data=None, ipc=2, seed=0, context=None):
    data = data or make_classdata(10, 20, 1, 16)
    cfg = dict(SMALL)
    cfg.update(overrides)
    return get_method("cafe", cfg).condense(data, ipc, seed=seed, context=context)


def test_fixed_bilevel_runs_exact_loop_counts():
    s = _run(dict(dynamic_bilevel=False, outer_loop=3, inner_loop=2, iterations=2))
    # per iteration: 3 image steps, inner training after steps 1 and 2 only (not after the last)
    assert s.cost["image_steps"] == 6
    assert s.cost["inner_epochs"] == 2 * 2 * 2
    assert s.cost["cap_fired_outer"] == 0 and s.cost["cap_fired_inner"] == 0
    table = _run(dict(dynamic_bilevel=False, iterations=2), ipc=1)  # DC table: IPC 1 -> (1, 1)
    assert table.cost["image_steps"] == 2 and table.cost["inner_epochs"] == 0
    assert synthesis.get_loops(10) == (10, 50) and synthesis.get_loops(60) == (50, 10) and synthesis.get_loops(15) == (10, 50)


def test_cap_stops_loops_that_never_meet_their_criterion_and_is_recorded():
    # range < 0 never holds (outer), range > 1 never holds (inner): both loops run to the cap
    s = _run(dict(iterations=2, lambda_outer=0.0, lambda_inner=1.0, max_loop_steps=3, window=2))
    assert s.cost["cap_fired_outer"] == 2
    assert s.cost["image_steps"] == 2 * 3
    assert s.cost["cap_fired_inner"] == 2 * 2  # inner loops after outer passes 1 and 2
    assert s.cost["inner_epochs"] == 2 * 2 * 3


def test_dynamic_loops_respect_window_minimums():
    s = _run(dict(iterations=1, window=3, max_loop_steps=40))
    # the outer break can fire from the window-th pass on; each inner loop runs >= window epochs
    assert s.cost["image_steps"] >= 3
    assert s.cost["inner_loops"] == s.cost["image_steps"] - 1 + s.cost["cap_fired_outer"]
    assert s.cost["inner_epochs"] >= 3 * s.cost["inner_loops"]
    assert s.cost["mean_image_steps_per_iteration"] == s.cost["image_steps"]


def test_probe_carryover_changes_the_loops():
    """The released accumulation makes every inner loop stop after exactly ``window`` epochs
    once the probe accuracy is above ~0.3; without it the same runs train longer."""
    data = make_classdata(10, 20, 1, 16)
    on = _run(dict(iterations=1, max_loop_steps=30), data=data)
    off = _run(dict(iterations=1, max_loop_steps=30, probe_carryover=False), data=data)
    assert on.cost["inner_epochs"] == 10 * on.cost["inner_loops"]
    assert off.cost["inner_epochs"] > 10 * off.cost["inner_loops"]
    assert not torch.equal(on.images, off.images)


def test_lr_milestones_halve_the_image_lr(monkeypatch):
    lrs = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        if any(p.shape[0] == 20 and p.dim() == 4 for g in self.param_groups for p in g["params"]):
            lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    _run(dict(dynamic_bilevel=False, outer_loop=1, iterations=10))
    assert lrs == pytest.approx([0.1] * 6 + [0.05] * 2 + [0.025] + [0.0125])


# ------------------------------------------------------------------------------------------
# Reproducibility, resume, DSA, geometry
# ------------------------------------------------------------------------------------------


def test_seeded_runs_are_bit_identical():
    ov = dict(iterations=2, window=3, max_loop_steps=8)
    a, b = _run(ov, seed=5), _run(ov, seed=5)
    assert torch.equal(a.images, b.images)
    for key in ("image_steps", "inner_epochs", "cap_fired_outer", "cap_fired_inner"):
        assert a.cost[key] == b.cost[key]
    assert not torch.equal(a.images, _run(ov, seed=6).images)


@pytest.mark.parametrize("dsa", [False, True])
def test_checkpoint_resume_equals_uninterrupted_run(dsa):
    data = make_classdata(10, 20, 1, 16)
    ov = dict(iterations=4, window=3, max_loop_steps=6, dsa=dsa)
    full = _run(ov, data=data, seed=3)
    store = MemoryCheckpointStore()
    with pytest.raises(StopRequested):
        _run(ov, data=data, seed=3, context=RunContext(checkpoint=store, checkpoint_every=1, stop_after=2))
    assert store.load()["iteration"] == 2
    resumed = _run(ov, data=data, seed=3, context=RunContext(checkpoint=store, checkpoint_every=1))
    assert torch.equal(full.images, resumed.images)
    for key in ("image_steps", "inner_epochs", "inner_loops", "cap_fired_outer", "cap_fired_inner"):
        assert full.cost[key] == resumed.cost[key]


def test_dsa_uses_one_siamese_draw_per_class_per_image_step(monkeypatch):
    from methods.augment import DSA

    calls = []
    orig = DSA.siamese

    def spy(self, tensors, generator):
        calls.append([t.shape[0] for t in tensors])
        return orig(self, tensors, generator)

    monkeypatch.setattr(DSA, "siamese", spy)
    data = make_classdata(10, 20, 1, 16, name="digits")
    s = get_method("cafe_dsa", dict(SMALL, dynamic_bilevel=False, outer_loop=2, inner_loop=1, iterations=1)).condense(
        data, 2, seed=0
    )
    assert len(calls) == 10 * 2 and all(c == [8, 2] for c in calls)
    assert s.eval_defaults == {"dsa": True, "dsa_strategy": "color_crop_cutout_scale_rotate", "epochs_no_aug": 600}


def test_many_classes_and_rgb_geometry_runs():
    data = make_classdata(100, 3, 3, 16)
    s = _run(dict(dynamic_bilevel=False, outer_loop=2, inner_loop=1, iterations=1, batch_real=3), data=data, ipc=1)
    assert s.images.shape == (100, 3, 16, 16) and s.labels.tolist() == sorted(list(range(100)))
    assert torch.isfinite(s.images).all()


def test_ipc_larger_than_class_is_rejected():
    with pytest.raises(MethodError, match="IPC 50"):
        _run(dict(iterations=1), ipc=50)


def test_resume_from_another_run_is_rejected():
    store = MemoryCheckpointStore()
    with pytest.raises(StopRequested):
        _run(dict(dynamic_bilevel=False, iterations=2), context=RunContext(checkpoint=store, stop_after=1))
    with pytest.raises(MethodError, match="different run"):
        _run(dict(dynamic_bilevel=False, iterations=2), ipc=3, context=RunContext(checkpoint=store))
