"""DC / DSA (methods/dc.py): equality with the per-class oracle, loops, config, checkpointing,
reproducibility, and a short run that beats random selection."""

from __future__ import annotations

import pytest
import torch

from methods import MemoryCheckpointStore, RunContext, StopRequested, get_method
from methods.errors import MethodError
from methods.realdata import ClassData
from methods.rng import make_generator
from methods.dc import (
    DC,
    DCConfig,
    batched_match_distance,
    batched_supported,
    get_loops,
    match_distance,
    match_step,
    resolve_path,
)
from methods.networks import get_network
from methods.training import accuracy, sgd, train_epoch
from tests.conftest import make_classdata
from tests.oracles import dc_oracle_distance, dc_oracle_loss

# Tolerance of the oracle comparisons (float32): the loss to a relative 1e-5; every entry of the
# image gradient within GRAD_REL[path] x the gradient's largest magnitude. The per-class path
# computes what the oracle computes (measured difference 0); the batched path sums in another
# order (measured up to ~1e-5 relative in float32, ~1e-15 in float64).
LOSS_RTOL = 1e-5
GRAD_REL = {"per_class": 1e-6, "batched": 5e-5}


def assert_matches_oracle(net, reals, syn, ipc, distance, path):
    n_cls = len(reals)
    labels = list(range(n_cls))
    leaf_o = syn.clone().requires_grad_(True)
    loss_o = dc_oracle_loss(net, reals, [leaf_o[c * ipc : (c + 1) * ipc] for c in labels], labels, distance)
    (grad_o,) = torch.autograd.grad(loss_o, leaf_o)

    leaf = syn.clone().requires_grad_(True)
    batches = [(c, reals[c], leaf[c * ipc : (c + 1) * ipc]) for c in labels]
    loss = match_step(net, iter(batches), distance=distance, path=path, inputs=[leaf])
    assert not loss.requires_grad
    torch.testing.assert_close(loss, loss_o.detach(), rtol=LOSS_RTOL, atol=0)
    scale = float(grad_o.abs().max())
    assert scale > 0
    torch.testing.assert_close(leaf.grad, grad_o, rtol=0, atol=GRAD_REL[path] * scale)
    # no parameter gradients are accumulated by the matching step
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("path", ["per_class", "batched"])
@pytest.mark.parametrize("ipc", [1, 10])
@pytest.mark.parametrize("distance", ["layerwise", "mse", "cos"])
@pytest.mark.parametrize("channel,size", [(1, 28), (3, 32)])
def test_matching_loss_and_image_gradient_equal_oracle(path, ipc, distance, channel, size):
    n_cls = 3
    real = make_classdata(n_cls, 6, channel, size, seed=1)
    g = make_generator(2)
    net = get_network("ConvNetW32", channel, n_cls, (size, size), seed=3)
    reals = [real.sample(c, 6, g) for c in range(n_cls)]
    syn = torch.randn(n_cls * ipc, channel, size, size, generator=g)
    assert_matches_oracle(net, reals, syn, ipc, distance, path)


@pytest.mark.parametrize("path", ["per_class", "batched"])
@pytest.mark.parametrize("model", ["ConvNet", "ConvNetLN", "ConvNetBN"])
def test_oracle_equality_default_width_layernorm_and_frozen_batchnorm(path, model):
    """Width 128 (the default ConvNet), LayerNorm's 3-D weights, BatchNorm in eval mode; real
    batches of unequal sizes per class (the batched path pads and masks)."""
    n_cls, ipc = 3, 2
    real = make_classdata(n_cls, 7, 3, 16, seed=4)
    g = make_generator(5)
    net = get_network(model, 3, n_cls, (16, 16), seed=6)
    if model == "ConvNetBN":
        net.train()
        with torch.no_grad():
            net(real.images[:12])
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    reals = [real.sample(c, n, g) for c, n in zip(range(n_cls), (7, 4, 5))]
    syn = torch.randn(n_cls * ipc, 3, 16, 16, generator=g)
    assert_matches_oracle(net, reals, syn, ipc, "layerwise", path)


