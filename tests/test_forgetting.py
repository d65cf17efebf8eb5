"""Forgetting coreset: event counting against a plain oracle, which end is kept, the shared
feature-net cache, the recorded history against an independent training loop, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import methods.coreset_features as cf
import methods.forgetting as fg
from methods import RunContext, get_method
from methods.errors import MethodError
from methods.forgetting import ForgettingConfig, count_forgetting_events, forgetting_scores, forgetting_select
from methods.networks import get_network
from methods.registry import method_info
from methods.rng import make_generator
from methods.training import sgd
from tests.conftest import make_classdata

TINY = dict(feature_epochs=3, feature_batch=8)


def tiny_data(seed: int = 0):
    # 3 classes x 12 images of 1x8x8 (a depth-3 ConvNet still fits: 8 -> 4 -> 2 -> 1).
    return make_classdata(num_classes=3, per_class=12, channel=1, size=8, seed=seed)


class DictCache:
    """A dict-backed ``RunContext.cache`` that records the keys it had to compute."""

    def __init__(self) -> None:
        self.store: dict[str, dict] = {}
        self.computed: list[str] = []

    def __call__(self, key, compute):
        if key not in self.store:
            self.computed.append(key)
            self.store[key] = compute()
        return self.store[key]


def oracle_forgetting(history: list[list[int]]) -> list[float]:
    """Plain transcription of Toneva et al.'s statistic: per image, walk its presentations in
    order and count correct -> wrong transitions; never correct at all -> infinity."""
    n = len(history[0])
    out = []
    for i in range(n):
        seq = [history[t][i] for t in range(len(history))]
        if not any(seq):
            out.append(float("inf"))
            continue
        events = 0
        for t in range(1, len(seq)):
            if seq[t - 1] == 1 and seq[t] == 0:
                events += 1
        out.append(float(events))
    return out


# rows = presentations (epochs), columns = images
HISTORY = [
    # 0  1  2  3  4  5  6  7
    [1, 0, 0, 1, 0, 1, 0, 1],
    [0, 0, 1, 1, 1, 0, 0, 1],
    [1, 0, 0, 1, 0, 1, 0, 0],
    [0, 0, 1, 1, 1, 0, 0, 1],
    [1, 0, 1, 1, 0, 1, 1, 1],
]
# image 0: 1 0 1 0 1 -> 2 events; 1: never learned; 2: 0 1 0 1 1 -> 1; 3: always correct -> 0;
# 4: 0 1 0 1 0 -> 2; 5: 1 0 1 0 1 -> 2; 6: learned at the last presentation -> 0; 7: 1 1 0 1 1 -> 1
EXPECTED = [2.0, float("inf"), 1.0, 0.0, 2.0, 2.0, 0.0, 1.0]


# ------------------------------------------------------------------ the statistic


def test_event_counts_match_the_plain_oracle_and_the_hand_count():
    history = torch.tensor(HISTORY, dtype=torch.bool)
    assert oracle_forgetting(HISTORY) == EXPECTED
    assert forgetting_scores(history).tolist() == EXPECTED
    events, learned = count_forgetting_events(history)
    assert events.dtype == torch.long
    assert events.tolist() == [2, 0, 1, 0, 2, 2, 0, 1]
    assert learned.tolist() == [True, False, True, True, True, True, True, True]


def test_event_counts_match_the_oracle_on_random_histories():
    g = torch.Generator().manual_seed(0)
    for presentations in (1, 2, 7):
        history = torch.rand(presentations, 50, generator=g) < 0.6
        history[:, :3] = False  # a few never-learned images in every case
        expected = oracle_forgetting(history.int().tolist())
        assert forgetting_scores(history).tolist() == expected


def test_a_wrong_to_correct_transition_is_not_a_forgetting_event():
    events, learned = count_forgetting_events(torch.tensor([[0], [1], [1]], dtype=torch.bool))
    assert events.tolist() == [0] and learned.tolist() == [True]


def test_history_must_be_two_dimensional():
    with pytest.raises(MethodError, match="2-D"):
        count_forgetting_events(torch.ones(4, dtype=torch.bool))


# ------------------------------------------------------------------ which end is kept


def test_most_keeps_never_learned_first_then_the_most_forgotten():
    scores = torch.tensor(EXPECTED, dtype=torch.float64)
    chosen = forgetting_select(scores, 4, keep="most", generator=make_generator(0))
    assert chosen[0].item() == 1  # never learned: forgotten infinitely often
    assert sorted(chosen[1:].tolist()) == [0, 4, 5]  # the three images with 2 events
    assert scores[chosen].tolist() == sorted(scores[chosen].tolist(), reverse=True)


def test_least_keeps_the_unforgettable_end():
    scores = torch.tensor(EXPECTED, dtype=torch.float64)
    chosen = forgetting_select(scores, 2, keep="least", generator=make_generator(0))
    assert sorted(chosen.tolist()) == [3, 6]
    everything = forgetting_select(scores, 8, keep="least", generator=make_generator(0))
    assert everything[-1].item() == 1  # the never-learned image comes last


def test_ties_are_broken_by_the_seeded_order_only():
    scores = torch.zeros(20, dtype=torch.float64)
    a = forgetting_select(scores, 5, keep="most", generator=make_generator(3))
    b = forgetting_select(scores, 5, keep="most", generator=make_generator(3))
    assert torch.equal(a, b)
    picks = {tuple(forgetting_select(scores, 5, keep="most", generator=make_generator(s)).tolist())
             for s in range(5)}
    assert len(picks) > 1  # not the lowest indices every time
    assert a.tolist() == torch.randperm(20, generator=make_generator(3))[:5].tolist()


def test_selection_size_errors():
    scores = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(MethodError, match="cannot select 5 images from 4"):
        forgetting_select(scores, 5, keep="most", generator=make_generator(0))
    with pytest.raises(MethodError, match="positive integer"):
        forgetting_select(scores, 0, keep="most", generator=make_generator(0))


def test_condense_selects_per_class_by_the_recorded_history(monkeypatch):
    real = tiny_data()
    n = len(real)
    # Image i is forgotten (i % 5) times over 11 presentations; image 0 of every class never learned.
    history = torch.ones(11, n, dtype=torch.bool)
    for i in range(n):
        for e in range(i % 5):
            history[2 * e + 1, i] = False
    firsts = [int(real.indices_by_class[c][0]) for c in range(real.num_classes)]
    history[:, firsts] = False
    monkeypatch.setattr(fg, "presentation_history", lambda *a, **k: (history, {"feature_cache_hit": 0.0}))
    syn = get_method("forgetting", TINY).condense(real, 3, seed=0)
    scores = forgetting_scores(history)
    for c in range(real.num_classes):
        members = real.indices_by_class[c]
        picked = syn.indices[3 * c : 3 * c + 3]
        assert (real.labels[picked] == c).all()
        assert picked[0].item() == firsts[c]  # never learned ranks first
        # nothing left out of the class scores higher than the lowest picked score
        rest = [int(i) for i in members if int(i) not in picked.tolist()]
        assert scores[rest].max() <= scores[picked].min()
    assert syn.cost["never_learned"] == 3.0
    assert torch.equal(syn.images, real.images[syn.indices])

    least = get_method("forgetting", dict(TINY, keep="least")).condense(real, 3, seed=0)
    for c in range(real.num_classes):
        picked = least.indices[3 * c : 3 * c + 3]
        members = real.indices_by_class[c]
        assert sorted(scores[picked].tolist()) == sorted(scores[members].tolist())[:3]
        assert firsts[c] not in picked.tolist()

    # never_learned='last': the learned images with the most events, the never-learned one
    # only when the class has too few learned images
    last = get_method("forgetting", dict(TINY, never_learned="last")).condense(real, 3, seed=0)
    for c in range(real.num_classes):
        picked = last.indices[3 * c : 3 * c + 3]
        members = real.indices_by_class[c]
        learned_scores = sorted((scores[i].item() for i in members if int(i) != firsts[c]), reverse=True)
        assert firsts[c] not in picked.tolist()
        assert sorted(scores[picked].tolist(), reverse=True) == learned_scores[:3]
    size = min(len(real.indices_by_class[c]) for c in range(real.num_classes))
    full = get_method("forgetting", dict(TINY, never_learned="last")).condense(real, size, seed=0)
    for c in range(real.num_classes):
        assert full.indices[size * c + size - 1].item() == firsts[c]  # ranked after every learned image


def test_demoted_entries_rank_last_at_either_end_and_the_rest_keeps_its_order():
    scores = torch.tensor(EXPECTED, dtype=torch.float64)
    demote = torch.isinf(scores)
    for keep in ("most", "least"):
        plain = forgetting_select(scores, 8, keep=keep, generator=make_generator(0))
        moved = forgetting_select(scores, 8, keep=keep, generator=make_generator(0), demote=demote)
        assert moved[-1].item() == 1
        assert moved[:-1].tolist() == [i for i in plain.tolist() if i != 1]
    assert torch.equal(forgetting_select(scores, 3, keep="most", generator=make_generator(0), demote=torch.zeros(8, dtype=torch.bool)),
                       forgetting_select(scores, 3, keep="most", generator=make_generator(0)))
    with pytest.raises(MethodError, match="demote must have the scores' shape"):
        forgetting_select(scores, 3, keep="most", generator=make_generator(0), demote=torch.zeros(3, dtype=torch.bool))


# ------------------------------------------------------------------ recording and the cache


def _manual_training(real, seed, config):
    """Independent transcription of the feature-net run: the same seeds, optimiser schedule and
    one permutation per epoch, with the correctness of each minibatch's forward pass recorded
    by the permutation's indices."""
    init_seed, order_seed, _ = cf.feature_seeds(seed)
    net = get_network(config.feature_net, real.channel, real.num_classes, real.im_size, seed=init_seed)
    order = make_generator(order_seed)
    n = len(real)
    history = torch.zeros(config.feature_epochs, n, dtype=torch.bool)
    lr = config.feature_lr
    opt = sgd(net.parameters(), lr, config.feature_momentum, config.feature_weight_decay)
    for ep in range(config.feature_epochs):
        if ep == config.feature_epochs // 2 and ep > 0:
            lr *= 0.1
            opt = sgd(net.parameters(), lr, config.feature_momentum, config.feature_weight_decay)
        net.train()
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, config.feature_batch):
            idx = perm[start : start + config.feature_batch]
            out = net(real.images[idx])
            history[ep, idx] = out.argmax(1) == real.labels[idx]
            loss = F.cross_entropy(out, real.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net, history


def test_recorded_history_and_weights_match_an_independent_training_loop():
    real = tiny_data()
    config = ForgettingConfig(feature_epochs=4, feature_batch=8)
    net, figures, history = cf.train_feature_net_tracked(real, 5, config, device=torch.device("cpu"))
    ref_net, ref_history = _manual_training(real, 5, config)
    assert history.dtype == torch.bool and history.shape == (4, len(real))
    assert torch.equal(history, ref_history)
    sa, sb = net.state_dict(), ref_net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert figures["train_accuracy"] == pytest.approx(float(ref_history[-1].float().mean()))
    # the untracked entry point trains the very same network
    plain, _ = cf.train_feature_net(real, 5, config, device=torch.device("cpu"))
    assert all(torch.equal(sa[k], v) for k, v in plain.state_dict().items())


def test_forgetting_herding_and_kcenter_share_one_training_run(monkeypatch):
    calls = []
    real_train = cf.train_feature_net_tracked

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cf, "train_feature_net_tracked", counting)
    real = tiny_data()
    cache = DictCache()
    first = get_method("forgetting", TINY).condense(real, 3, seed=1, context=RunContext(cache=cache))
    again = get_method("forgetting", TINY).condense(real, 3, seed=1, context=RunContext(cache=cache))
    herd = get_method("herding", TINY).condense(real, 3, seed=1, context=RunContext(cache=cache))
    kc = get_method("kcenter", TINY).condense(real, 3, seed=1, context=RunContext(cache=cache))
    assert calls == [1] and len(cache.computed) == 1
    assert first.cost["feature_cache_hit"] == 0.0
    assert again.cost["feature_cache_hit"] == 1.0 and again.cost["feature_train_time_s"] == 0.0
    assert herd.cost["feature_cache_hit"] == 1.0 and kc.cost["feature_cache_hit"] == 1.0
    assert torch.equal(first.indices, again.indices)
    entry = cache.store[cache.computed[0]]
    assert entry["presentation_correct"].shape == (3, len(real))
    # another seed or another budget is another training run
    get_method("forgetting", TINY).condense(real, 3, seed=2, context=RunContext(cache=cache))
    get_method("forgetting", dict(TINY, feature_epochs=4)).condense(real, 3, seed=1, context=RunContext(cache=cache))
    assert calls == [1, 2, 1] and len(cache.computed) == 3
    # herding selects the same whether forgetting filled the cache or it trains its own net
    fresh = get_method("herding", TINY).condense(real, 3, seed=1, context=RunContext())
    assert torch.equal(fresh.indices, herd.indices) and calls == [1, 2, 1, 1]


