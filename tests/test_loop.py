"""The shared outer loop of learned methods (methods/loop.py, methods/synthesis.LearnedMethod):
a test-only method written as one subclass (learning soft labels and a learning rate too), the lr schedule, the generator layout, checkpoint
identity (config and budget), resume, progress lines and cost figures."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import methods  # noqa: F401  (registers every method)
from methods import loop as loop_mod
from methods.config import MethodConfig
from methods.context import MemoryCheckpointStore, RunContext, StopRequested
from methods.errors import MethodError
from methods.loop import LoopRun, Synthesis, seeded_generators
from methods.registry import get_method
from methods.rng import derive_seed, make_generator
from methods.synthesis import LearnedMethod, init_synthetic, real_batch
from tests.conftest import make_classdata


@dataclass(frozen=True)
class MeanConfig(MethodConfig):
    iterations: int = 6
    lr_img: float = 0.2
    lr_milestones: tuple[float, ...] = (0.5,)
    batch_real: int = 4


@dataclass(kw_only=True)
class MeanRun(Synthesis):
    lrs: list


class MeanMatching(LearnedMethod):
    """Pulls each class's synthetic images to the mean of a random real batch, and learns
    per-image soft labels and an evaluation learning rate with their own optimiser (further
    learned tensors, checkpointed), which ``finish`` stores with the set."""

    name = "mean_matching"
    config_class = MeanConfig
    generator_names = ("init", "data")

    def lr_milestones(self):
        return self.config.lr_milestones

    def start(self, run: LoopRun) -> MeanRun:
        images, labels = init_synthetic(run.real, run.ipc, "noise", run.generators["init"], run.device)
        soft = torch.zeros(images.shape[0], run.num_classes, requires_grad=True)
        log_lr = torch.tensor(-2.0, requires_grad=True)
        return MeanRun(
            images=images, labels=labels, optimizer=torch.optim.SGD([images], lr=self.config.lr_img, momentum=0.5),
            counters={"steps": 0}, history=[], lrs=[],
            tensors={"soft_labels": soft, "log_lr": log_lr},
            optimizers={"labels_and_lr": torch.optim.SGD([soft, log_lr], lr=0.1, momentum=0.9)},
        )

    def step(self, run: LoopRun, syn: MeanRun, iteration: int) -> torch.Tensor:
        c, ipc = run.num_classes, run.ipc
        target = real_batch(run.real, self.config.batch_real, run.generators["data"], run.device)
        target = target.reshape(c, -1, *target.shape[1:]).mean(1)
        soft, log_lr = syn.tensors["soft_labels"], syn.tensors["log_lr"]
        diff = syn.images.reshape(c, ipc, *syn.images.shape[1:]) - target[:, None]
        loss = (diff.pow(2).sum() + torch.nn.functional.cross_entropy(soft, syn.labels, reduction="sum")
                + (log_lr + 3.0).pow(2))
        syn.optimizer.zero_grad()
        syn.optimizers["labels_and_lr"].zero_grad()
        loss.backward()
        syn.optimizer.step()
        syn.optimizers["labels_and_lr"].step()
        syn.lrs.append(syn.optimizer.param_groups[0]["lr"])
        syn.counters["steps"] += 1
        syn.history.append(float(loss.detach()))
        return loss.detach()

    def cost_figures(self, run, syn):
        return {"steps": syn.counters["steps"]}

    def finish(self, run, syn, cost):
        extra = {"lrs": list(syn.lrs), "history": list(syn.history)}
        return self._synset(run.real, run.ipc, run.seed, syn.images.detach(), syn.labels, cost, extra=extra,
                            soft_labels=syn.tensors["soft_labels"].detach(),
                            learned_lr=float(syn.tensors["log_lr"].detach().exp()))


def _data():
    return make_classdata(3, 10, 1, 8, seed=1)


def _run(context=None, seed=0, **overrides):
    return MeanMatching(MeanConfig(**overrides)).condense(_data(), 2, seed=seed, context=context)


def test_a_one_class_learned_method_runs_through_the_driver():
    s = _run()
    assert s.method == "mean_matching" and s.images.shape == (6, 1, 8, 8) and s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.config == MeanConfig().to_dict()
    assert s.extra["history"][-1] < s.extra["history"][0]
    # lr halved at 0.5 of the budget (iteration 3 of 6), from the config's lr
    assert s.extra["lrs"] == pytest.approx([0.2] * 3 + [0.1] * 3)
    assert s.cost["iterations"] == 6 and s.cost["steps"] == 6
    assert s.cost["wall_time_s"] > 0 and s.cost["peak_memory_mb"] > 0
    # what it learned besides the images is stored with the set and switches its evaluation plan
    assert s.soft_labels.shape == (6, 3) and s.soft_labels.argmax(1).tolist() == s.labels.tolist()
    assert 0 < s.learned_lr < float(torch.tensor(-2.0).exp())  # learned away from its start
    assert (s.eval_plan.labels, s.eval_plan.loss, s.eval_plan.lr_source) == ("soft", "soft_ce", "learned")
    again = _run()
    assert torch.equal(s.images, again.images) and not torch.equal(s.images, _run(seed=1).images)


def test_context_budget_overrides_the_config_and_moves_the_milestones():
    s = _run(context=RunContext(iterations=4))
    assert s.cost["iterations"] == 4 and s.extra["lrs"] == pytest.approx([0.2, 0.2, 0.1, 0.1])
    with pytest.raises(MethodError, match="at least 1 iteration"):
        _run(context=RunContext(iterations=0))


def test_resume_restores_images_generators_history_and_further_learned_tensors():
    full = _run()
    store = MemoryCheckpointStore()
    with pytest.raises(StopRequested):
        _run(context=RunContext(checkpoint=store, checkpoint_every=100, stop_after=4))
    state = store.load()
    assert state["iteration"] == 4 and set(state["tensors"]) == {"soft_labels", "log_lr"}
    assert set(state["optimizers"]) == {"labels_and_lr"}
    resumed = _run(context=RunContext(checkpoint=store))
    assert torch.equal(full.images, resumed.images)
    assert torch.equal(resumed.soft_labels, full.soft_labels) and resumed.learned_lr == full.learned_lr
    assert resumed.cost["steps"] == 6
    # the lr schedule is recomputed from the budget after a resume (lrs before the resume are
    # not in this run's list: it records the iterations it ran)
    assert resumed.extra["lrs"] == pytest.approx([0.1, 0.1])


def test_checkpoint_of_another_config_or_budget_is_refused_with_a_delete_hint():
    store = MemoryCheckpointStore()
    with pytest.raises(StopRequested):
        _run(context=RunContext(checkpoint=store, stop_after=2))
    with pytest.raises(MethodError, match=r"different run: config lr_img 0\.2 \(this run: 0\.3\); delete it"):
        _run(context=RunContext(checkpoint=store), lr_img=0.3)
    # a budget-relative lr schedule makes the budget part of the identity
    with pytest.raises(MethodError, match=r"budget 6 \(this run: 8\)"):
        _run(context=RunContext(checkpoint=store, iterations=8))
    with pytest.raises(MethodError, match=r"budget 6 \(this run: 8\)"):
        _run(context=RunContext(checkpoint=store), iterations=8)
    # a checkpoint written before configs were recorded names what is missing
    old = store.load()
    old["identity"].pop("config")
    legacy = MemoryCheckpointStore()
    legacy.save(old)
    with pytest.raises(MethodError, match=r"config not recorded \(a checkpoint of an older version\); delete it"):
        _run(context=RunContext(checkpoint=legacy))


def test_without_a_schedule_a_finished_run_extends_to_a_larger_budget_exactly():
    """DC has no budget-relative schedule: its first iterations do not depend on the budget, so
    a finished checkpoint continues with a larger budget to the same result as a fresh run."""
    real = make_classdata(4, 10, 1, 8, seed=0)
    cfg = {"model": "ConvNetW32", "batch_real": 8, "outer_loop": 2, "inner_loop": 2}
    store = MemoryCheckpointStore()
    get_method("dc", dict(cfg, iterations=2)).condense(real, 1, seed=3, context=RunContext(checkpoint=store, checkpoint_every=1))
    longer = get_method("dc", dict(cfg, iterations=3)).condense(real, 1, seed=3, context=RunContext(checkpoint=store))
    fresh = get_method("dc", dict(cfg, iterations=3)).condense(real, 1, seed=3)
    assert torch.equal(longer.images, fresh.images)
    assert longer.extra["loss_history"] == fresh.extra["loss_history"]


def test_cafe_refuses_to_resume_with_another_budget():
    data = make_classdata(10, 20, 1, 16)
    cfg = dict(model="ConvNetW32", batch_real=8, probe_per_class=8, batch_train=64, dynamic_bilevel=False,
               outer_loop=1, iterations=4)
    store = MemoryCheckpointStore()
    with pytest.raises(StopRequested):
        get_method("cafe", cfg).condense(data, 1, seed=0, context=RunContext(checkpoint=store, stop_after=1))
    with pytest.raises(MethodError, match=r"budget 4 \(this run: 5\); delete it"):
        get_method("cafe", cfg).condense(data, 1, seed=0, context=RunContext(checkpoint=store, iterations=5))


def test_generator_layout_one_stream_or_derived_streams():
    one = seeded_generators(7, ("data",))
    assert torch.equal(torch.rand(3, generator=one["data"]), torch.rand(3, generator=make_generator(7)))
    several = seeded_generators(7, ("init", "net", "data"))
    root = make_generator(7)
    for name in ("init", "net", "data"):
        expected = make_generator(derive_seed(root))
        assert torch.equal(torch.rand(3, generator=several[name]), torch.rand(3, generator=expected))
    assert get_method("dc").generator_names == ("data",)
    assert get_method("dm").generator_names == ("init", "net", "data", "aug")
    assert get_method("cafe").generator_names == ("init", "net", "data", "aug", "train")
    with pytest.raises(MethodError, match="distinct"):
        seeded_generators(0, ("a", "a"))


def test_progress_lines_cover_the_run_and_at_least_every_interval(monkeypatch):
    lines: list[str] = []
    _run(context=RunContext(log=lines.append), iterations=40)
    iters = [line.split("iter ")[1].split(":")[0] for line in lines]
    assert iters == [f"{i}/40" for i in (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40)]
    assert "mean_matching ipc=2 iter 1/40: loss" in lines[0] and " lr 0.2 " in lines[0]
    monkeypatch.setattr(loop_mod, "LOG_INTERVAL_S", 0.0)  # every iteration is "30 s later"
    lines.clear()
    _run(context=RunContext(log=lines.append), iterations=5)
    assert len(lines) == 5
    # within a long iteration, DC and CAFE report after every image step and inner loop
    lines.clear()
    get_method("dc", {"model": "ConvNetW32", "batch_real": 8, "outer_loop": 2, "inner_loop": 2, "iterations": 1}).condense(
        make_classdata(4, 10, 1, 8, seed=0), 1, seed=0, context=RunContext(log=lines.append))
    assert [line.split(": ")[1].split(" lr")[0] for line in lines][:3] == ["in progress"] * 3
    assert lines[-1].startswith("dc ipc=1 iter 1/1: matching loss ")


def test_progress_bar_shows_the_run(capsys):
    _run(context=RunContext(progress=True), iterations=3)
    err = capsys.readouterr().err
    assert "mean_matching ipc=2" in err and "3/3" in err