def test_batched_path_falls_back_for_layernorm_and_is_exact_in_float64():
    """vmap's double backward through layer_norm is wrong in torch 2.14, so LayerNorm nets use
    the per-class loop; elsewhere the batched path equals the oracle to float64 precision."""
    assert not batched_supported(get_network("ConvNetLN", 1, 2, (8, 8), seed=0))
    assert batched_supported(get_network("ConvNetBN", 1, 2, (8, 8), seed=0))
    real = make_classdata(3, 5, 3, 16, seed=4)
    g = make_generator(5)
    net = get_network("ConvNetGN", 3, 3, (16, 16), seed=6).double()
    reals = [real.sample(c, 5, g).double() for c in range(3)]
    syn = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    leaf_o = syn.clone().requires_grad_(True)
    loss_o = dc_oracle_loss(net, reals, [leaf_o[2 * c : 2 * c + 2] for c in range(3)], [0, 1, 2], "layerwise")
    (grad_o,) = torch.autograd.grad(loss_o, leaf_o)
    leaf = syn.clone().requires_grad_(True)
    match_step(net, [(c, reals[c], leaf[2 * c : 2 * c + 2]) for c in range(3)], distance="layerwise",
               path="batched", inputs=[leaf])
    torch.testing.assert_close(leaf.grad, grad_o, rtol=1e-10, atol=1e-12)


def test_distances_match_the_reference_definitions():
    g = make_generator(0)
    shapes = [(4, 3, 3, 3), (4,), (5, 2, 2), (6, 7), (6,)]
    gs = [torch.randn(s, generator=g) for s in shapes]
    gr = [torch.randn(s, generator=g) for s in shapes]
    for d in ("layerwise", "mse", "cos"):
        torch.testing.assert_close(match_distance(gs, gr, d), dc_oracle_distance(gs, gr, d))
        batched = batched_match_distance([torch.stack([a, 2 * a]) for a in gs], [torch.stack([b, b]) for b in gr], d)
        expected = dc_oracle_distance(gs, gr, d) + dc_oracle_distance([2 * a for a in gs], gr, d)
        torch.testing.assert_close(batched, expected)
    # 1-D tensors contribute nothing to the layer-wise distance
    bias_only = match_distance([gs[1]], [gr[1]], "layerwise")
    assert float(bias_only) == 0.0
    # equal gradients: layer-wise distance ~0 (up to the 1e-6 guard), rows add up
    same = match_distance(gs, gs, "layerwise")
    assert 0 <= float(same) < 1e-4
    opposite = match_distance([gs[3]], [-gs[3]], "layerwise")
    torch.testing.assert_close(opposite, torch.tensor(12.0), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------
# Loops, paths, config
# ---------------------------------------------------------------------------------------------


def test_loops_table_and_rule_for_other_ipcs():
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    for ipc, loops in table.items():
        assert get_loops(ipc) == loops
    assert get_loops(5) == (1, 1)
    assert get_loops(15) == (10, 50)
    assert get_loops(49) == (40, 15)
    assert get_loops(100) == (50, 10)
    m = get_method("dc", {"outer_loop": 3})
    assert m.loops(10) == (3, 50)


def test_auto_path_is_per_class_on_cpu_and_batched_on_cuda():
    assert resolve_path("auto", "cpu") == "per_class"
    assert resolve_path("auto", torch.device("cuda")) == "batched"
    assert resolve_path("batched", "cpu") == "batched"
    with pytest.raises(MethodError):
        resolve_path("fast", "cpu")


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"iterations": 0}, "iterations"),
        ({"outer_loop": 0}, "outer_loop"),
        ({"inner_loop": -1}, "inner_loop"),
        ({"lr_img": 0.0}, "lr_img"),
        ({"momentum_img": 1.0}, "momentum_img"),
        ({"batch_real": 0}, "batch_real"),
        ({"model": "ConvNetXL"}, "unknown architecture"),
        ({"distance": "l2"}, "distance"),
        ({"path": "gpu"}, "path"),
        ({"init": "zeros"}, "init"),
        ({"dsa_strategy": "crop"}, "dsa is False"),
        ({"dsa": True, "dsa_strategy": "crop_blur"}, "'blur'"),
        ({"bogus": 1}, "unknown config key"),
    ],
)
def test_bad_config_values_are_method_errors(overrides, fragment):
    with pytest.raises(MethodError, match=fragment):
        get_method("dc", overrides)


