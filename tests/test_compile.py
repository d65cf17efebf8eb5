"""Compiled paths (methods.compile): one graph serves every fresh network of a shape (a second
network must not recompile), compiled equals eager per path within a stated tolerance, seeded
runs stay identical, ``auto``/``on``/``off`` and the eager fall-back.

The default run uses the ``aot_eager`` backend (Dynamo + AOTAutograd, no kernel generation:
the guards, the functional graph and its backward are the ones inductor gets, at a fraction of
the compile time); the ``slow`` tests use inductor (about a minute per cold graph on a CPU;
they share inductor's on-disk cache across runs).

Tolerances: ``aot_eager`` runs the same ATen kernels, so compiled and eager agree to float32
rounding of the padded last chunk (``1e-5`` relative); inductor fuses and reorders reductions
(``1e-4`` relative on parameters after two epochs, ``1e-3`` on an image gradient relative to
its largest entry).
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from methods import compile as mc
from methods.cafe import cafe_loss, resolve_layer_weights
from methods.context import RunContext
from methods.dm import dm_loss
from methods.errors import MethodError
from methods.networks import get_network
from methods.registry import get_method
from methods.training import predict, sgd, train_epoch
from tests.conftest import make_classdata

AOT_TOL = dict(rtol=1e-5, atol=1e-6)
INDUCTOR_TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture
def aot(monkeypatch):
    monkeypatch.setenv(mc.BACKEND_ENV, "aot_eager")
    mc.clear_cache()
    mc.reset_stats()
    yield
    mc.clear_cache()
    mc.reset_stats()


@dataclasses.dataclass
class CompileContext(RunContext):
    """A RunContext with the ``compile`` field the lead adds to RunContext."""

    compile: str = "on"


def _net(seed, size=8, channel=1):
    net = get_network("ConvNetW32", channel, 4, (size, size), seed=seed)
    net.train()
    return net


def _train(net, forward, epochs=2, n=10, batch=4):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 4
    opt = sgd(net.parameters(), 0.05, momentum=0.9)
    for _ in range(epochs):
        train_epoch(net, x, y, opt, batch_size=batch, generator=g, forward=forward)
    return [p.detach().clone() for p in net.parameters()]


def test_second_network_of_the_same_shape_does_not_recompile(aot):
    for seed in (0, 1, 2):
        net = _net(seed)
        _train(net, mc.compiled(net, enabled=True, batch=4))
    # one forward/backward graph for batch 4 (the last batch of 10 is padded to it), shared
    assert mc.STATS.graphs == 1, mc.compile_stats()
    assert mc.STATS.recompiles == 0
    assert mc.STATS.entries == 1
    # another batch shape is a new entry (its own graph), still no recompilation
    net = _net(3)
    _train(net, mc.compiled(net, enabled=True, batch=5))
    assert (mc.STATS.graphs, mc.STATS.entries, mc.STATS.recompiles) == (2, 2, 0)


def test_a_recompilation_is_counted(aot, monkeypatch):
    net = _net(0)
    call = mc.compiled(net, enabled=True, batch=4)
    x = torch.randn(4, 1, 8, 8)
    call(x)
    # same entry, but a parameter of another dtype: Dynamo's guards fail and it compiles again
    key, entry = call._entry(x)
    params = {k: v.detach().double() for k, v in net.named_parameters(prefix="net")}
    entry(params, dict(net.named_buffers(prefix="net")), x.double())
    assert mc.STATS.recompiles == 1 and mc.STATS.graphs == 2


def test_compiled_training_equals_eager(aot):
    eager = _train(_net(0), None)
    net = _net(0)
    comp = _train(net, mc.compiled(net, enabled=True, batch=4))
    for a, b in zip(comp, eager):
        torch.testing.assert_close(a, b, **AOT_TOL)


def test_compiled_predict_and_feature_maps_equal_eager(aot):
    net = _net(0)
    x = torch.randn(11, 1, 8, 8)
    fwd = mc.compiled(net, enabled=True, batch=4)
    assert torch.equal(predict(net, x, batch_size=4, forward=fwd), predict(net, x, batch_size=4))
    fm = mc.compiled(net, "feature_maps", enabled=True, batch=4)
    with torch.no_grad():
        for a, b in zip(fm(x), net.feature_maps(x)):  # 11 = 4 + 4 + 3 (padded)
            torch.testing.assert_close(a, b, **AOT_TOL)


def _cafe_grad(net, real, syn, calls):
    lw = resolve_layer_weights(None, net.feature_names)
    loss = cafe_loss(net, real, syn, 4, layer_weights=lw, **calls)
    (g,) = torch.autograd.grad(loss, syn)
    return loss.detach(), g


def test_compiled_cafe_branches_equal_eager(aot):
    net = _net(0)
    g = torch.Generator().manual_seed(2)
    real = torch.randn(4 * 6, 1, 8, 8, generator=g)
    syn = torch.randn(4 * 2, 1, 8, 8, generator=g).requires_grad_(True)
    calls = dict(real_features=mc.compiled(net, "feature_maps", enabled=True, batch=16),
                 syn_features=mc.compiled(net, "feature_maps", enabled=True, batch=8, param_grads=False))
    l_c, g_c = _cafe_grad(net, real, syn, calls)
    l_e, g_e = _cafe_grad(net, real, syn, {})
    torch.testing.assert_close(l_c, l_e, **AOT_TOL)
    torch.testing.assert_close(g_c, g_e, rtol=0, atol=1e-5 * float(g_e.abs().max()))
    assert all(p.grad is None for p in net.parameters())  # the image step forms no weight gradients


def test_compiled_dm_embeddings_equal_eager(aot):
    net = _net(0)
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    real = torch.randn(4 * 6, 1, 8, 8, generator=g)
    syn = torch.randn(4 * 2, 1, 8, 8, generator=g).requires_grad_(True)
    calls = dict(real_embed=mc.compiled(net, "embed", enabled=True, batch=16),
                 syn_embed=mc.compiled(net, "embed", enabled=True, batch=8))
    l_c = dm_loss(net, real, syn, 4, **calls)
    (g_c,) = torch.autograd.grad(l_c, syn)
    l_e = dm_loss(net, real, syn, 4)
    (g_e,) = torch.autograd.grad(l_e, syn)
    torch.testing.assert_close(l_c, l_e, **AOT_TOL)
    torch.testing.assert_close(g_c, g_e, rtol=0, atol=1e-5 * float(g_e.abs().max()))


def _cafe(context, seed=0):
    data = make_classdata(4, 12, 1, 8)
    cfg = dict(model="ConvNetW32", batch_real=6, probe_per_class=6, batch_train=64, iterations=2, window=3,
               max_loop_steps=4)
    return get_method("cafe", cfg).condense(data, 2, seed=seed, context=context)


def test_seeded_compiled_cafe_runs_are_identical_and_close_to_eager(aot):
    a = _cafe(CompileContext(compile="on"))
    b = _cafe(CompileContext(compile="on"))
    assert torch.equal(a.images, b.images)
    assert a.cost["compile_recompiles"] == 0 and a.cost["compile_graphs"] >= 1
    assert b.cost["compile_graphs"] == 0  # the second run reuses every graph of the first
    eager = _cafe(CompileContext(compile="off"))
    assert "compile_graphs" not in eager.cost
    # same loop steps, images within float32 rounding of the padded chunks
    assert a.cost["image_steps"] == eager.cost["image_steps"]
    assert a.cost["inner_epochs"] == eager.cost["inner_epochs"]
    torch.testing.assert_close(a.images, eager.images, rtol=1e-4, atol=1e-4)


def test_compiled_dm_run_matches_eager(aot):
    data = make_classdata(4, 12, 1, 8)
    cfg = dict(model="ConvNetW32", batch_real=6, iterations=3)
    a = get_method("dm", cfg).condense(data, 2, seed=0, context=CompileContext(compile="on"))
    e = get_method("dm", cfg).condense(data, 2, seed=0, context=CompileContext(compile="off"))
    torch.testing.assert_close(a.images, e.images, rtol=1e-4, atol=1e-4)
    assert a.cost["compile_recompiles"] == 0


def test_resolve_compile_modes(monkeypatch):
    assert mc.resolve_compile("off", "cpu") is False
    with pytest.raises(MethodError, match="unknown compile mode 'fast'"):
        mc.resolve_compile("fast", "cpu")
    monkeypatch.setattr(mc, "unavailable_reason", lambda device: None)
    assert mc.resolve_compile("on", "cpu") is True
    assert mc.resolve_compile("auto", "cpu") is False  # unknown work: eager
    assert mc.resolve_compile("auto", "cpu", steps=mc.AUTO_MIN_STEPS["cpu"] - 1) is False
    assert mc.resolve_compile("auto", "cpu", steps=mc.AUTO_MIN_STEPS["cpu"]) is True


def test_on_without_a_toolchain_warns_once_and_runs_eager(monkeypatch, caplog):
    monkeypatch.setattr(mc, "unavailable_reason", lambda device: "no C++ compiler on PATH")
    mc._WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="methods.compile"):
        assert mc.resolve_compile("on", "cpu") is False
        assert mc.resolve_compile("on", "cpu") is False
        assert mc.resolve_compile("auto", "cpu", steps=10**9) is False
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["compile=on but no C++ compiler on PATH: running eager"]


def test_unavailable_reason_names_the_missing_compiler(monkeypatch):
    monkeypatch.delenv(mc.BACKEND_ENV, raising=False)
    monkeypatch.setattr(mc.shutil, "which", lambda name: None)
    assert "C++ compiler" in mc.unavailable_reason("cpu")


def test_a_failing_compilation_falls_back_to_eager_with_one_warning(aot, monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("backend exploded\nsecond line")
        return run

    monkeypatch.setattr(mc.torch, "compile", broken)
    mc._WARNED.clear()
    net = _net(0)
    call = mc.compiled(net, enabled=True, batch=4)
    x = torch.randn(6, 1, 8, 8)
    with caplog.at_level(logging.WARNING, logger="methods.compile"):
        out1, out2 = call(x), call(x)
    with torch.no_grad():
        assert torch.equal(out1, net(x)) and torch.equal(out2, net(x))
    assert mc.STATS.fallbacks == 1
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile failed for ConvNet.forward (RuntimeError: backend exploded); running eager"]


def test_batchnorm_networks_stay_eager(aot):
    net = get_network("ConvNetBN", 1, 4, (8, 8), seed=0)
    assert not mc.compilable(net)
    assert mc.compiled(net, enabled=True, batch=4) == net.forward
    plain = _net(0)
    assert mc.compiled(plain, enabled=False, batch=4) == plain.forward


# ------------------------------------------------------------------------------------------
# inductor (slow: a cold graph costs about a minute on a CPU)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def inductor(monkeypatch):
    if mc.unavailable_reason("cpu") is not None:
        pytest.skip(mc.unavailable_reason("cpu"))
    monkeypatch.setenv(mc.BACKEND_ENV, "inductor")
    mc.clear_cache()
    mc.reset_stats()
    yield
    mc.clear_cache()


@pytest.mark.slow
def test_inductor_training_and_test_pass_close_to_eager(inductor):
    from benchmarks.eval_networks import train_and_test

    data = make_classdata(4, 12, 1, 8)
    test = make_classdata(4, 25, 1, 8, seed=1)
    kw = dict(num_classes=4, channel=1, im_size=(8, 8), epochs=4, seed=0, augment=None, device="cpu",
              batch_size=16)
    args = (data.images, data.labels, test.images, test.labels, "ConvNetW32")
    eager = [train_and_test(*args, net_index=i, **kw) for i in range(2)]
    comp = [train_and_test(*args, net_index=i, compile="on", **kw) for i in range(2)]
    assert mc.STATS.recompiles == 0
    assert mc.STATS.entries == 2  # training (batch 16, padded last batch) and the test pass
    for c, e in zip(comp, eager):
        assert abs(c.accuracy - e.accuracy) <= 1 / 100 + 1e-9  # at most one of 100 test images flips


@pytest.mark.slow
def test_inductor_cafe_gradient_close_to_eager(inductor):
    net = _net(0)
    g = torch.Generator().manual_seed(2)
    real = torch.randn(4 * 6, 1, 8, 8, generator=g)
    syn = torch.randn(4 * 2, 1, 8, 8, generator=g).requires_grad_(True)
    calls = dict(real_features=mc.compiled(net, "feature_maps", enabled=True, batch=16),
                 syn_features=mc.compiled(net, "feature_maps", enabled=True, batch=8, param_grads=False))
    l_c, g_c = _cafe_grad(net, real, syn, calls)
    l_e, g_e = _cafe_grad(net, real, syn, {})
    torch.testing.assert_close(l_c, l_e, **INDUCTOR_TOL)
    torch.testing.assert_close(g_c, g_e, rtol=0, atol=1e-3 * float(g_e.abs().max()))


def test_compiled_dc_run_matches_eager_and_compiles_one_graph(aot):
    """DC's real-batch forward runs compiled (one graph for every network of the run); the
    synthetic side stays eager (double backward): the sets agree within float rounding."""
    data = make_classdata(4, 12, 1, 8)
    cfg = dict(model="ConvNetW32", batch_real=6, iterations=3, path="per_class")
    a = get_method("dc", cfg).condense(data, 2, seed=0, context=CompileContext(compile="on"))
    e = get_method("dc", cfg).condense(data, 2, seed=0, context=CompileContext(compile="off"))
    torch.testing.assert_close(a.images, e.images, rtol=1e-4, atol=1e-4)
    assert a.cost["compile_graphs"] >= 1 and a.cost["compile_recompiles"] == 0
    assert "compile_graphs" not in e.cost


def test_compiled_feature_network_matches_eager_and_keeps_its_history(aot):
    from methods import coreset_features as cf

    data = make_classdata(4, 12, 1, 8)
    config = cf.FeatureNetConfig(feature_net="ConvNetW32", feature_epochs=2, feature_batch=10)
    net_c, _, hist_c = cf.train_feature_net_tracked(data, 3, config, device=torch.device("cpu"), compile="on")
    assert mc.STATS.graphs >= 1 and mc.STATS.recompiles == 0
    net_e, _, hist_e = cf.train_feature_net_tracked(data, 3, config, device=torch.device("cpu"), compile="off")
    for p_c, p_e in zip(net_c.parameters(), net_e.parameters()):
        torch.testing.assert_close(p_c, p_e, **AOT_TOL)
    # 48 images in minibatches of 10: the padded last minibatch records its 8 real images only
    assert hist_c.shape == hist_e.shape == (2, 48)
    assert torch.equal(hist_c, hist_e)
    graphs = mc.STATS.graphs
    emb_c = cf.embeddings(net_c, data.images, batch_size=16, compile=True)
    assert mc.STATS.graphs == graphs + 1
    torch.testing.assert_close(emb_c, cf.embeddings(net_c, data.images, batch_size=16), **AOT_TOL)
