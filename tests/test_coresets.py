"""Herding and k-center coresets: hand-checked selections, determinism, feature cache, errors."""

from __future__ import annotations

import pytest
import torch

import methods.coreset_features as cf
from methods import RunContext, SyntheticSet, get_method
from methods.coreset_features import embeddings, feature_cache_key
from methods.errors import MethodError
from methods.herding import HerdingConfig, herding_select
from methods.kcenter import kcenter_select
from methods.networks import get_network
from tests.conftest import make_classdata

LINE = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
# 2-D points: mean (2.8, 1.6); index 4 = (3, 3) is the one nearest the mean.
PLANE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 5.0], [3.0, 3.0]], dtype=torch.float64)

TINY = dict(feature_epochs=1, feature_batch=16)


def tiny_data(seed: int = 0):
    # 3 classes x 12 images of 1x8x8: a depth-3 ConvNet still fits (8 -> 4 -> 2 -> 1).
    return make_classdata(num_classes=3, per_class=12, channel=1, size=8, seed=seed)


class DictCache:
    """A dict-backed ``RunContext.cache`` that counts how often it had to compute."""

    def __init__(self) -> None:
        self.store: dict[str, dict] = {}
        self.computed: list[str] = []

    def __call__(self, key, compute):
        if key not in self.store:
            self.computed.append(key)
            self.store[key] = compute()
        return self.store[key]


# ------------------------------------------------------------------ hand-checkable selections


def test_herding_on_a_line_matches_hand_computation():
    # mu = 2: pick 2; delta = 2*2 - 2 = 2 -> 1 and 3 tie, lowest index 1; delta = 6 - 3 = 3 -> 3;
    # delta = 8 - 6 = 2 -> 0 and 4 tie -> 0; then 4.
    assert herding_select(LINE, 5).tolist() == [2, 1, 3, 0, 4]
    # DeepCore's argmax would start at an extreme point (0 or 4), never at the centre.
    assert herding_select(LINE, 1).tolist() == [2]


def test_herding_in_the_plane_matches_hand_computation():
    # step 0: nearest (2.8, 1.6) is (3, 3); step 1: delta = (2.6, 0.2) -> (1, 0);
    # step 2: delta = (4.4, 1.8) -> (0, 0); step 3: delta = (7.2, 3.4) -> (10, 0); then (0, 5).
    assert herding_select(PLANE, 5).tolist() == [4, 1, 0, 2, 3]
    assert herding_select(PLANE, 3).tolist() == [4, 1, 0]


def test_kcenter_on_a_line_matches_hand_computation():
    # first centre: the point nearest the mean (2); farthest: 0 and 4 tie -> 0; then 4;
    # then 1 and 3 (both at distance 1) -> 1; then 3.
    assert kcenter_select(LINE, 5).tolist() == [2, 0, 4, 1, 3]


def test_kcenter_in_the_plane_matches_hand_computation():
    # start (3, 3); squared distances 18, 13, 58, 13 -> (10, 0); its distances do not lower the
    # minima of the others (100, 81, 125) -> (0, 0) with 18; then (1, 0) drops to 1 -> (0, 5).
    assert kcenter_select(PLANE, 5).tolist() == [4, 2, 0, 3, 1]


def _herding_oracle(F: torch.Tensor, k: int) -> list[int]:
    """Plain-loop transcription of the pseudocode: a Python loop over candidates."""
    mu = F.mean(0)
    selected: list[int] = []
    for i in range(k):
        delta = (i + 1) * mu - (F[selected].sum(0) if selected else torch.zeros_like(mu))
        best, best_d = None, None
        for j in range(F.shape[0]):
            if j in selected:
                continue
            d = float(torch.linalg.vector_norm(delta - F[j]))
            if best_d is None or d < best_d:
                best, best_d = j, d
        selected.append(best)
    return selected


def _kcenter_oracle(F: torch.Tensor, k: int) -> list[int]:
    mu = F.mean(0)
    first = min(range(F.shape[0]), key=lambda j: float(torch.linalg.vector_norm(F[j] - mu)))
    selected = [first]
    while len(selected) < k:
        best, best_d = None, None
        for j in range(F.shape[0]):
            if j in selected:
                continue
            d = min(float(torch.linalg.vector_norm(F[j] - F[s])) for s in selected)
            if best_d is None or d > best_d:
                best, best_d = j, d
        selected.append(best)
    return selected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_selection_equals_plain_loop_oracle(seed):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(40, 6, generator=g, dtype=torch.float64)
    assert herding_select(F, 12).tolist() == _herding_oracle(F, 12)
    assert kcenter_select(F, 12).tolist() == _kcenter_oracle(F, 12)


def test_selection_returns_distinct_long_indices_even_with_duplicates():
    F = torch.zeros(6, 3, dtype=torch.float64)  # every point identical
    for select in (herding_select, kcenter_select):
        idx = select(F, 6)
        assert idx.dtype == torch.long
        assert sorted(idx.tolist()) == list(range(6))