def test_dsa_is_a_variant_of_dc_with_dsa_defaults():
    m = get_method("dsa")
    assert isinstance(m, DC) and m.name == "dsa"
    assert m.config.dsa and m.config.init == "real"
    assert m.uses_dsa_in_eval() and not get_method("dc").uses_dsa_in_eval()
    assert m.eval_epochs_no_aug == 300
    digits = make_classdata(2, 3, 1, 8, name="mnist")
    cifar = make_classdata(2, 3, 3, 8, name="cifar10")
    assert m.augmentation(digits).strategy == "color_crop_cutout_scale_rotate"
    assert m.augmentation(cifar).strategy == "color_crop_cutout_flip_scale_rotate"
    assert m.eval_defaults(cifar)["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate"
    assert get_method("dsa", {"dsa_strategy": "crop"}).augmentation(cifar).strategy == "crop"
    assert get_method("dc").augmentation(cifar) is None
    assert DCConfig().iterations == 1000 and DCConfig().lr_img == 0.1 and DCConfig().batch_real == 256


# ---------------------------------------------------------------------------------------------
# Runs: reproducibility, checkpointing, paths, BatchNorm, costs
# ---------------------------------------------------------------------------------------------

TINY = {"model": "ConvNetW32", "batch_real": 8, "outer_loop": 2, "inner_loop": 2}


def tiny_data(name: str = "synthetic") -> ClassData:
    return make_classdata(4, 10, 1, 8, seed=0, name=name)


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_same_seed_same_synthetic_set_and_different_seed_differs(method):
    real = tiny_data()
    m = get_method(method, dict(TINY, iterations=2))
    a = m.condense(real, 2, seed=11)
    b = m.condense(real, 2, seed=11)
    c = m.condense(real, 2, seed=12)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert a.images.shape == (8, 1, 8, 8)


@pytest.mark.parametrize("method", ["dc", "dsa"])
def test_resume_after_preemption_equals_uninterrupted_run(method):
    real = tiny_data()
    m = get_method(method, dict(TINY, iterations=5))
    full = m.condense(real, 2, seed=3)

    store = MemoryCheckpointStore()
    with pytest.raises(StopRequested):
        m.condense(real, 2, seed=3, context=RunContext(checkpoint=store, checkpoint_every=100, stop_after=2))
    assert store.load()["iteration"] == 2
    with pytest.raises(StopRequested):  # a second preemption, from the resumed run
        m.condense(real, 2, seed=3, context=RunContext(checkpoint=store, checkpoint_every=100, stop_after=1))
    assert store.load()["iteration"] == 3
    resumed = m.condense(real, 2, seed=3, context=RunContext(checkpoint=store, checkpoint_every=1))
    assert torch.equal(resumed.images, full.images)  # bit-identical on CPU
    assert resumed.extra["loss_history"] == full.extra["loss_history"]
    assert resumed.cost["image_steps"] == full.cost["image_steps"] == 10
    assert resumed.cost["inner_epochs"] == full.cost["inner_epochs"] == 10
    # a checkpoint of another run is refused with a clear message
    with pytest.raises(MethodError, match="checkpoint"):
        m.condense(real, 2, seed=4, context=RunContext(checkpoint=store))


def test_context_iterations_override_logging_and_costs():
    real = tiny_data()
    messages: list[str] = []
    s = get_method("dc", dict(TINY, iterations=100)).condense(
        real, 1, seed=0, context=RunContext(iterations=3, log=messages.append)
    )
    assert s.cost["iterations"] == 3 and len(s.extra["loss_history"]) == 3
    assert s.cost["image_steps"] == 6 and s.cost["inner_epochs"] == 6
    for key in ("wall_time_s", "peak_memory_mb", "seconds_per_image_step", "matching_time_s", "inner_time_s"):
        assert s.cost[key] > 0
    assert any("matching loss" in msg for msg in messages)
    assert s.method == "dc" and s.config["model"] == "ConvNetW32" and s.extra["path"] == "per_class"


def test_batched_and_per_class_runs_agree():
    real = tiny_data()
    a = get_method("dsa", dict(TINY, iterations=2, path="per_class")).condense(real, 2, seed=1)
    b = get_method("dsa", dict(TINY, iterations=2, path="batched")).condense(real, 2, seed=1)
    assert b.extra["path"] == "batched"
    torch.testing.assert_close(a.images, b.images, rtol=1e-4, atol=1e-4)


BN_RUN = {"model": "ConvNetBN", "iterations": 2, "outer_loop": 2, "inner_loop": 1, "batch_real": 8}


def _bn_during_matching(monkeypatch, freeze=None):
    """Run DC on ConvNetBN and record, for every image step, each BatchNorm module's mode and
    running statistics right after the real-statistics pass, when the matching step starts and
    when it ends. ``freeze`` replaces :func:`methods.dc.freeze_batchnorm` (to show what a run
    without the freeze would look like)."""
    import methods.dc as dc_mod

    steps: list[dict] = []

    def bn_state(net):
        return [(m.training, m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
                for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    frozen = freeze or dc_mod.freeze_batchnorm

    def spy_freeze(net, real, gen, per_class):
        before = bn_state(net)
        frozen(net, real, gen, per_class)
        steps.append({"before_freeze": before, "after_freeze": bn_state(net)})

    real_match = dc_mod.match_step

    def spy_match(net, batches, **kw):
        steps[-1]["start"] = bn_state(net)
        out = real_match(net, batches, **kw)
        steps[-1]["end"] = bn_state(net)
        return out

    monkeypatch.setattr(dc_mod, "freeze_batchnorm", spy_freeze)
    monkeypatch.setattr(dc_mod, "match_step", spy_match)
    s = get_method("dc", BN_RUN).condense(make_classdata(3, 20, 1, 8, seed=2), 1, seed=0)
    assert torch.isfinite(s.images).all()
    return steps


def _assert_statistics_frozen(steps):
    """Every image step: BN in eval mode for the synthetic (and real) forwards of the matching
    step, with exactly the statistics of the real-statistics pass, which the step leaves as
    they are; the pass itself updated them (one train-mode forward per image step)."""
    assert len(steps) == BN_RUN["iterations"] * BN_RUN["outer_loop"]
    for step in steps:
        assert step["after_freeze"]
        for (*_, n0), (*_, n1) in zip(step["before_freeze"], step["after_freeze"]):
            assert n1 == n0 + 1, "the real-statistics pass did not run once"
        for when in ("start", "end"):
            for (training, mean, var, n), (_, mean0, var0, n0) in zip(step[when], step["after_freeze"]):
                assert not training, f"BatchNorm in train mode at the {when} of the matching step"
                assert torch.equal(mean, mean0) and torch.equal(var, var0) and n == n0


def test_batchnorm_statistics_are_frozen_for_the_matching_step(monkeypatch):
    _assert_statistics_frozen(_bn_during_matching(monkeypatch))


def test_frozen_batchnorm_check_catches_a_run_without_the_freeze(monkeypatch):
    """The check above fails for the two ways of losing the freeze: statistics computed but BN
    left in train mode (batch statistics of the synthetic images, running stats drift), and
    no real-statistics pass at all."""
    from methods.dc import freeze_batchnorm

    def stats_but_train_mode(net, real, gen, per_class):
        freeze_batchnorm(net, real, gen, per_class)
        net.train()

    def no_pass(net, real, gen, per_class):
        net.train()

    for variant in (stats_but_train_mode, no_pass):
        with monkeypatch.context() as m:
            steps = _bn_during_matching(m, freeze=variant)
        with pytest.raises(AssertionError):
            _assert_statistics_frozen(steps)


def test_real_init_starts_from_real_images_and_ipc_is_validated():
    real = tiny_data()
    s = get_method("dc", dict(TINY, init="real", iterations=1, outer_loop=1)).condense(real, 1, seed=0)
    assert s.images.shape == (4, 1, 8, 8)
    with pytest.raises(MethodError, match="IPC"):
        get_method("dc", TINY).condense(real, 11, seed=0)


# ---------------------------------------------------------------------------------------------
# A short run learns something
# ---------------------------------------------------------------------------------------------


def _noisy_blobs() -> tuple[ClassData, torch.Tensor, torch.Tensor]:
    """10 classes of 1x16x16 blobs with heavy per-image noise: one random real image is a poor
    class representative, which is exactly where condensation should help."""
    full = make_classdata(10, 60, 1, 16, seed=0, name="blobs")
    noisy = full.images + 2.0 * torch.randn(full.images.shape, generator=make_generator(5))
    tr = torch.cat([ix[:40] for ix in full.indices_by_class])
    te = torch.cat([ix[40:] for ix in full.indices_by_class])
    train = ClassData(noisy[tr], full.labels[tr], 10, full.mean, full.std, name="blobs")
    return train, noisy[te], full.labels[te]


def _eval_accuracy(images, labels, x_test, y_test, nets=2, epochs=200) -> float:
    """The reference protocol in small: SGD lr 0.01, momentum 0.9, wd 5e-4, lr x0.1 after
    epoch E//2+1, final-epoch test accuracy averaged over freshly initialised nets."""
    accs = []
    for k in range(nets):
        g = make_generator(100 + k)
        net = get_network("ConvNetW32", images.shape[1], 10, tuple(images.shape[2:]), generator=g)
        opt = sgd(net.parameters(), 0.01, 0.9, 5e-4)
        for ep in range(epochs):
            if ep == epochs // 2 + 1:
                opt = sgd(net.parameters(), 0.001, 0.9, 5e-4)
            train_epoch(net, images, labels, opt, batch_size=256, generator=g)
        accs.append(accuracy(net, x_test, y_test))
    return sum(accs) / len(accs)


def _probe_matching_loss(images, real: ClassData, ipc: int, nets: int = 3) -> float:
    """Oracle matching loss of a synthetic set, averaged over fixed fresh nets and real batches."""
    total = 0.0
    for k in range(nets):
        g = make_generator(1000 + k)
        net = get_network("ConvNetW32", real.channel, real.num_classes, real.im_size, generator=g)
        reals = [real.sample(c, 40, g) for c in range(real.num_classes)]
        syn = [images[c * ipc : (c + 1) * ipc] for c in range(real.num_classes)]
        total += float(dc_oracle_loss(net, reals, syn, list(range(real.num_classes)), "layerwise").detach())
    return total / nets


def test_short_dc_run_lowers_matching_loss_and_beats_random_at_ipc1():
    train, x_test, y_test = _noisy_blobs()
    dc = get_method("dc", {"model": "ConvNetW32", "iterations": 10}).condense(train, 1, seed=0)
    noise = torch.randn(dc.images.shape, generator=make_generator(0))
    assert _probe_matching_loss(dc.images, train, 1) < 0.95 * _probe_matching_loss(noise, train, 1)

    acc_dc = _eval_accuracy(dc.images, dc.labels, x_test, y_test)
    rand = [get_method("random").condense(train, 1, seed=s) for s in range(2)]
    acc_random = sum(_eval_accuracy(r.images, r.labels, x_test, y_test) for r in rand) / len(rand)
    assert acc_dc > acc_random + 0.1, (acc_dc, acc_random)


@pytest.mark.slow
def test_dc_beats_random_on_bundled_digits_ipc1():
    data = pytest.importorskip("benchmarks.data")
    ds = data.load_dataset("digits")
    dc = get_method("dc", {"model": "ConvNetW32", "iterations": 50}).condense(ds.train, 1, seed=0)
    acc_dc = _eval_accuracy(dc.images, dc.labels, ds.test_images, ds.test_labels, epochs=300)
    rand = [get_method("random").condense(ds.train, 1, seed=s) for s in range(3)]
    acc_random = sum(_eval_accuracy(r.images, r.labels, ds.test_images, ds.test_labels, epochs=300) for r in rand) / 3
    assert acc_dc > acc_random, (acc_dc, acc_random)