def test_the_history_survives_the_disk_cache(tmp_path):
    from benchmarks.storage import disk_cache

    real = tiny_data()
    first = get_method("forgetting", TINY).condense(real, 3, seed=4, context=RunContext(cache=disk_cache(tmp_path)))
    again = get_method("forgetting", TINY).condense(real, 3, seed=4, context=RunContext(cache=disk_cache(tmp_path)))
    herd = get_method("herding", TINY).condense(real, 3, seed=4, context=RunContext(cache=disk_cache(tmp_path)))
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert first.cost["feature_cache_hit"] == 0.0
    assert again.cost["feature_cache_hit"] == 1.0 and herd.cost["feature_cache_hit"] == 1.0
    assert torch.equal(first.indices, again.indices)


def test_a_cache_entry_without_the_history_is_refused():
    real = tiny_data()
    config = ForgettingConfig(**TINY)

    def old_entry(key, compute):
        return {"state_dict": {}}

    with pytest.raises(MethodError, match="without 'presentation_correct'.*delete that cache entry"):
        get_method("forgetting", TINY).condense(real, 2, seed=0, context=RunContext(cache=old_entry))

    def wrong_shape(key, compute):
        return {"state_dict": {}, "presentation_correct": torch.ones(2, 5, dtype=torch.bool)}

    with pytest.raises(MethodError, match=r"shape \(2, 5\), expected \(3, 36\)"):
        cf.presentation_history(real, 0, config, RunContext(cache=wrong_shape))