def test_herding_running_mean_tracks_class_mean_better_than_random():
    g = torch.Generator().manual_seed(0)
    F = torch.randn(300, 16, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3.0, 16, dtype=torch.float64)
    mu = F.mean(0)
    chosen = herding_select(F, 20)
    draws = 500
    for k in (1, 2, 5, 10, 20):
        herd_err = float(torch.linalg.vector_norm(F[chosen[:k]].mean(0) - mu))
        rand_err = torch.stack(
            [
                torch.linalg.vector_norm(F[torch.randperm(300, generator=g)[:k]].mean(0) - mu)
                for _ in range(draws)
            ]
        )
        # Herding beats (nearly) every random draw, and the average one by a wide margin.
        assert herd_err < 0.5 * float(rand_err.mean()), k
        assert float((rand_err <= herd_err).double().mean()) < 0.02, k


def test_selection_size_errors():
    with pytest.raises(MethodError, match="positive integer"):
        herding_select(LINE, 0)
    with pytest.raises(MethodError, match="cannot select 6 points from 5"):
        kcenter_select(LINE, 6)
    with pytest.raises(MethodError, match="2-D"):
        herding_select(torch.zeros(5), 1)


# ------------------------------------------------------------------ the methods


@pytest.mark.parametrize("name,select", [("herding", herding_select), ("kcenter", kcenter_select)])
def test_pixel_space_condense_selects_per_class_in_class_major_order(name, select):
    real = tiny_data()
    ipc = 4
    syn = get_method(name, {"feature_space": "pixels"}).condense(real, ipc, seed=0)
    assert isinstance(syn, SyntheticSet)
    assert syn.method == name and syn.ipc == ipc and syn.indices is not None
    assert syn.labels.tolist() == [c for c in range(3) for _ in range(ipc)]
    assert torch.equal(syn.images, real.images[syn.indices])
    assert torch.equal(syn.labels, real.labels[syn.indices])
    assert len(set(syn.indices.tolist())) == 3 * ipc
    for c in range(3):
        members = real.indices_by_class[c]
        expected = members[select(real.images[members].flatten(1).double(), ipc)]
        assert syn.indices[c * ipc : (c + 1) * ipc].tolist() == expected.tolist()
    assert {"wall_time_s", "peak_memory_mb", "selection_time_s", "feature_train_time_s"} <= set(syn.cost)
    assert syn.config["feature_space"] == "pixels"


@pytest.mark.parametrize("name", ["herding", "kcenter"])
def test_method_metadata(name):
    method = get_method(name)
    assert method.learned is False
    assert method.eval_epochs_no_aug == 300
    assert method.config.feature_space == "embedding" and method.config.feature_net == "ConvNet"
    assert method.config.feature_epochs == 20 and method.config.feature_batch == 256
    assert method.eval_defaults(tiny_data())["epochs_no_aug"] == 300


@pytest.mark.parametrize("name", ["herding", "kcenter"])
def test_bad_ipc_is_a_method_error(name):
    real = tiny_data()
    method = get_method(name, {"feature_space": "pixels"})
    for ipc in (0, -1):
        with pytest.raises(MethodError, match="positive integer"):
            method.condense(real, ipc, seed=0)
    with pytest.raises(MethodError, match="larger than the smallest class"):
        method.condense(real, 13, seed=0)
    # The whole class is allowed.
    assert len(method.condense(real, 12, seed=0)) == 36


def test_bad_config_is_a_method_error():
    with pytest.raises(MethodError, match="feature_space"):
        get_method("herding", {"feature_space": "logits"})
    with pytest.raises(MethodError, match="unknown architecture 'NoNet'"):
        get_method("kcenter", {"feature_net": "NoNet"})
    with pytest.raises(MethodError, match="feature_epochs must be >= 0"):
        get_method("herding", {"feature_epochs": -1})
    with pytest.raises(MethodError, match="feature_batch"):
        get_method("kcenter", {"feature_batch": 0})


@pytest.mark.parametrize("name", ["herding", "kcenter"])
def test_same_seed_gives_bit_identical_selection_with_trained_embedding(name):
    real = tiny_data()
    a = get_method(name, TINY).condense(real, 3, seed=7, context=RunContext())
    b = get_method(name, TINY).condense(real, 3, seed=7, context=RunContext())
    assert a.cost["feature_cache_hit"] == 0.0 and b.cost["feature_cache_hit"] == 0.0
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.images, b.images)


