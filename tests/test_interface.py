"""The method interface: SyntheticSet format, config overrides, registry, run context."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import pytest
import torch

from methods import available_methods, get_method
from methods.config import MethodConfig, build_config, config_problems
from methods.context import MemoryCheckpointStore, RunContext, StopRequested
from methods.errors import MethodError, SyntheticSetFormatError
from methods.protocol import EvalPlan
from methods.synset import FORMAT_VERSION, SyntheticSet
from tests.conftest import make_classdata


def _synset() -> SyntheticSet:
    return SyntheticSet(
        images=torch.randn(4, 1, 8, 8),
        labels=torch.tensor([0, 0, 1, 1]),
        method="random",
        config={"a": 1, "nested": {"t": (1, 2)}},
        seed=3,
        ipc=2,
        num_classes=2,
        cost={"wall_time_s": 1.5},
        indices=torch.tensor([5, 7, 1, 2]),
        dataset="digits",
        mean=(0.5,),
        std=(0.25,),
        class_names=("zero", "one"),
        eval_plan=EvalPlan(epochs_no_aug=600),
    )


def test_synthetic_set_round_trips_with_weights_only(tmp_path):
    s = _synset()
    path = s.save(tmp_path / "sub" / "set.pt")
    raw = torch.load(path, weights_only=True)  # must not need unpickling of custom classes
    assert raw["format_version"] == FORMAT_VERSION
    t = SyntheticSet.load(path)
    assert torch.equal(t.images, s.images) and torch.equal(t.labels, s.labels)
    assert torch.equal(t.indices, s.indices)
    assert t.config == {"a": 1, "nested": {"t": [1, 2]}}
    assert (t.method, t.seed, t.ipc, t.dataset, t.class_names) == ("random", 3, 2, "digits", ("zero", "one"))
    assert t.cost == {"wall_time_s": 1.5} and t.eval_plan == EvalPlan(epochs_no_aug=600)


def test_loading_garbage_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(SyntheticSetFormatError, match="could not be read"):
        SyntheticSet.load(bad)
    with pytest.raises(SyntheticSetFormatError, match="does not exist"):
        SyntheticSet.load(tmp_path / "missing.pt")


def test_loading_other_torch_file_is_rejected(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(SyntheticSetFormatError, match="not a synthetic set"):
        SyntheticSet.load(other)


def test_newer_format_version_is_rejected(tmp_path):
    d = _synset().to_dict()
    d["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(d, path)
    with pytest.raises(SyntheticSetFormatError, match="newer format version"):
        SyntheticSet.load(path)


@dataclasses.dataclass(frozen=True)
class _Cfg(MethodConfig):
    lr: float = 0.1
    steps: int = 3
    mode: Literal["a", "b"] = "a"
    weights: tuple[float, ...] = (1.0, 2.0)
    name: Optional[str] = None


def test_config_overrides_are_validated_and_coerced():
    cfg = build_config(_Cfg, {"lr": 1, "weights": [3, 4], "name": "x"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.weights == (3.0, 4.0)
    problems = config_problems(_Cfg, {"lr": "fast", "steps": 2.5, "mode": "c", "bogus": 1, "steps2": 0})
    text = "\n".join(problems)
    assert len(problems) == 5
    assert "'lr' must be a number" in text and "'mode'" in text and "unknown config key 'bogus'" in text
    with pytest.raises(MethodError):
        build_config(_Cfg, {"steps": True})  # bool is not an int here


def test_registry_unknown_method_lists_valid_names():
    assert "random" in available_methods()
    with pytest.raises(MethodError, match="valid methods: .*random"):
        get_method("no-such-method")


def test_random_is_seeded_and_selects_real_images():
    real = make_classdata(num_classes=3, per_class=20, channel=1, size=8)
    m = get_method("random")
    a = m.condense(real, 4, seed=1)
    b = m.condense(real, 4, seed=1)
    c = m.condense(real, 4, seed=2)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.equal(a.images, real.images[a.indices])
    assert a.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(set(a.indices.tolist())) == 12
    assert a.cost["wall_time_s"] >= 0 and a.cost["peak_memory_mb"] > 0


@pytest.mark.parametrize("ipc", [0, -1, 21])
def test_impossible_ipc_is_a_clear_error(ipc):
    real = make_classdata(num_classes=3, per_class=20, channel=1, size=8)
    with pytest.raises(MethodError, match="IPC"):
        get_method("random").condense(real, ipc, seed=0)


def test_classdata_per_class_index_and_sampling():
    real = make_classdata(num_classes=4, per_class=10, channel=1, size=4)
    assert real.class_counts() == [10] * 4
    for c, idx in enumerate(real.indices_by_class):
        assert (real.labels[idx] == c).all()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    x1, y1 = real.sample_per_class(3, g1)
    x2, _ = real.sample_per_class(3, g2)
    assert torch.equal(x1, x2) and y1.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_run_context_checkpoint_snapshot_and_stop():
    store = MemoryCheckpointStore()
    ctx = RunContext(checkpoint=store, checkpoint_every=2, stop_after=3)
    state = {"x": torch.zeros(1)}
    ctx.iteration_done(0, lambda: {"iteration": 1, "x": state["x"].clone()})
    assert store.saves == 0
    ctx.iteration_done(1, lambda: {"iteration": 2, "x": state["x"].clone()})
    assert store.saves == 1 and store.load()["iteration"] == 2
    with pytest.raises(StopRequested):
        ctx.iteration_done(2, lambda: {"iteration": 3, "x": state["x"].clone()})
    assert store.load()["iteration"] == 3
    assert ctx.save_latest() and store.saves == 3


def test_loop_state_round_trips_history_and_refuses_foreign_or_old_checkpoints():
    from methods.errors import MethodError
    from methods.loop import LoopState

    def make(seed=0, ipc=1):
        images = torch.zeros(2, 1, 4, 4, requires_grad=True)
        opt = torch.optim.SGD([images], lr=0.1, momentum=0.5)
        history: list = []
        gen = torch.Generator().manual_seed(5)
        loop = LoopState(images, opt, {"data": gen}, {"steps": 0}, history=history,
                         identity={"method": "m", "seed": seed, "ipc": ipc})
        return loop, images, opt, history, gen

    loop, images, opt, history, gen = make()
    assert loop.restore(None) == 0
    images.grad = torch.ones_like(images)
    opt.step()
    history.extend([1.5, 0.5])
    torch.rand(3, generator=gen)
    loop.counters["steps"] = 7
    state = loop.snapshot(3)()
    expected_next = torch.rand(1, generator=gen)

    again, images2, opt2, history2, gen2 = make()
    assert again.restore(state) == 3
    assert torch.equal(images2, images) and history2 == [1.5, 0.5] and again.counters["steps"] == 7
    assert torch.equal(torch.rand(1, generator=gen2), expected_next)
    assert opt2.state_dict()["state"][0]["momentum_buffer"].abs().sum() > 0

    other, *_ = make(seed=1)
    with pytest.raises(MethodError, match=r"different run: seed 0 \(this run: 1\)"):
        other.restore(state)
    old = {k: v for k, v in state.items() if k != "opt_img"}
    with pytest.raises(MethodError, match="lacks opt_img.*delete it"):
        make()[0].restore(old)