def test_same_seed_gives_the_same_selection():
    real = tiny_data()
    a = get_method("forgetting", TINY).condense(real, 4, seed=7, context=RunContext())
    b = get_method("forgetting", TINY).condense(real, 4, seed=7, context=RunContext())
    assert a.cost["feature_cache_hit"] == 0.0 and b.cost["feature_cache_hit"] == 0.0
    assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    assert a.labels.tolist() == [c for c in range(3) for _ in range(4)]
    assert a.method == "forgetting" and a.config["keep"] == "most"


# ------------------------------------------------------------------ config, registry, errors


def test_ipc_larger_than_a_class_is_a_clear_error():
    with pytest.raises(MethodError, match="IPC 13 is larger than the smallest class.*choose IPC <= 12"):
        get_method("forgetting", TINY).condense(tiny_data(), 13, seed=0)


def test_config_errors_name_the_field():
    with pytest.raises(MethodError, match="feature_epochs >= 2"):
        get_method("forgetting", {"feature_epochs": 1})
    with pytest.raises(MethodError, match="keep"):
        get_method("forgetting", {"keep": "middle"})
    with pytest.raises(MethodError, match="'never_learned' must be one of 'infinite', 'last'"):
        get_method("forgetting", {"never_learned": "first"})
    with pytest.raises(MethodError, match="feature_batch"):
        get_method("forgetting", {"feature_batch": 0})


def test_registered_as_a_coreset_with_the_feature_net_defaults():
    info = method_info("forgetting")
    assert (info.display, info.family, info.order) == ("Forgetting", "coreset", 40)
    assert info.to_dict()["learned"] is False
    defaults = info.defaults()
    assert defaults["keep"] == "most" and defaults["feature_epochs"] == 20
    assert defaults["feature_net"] == "ConvNet" and defaults["feature_lr"] == 0.01
    assert "feature_space" not in defaults
    plan = get_method("forgetting").eval_plan(tiny_data())
    assert plan.epochs_no_aug == 300 and not plan.dsa