def test_feature_net_weights_are_bit_identical_per_seed_and_differ_across_seeds():
    real = tiny_data()
    config = HerdingConfig(**TINY)
    net_a, _ = cf.train_feature_net(real, 3, config, device=torch.device("cpu"))
    net_b, _ = cf.train_feature_net(real, 3, config, device=torch.device("cpu"))
    net_c, _ = cf.train_feature_net(real, 4, config, device=torch.device("cpu"))
    sa, sb, sc = net_a.state_dict(), net_b.state_dict(), net_c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_feature_cache_is_used_once_and_shared_by_herding_and_kcenter():
    real = tiny_data()
    cache = DictCache()
    ctx = RunContext(cache=cache)
    first = get_method("herding", TINY).condense(real, 3, seed=1, context=ctx)
    again = get_method("herding", TINY).condense(real, 3, seed=1, context=RunContext(cache=cache))
    kc = get_method("kcenter", TINY).condense(real, 3, seed=1, context=RunContext(cache=cache))
    assert len(cache.computed) == 1
    assert first.cost["feature_cache_hit"] == 0.0
    assert again.cost["feature_cache_hit"] == 1.0 and kc.cost["feature_cache_hit"] == 1.0
    assert again.cost["feature_train_time_s"] == 0.0
    assert again.cost["feature_net_train_time_s"] == pytest.approx(first.cost["feature_net_train_time_s"])
    assert torch.equal(first.indices, again.indices)
    entry = cache.store[cache.computed[0]]
    assert set(entry) >= {"state_dict"}
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in entry["state_dict"].values())
    # A different seed is a different feature network.
    get_method("herding", TINY).condense(real, 3, seed=2, context=RunContext(cache=cache))
    assert len(cache.computed) == 2


def test_cache_key_names_data_seed_and_budget():
    real = tiny_data()
    base = HerdingConfig(**TINY)
    key = feature_cache_key(real, 0, base)
    for part in (real.name, "classes3", "1x8x8", "n36", "seed0", "ConvNet", "epochs1", "batch16"):
        assert part in key
    assert feature_cache_key(real, 1, base) != key
    assert feature_cache_key(real, 0, HerdingConfig(feature_epochs=2, feature_batch=16)) != key
    assert feature_cache_key(real, 0, HerdingConfig(feature_epochs=1, feature_batch=16, feature_lr=0.1)) != key
    other = tiny_data(seed=1)  # same name and geometry, different pixels
    assert feature_cache_key(other, 0, base) != key
    # The key does not depend on which method asks for it.
    from methods.kcenter import KCenterConfig

    assert feature_cache_key(real, 0, KCenterConfig(**TINY)) == key


def test_pixels_feature_space_trains_nothing(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("pixels must not train a feature network")

    monkeypatch.setattr(cf, "train_feature_net", fail)
    cache = DictCache()
    syn = get_method("herding", {"feature_space": "pixels"}).condense(
        tiny_data(), 2, seed=0, context=RunContext(cache=cache)
    )
    assert cache.computed == [] and len(syn) == 6


def test_feature_training_drops_lr_at_half_with_a_fresh_optimiser(monkeypatch):
    created: list[float] = []
    real_sgd = cf.sgd

    def recording_sgd(params, lr, momentum=0.0, weight_decay=0.0):
        created.append(lr)
        assert momentum == 0.9 and weight_decay == 5e-4
        return real_sgd(params, lr, momentum, weight_decay)

    epochs_seen: list[int] = []
    real_epoch = cf.train_epoch

    def counting_epoch(net, images, labels, opt, **kw):
        epochs_seen.append(len(created))
        assert opt.param_groups[0]["lr"] == pytest.approx(created[-1])
        assert kw["batch_size"] == 16
        return real_epoch(net, images, labels, opt, **kw)

    monkeypatch.setattr(cf, "sgd", recording_sgd)
    monkeypatch.setattr(cf, "train_epoch", counting_epoch)
    config = HerdingConfig(feature_epochs=4, feature_batch=16)
    cf.train_feature_net(tiny_data(), 0, config, device=torch.device("cpu"))
    assert created == [pytest.approx(0.01), pytest.approx(0.001)]
    # epochs 0, 1 with the first optimiser; 2, 3 with the second (drop at E // 2).
    assert epochs_seen == [1, 1, 2, 2]


def test_embeddings_are_batched_eval_mode_and_gradient_free():
    real = tiny_data()
    net = get_network("ConvNet", 1, 3, (8, 8), seed=0)
    net.train()
    out = embeddings(net, real.images, batch_size=5)
    assert out.shape == (36, net.classifier.in_features)
    assert not out.requires_grad
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        whole = net.embed(real.images)
    assert torch.allclose(out, whole, atol=1e-6)


def test_synthetic_set_round_trips_through_weights_only_load(tmp_path):
    real = tiny_data()
    syn = get_method("kcenter", TINY).condense(real, 2, seed=0)
    loaded = SyntheticSet.load(syn.save(tmp_path / "kc.pt"))
    assert torch.equal(loaded.indices, syn.indices) and torch.equal(loaded.images, syn.images)
    assert loaded.cost == syn.cost and loaded.config["feature_epochs"] == 1
