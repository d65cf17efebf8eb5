"""The outer loop every learned method shares: :func:`run_loop`, its inputs (:class:`LoopRun`),
what a method's ``start`` returns (:class:`Synthesis`) and the resumable state (:class:`LoopState`).

A learned method (DC/DSA, DM, CAFE, ...) is an initialisation plus a per-iteration step. The
driver owns everything around them, identically for every method:

* the iteration budget: ``context.iterations`` when given, else ``config.iterations``;
* the image learning-rate schedule: milestones given as fractions of the budget, the lr
  multiplied by ``lr_decay`` at each (CAFE's 0.6/0.8/0.9 halvings; none for DC and DM);
* the seeded named CPU generators, in the order the method declares them (one name: that
  generator is seeded with the run's seed; several: each is seeded from a root generator of
  the run's seed in declaration order), so every random stream is fixed by the seed;
* checkpoint/resume through :class:`LoopState` and :meth:`RunContext.iteration_done` /
  :meth:`RunContext.resume_state` (and so preemption: ``RunContext.save_latest``);
* progress: a tqdm bar (``context.progress``) and a ``context.log`` line at the first and last
  iteration, every twentieth of the budget and at least every :data:`LOG_INTERVAL_S` seconds
  (within long iterations too, where the step calls ``run.heartbeat()``);
* wall time (summed across resumes) and peak memory (:class:`CostMeter`), and the cost figures.

The checkpoint identity is the method's name, seed, IPC and config (without ``iterations``);
for a method with a budget-relative lr schedule also the budget, because resuming with another
budget would follow another schedule than a fresh run. A checkpoint of another identity is
refused with a one-line message saying to delete it. Methods without such a schedule (DC, DM)
may resume with a larger budget: the first iterations do not depend on it.

The :class:`~methods.base.Method` subclass that plugs a method into this driver,
``LearnedMethod``, lives in :mod:`methods.synthesis`: ``methods.base`` imports this module, so
this module cannot import ``Method``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
from torch import Tensor

from methods.context import CostMeter, RunContext
from methods.errors import MethodError
from methods.realdata import ClassData
from methods.rng import derive_seed, make_generator

LOG_INTERVAL_S = 30.0
"""Longest stretch of work (seconds) between two progress lines in ``context.log``."""


class LoopState:
    """The resumable state of an iterative method, shared by every method that learns images.

    Holds references to the live synthetic ``images`` (a leaf tensor), their ``optimizer``, the
    method's named CPU ``generators``, a ``counters`` dict (cost figures; ``elapsed_s`` sums
    wall time across resumes), an optional per-iteration ``history`` list (e.g. losses) and
    optional further learned leaf ``tensors`` (e.g. soft labels, a learned lr) and
    ``optimizers`` by name. ``identity`` (method, seed, IPC, config, ...) is stored with every
    snapshot and must match on restore, so a checkpoint of another run is refused rather than
    silently continued. :meth:`restore` loads a checkpoint into them and returns the iteration to
    continue from; :meth:`snapshot` returns the ``state_fn`` that
    :meth:`RunContext.iteration_done` expects (cloned tensors, so later steps cannot alter it).
    """

    def __init__(
        self,
        images: Tensor,
        optimizer: torch.optim.Optimizer,
        generators: Mapping[str, torch.Generator],
        counters: dict[str, float],
        *,
        identity: Optional[Mapping[str, Any]] = None,
        history: Optional[list] = None,
        tensors: Optional[Mapping[str, Tensor]] = None,
        optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
    ) -> None:
        self.images = images
        self.optimizer = optimizer
        self.generators = dict(generators)
        self.counters = counters
        self.counters.setdefault("elapsed_s", 0.0)
        self.identity = dict(identity or {})
        self.history = history
        self.tensors = dict(tensors or {})
        self.optimizers = dict(optimizers or {})
        self._run_start = time.perf_counter()
        self.elapsed_before = 0.0

    def restore(self, state: Optional[Mapping[str, Any]]) -> int:
        """Load ``state`` (None = fresh start); returns the first iteration to run."""
        start = 0
        if state is not None:
            required = ["iteration", "images", "opt_img", "generators", "counters"]
            required += ["tensors"] * bool(self.tensors) + ["optimizers"] * bool(self.optimizers)
            missing = [k for k in required if k not in state]
            if missing or not isinstance(state.get("images"), Tensor):
                raise MethodError(
                    f"the checkpoint lacks {', '.join(missing) or 'images'}: it was written by another "
                    f"version or another kind of run; delete it to start afresh"
                )
            differ = identity_differences(dict(state.get("identity") or {}), self.identity)
            if differ:
                raise MethodError(
                    f"the checkpoint belongs to a different run: {'; '.join(differ)}; delete it or use "
                    f"the matching run"
                )
            if tuple(state["images"].shape) != tuple(self.images.shape):
                raise MethodError(
                    f"checkpoint holds images of shape {tuple(state['images'].shape)}, this run needs "
                    f"{tuple(self.images.shape)}: it belongs to a different run; clear it to start afresh"
                )
            with torch.no_grad():
                self.images.copy_(state["images"].to(self.images.device))
                for key, tensor in self.tensors.items():
                    tensor.copy_(state["tensors"][key].to(tensor.device))
            self.optimizer.load_state_dict(state["opt_img"])
            for key, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
            for key, gen in self.generators.items():
                gen.set_state(state["generators"][key])
            self.counters.update(state["counters"])
            if self.history is not None:
                self.history[:] = list(state.get("history", []))
            start = int(state["iteration"])
        self._run_start = time.perf_counter()
        self.elapsed_before = float(self.counters["elapsed_s"])
        return start

    def snapshot(self, next_iteration: int) -> Callable[[], dict[str, Any]]:
        def state_fn() -> dict[str, Any]:
            counters = dict(self.counters)
            counters["elapsed_s"] = self.elapsed_before + time.perf_counter() - self._run_start
            state = {
                "iteration": next_iteration,
                "identity": dict(self.identity),
                "images": self.images.detach().cpu().clone(),
                "opt_img": _cpu_state(self.optimizer.state_dict()),
                "generators": {k: g.get_state().clone() for k, g in self.generators.items()},
                "counters": counters,
            }
            if self.history is not None:
                state["history"] = list(self.history)
            if self.tensors:
                state["tensors"] = {k: t.detach().cpu().clone() for k, t in self.tensors.items()}
            if self.optimizers:
                state["optimizers"] = {k: _cpu_state(o.state_dict()) for k, o in self.optimizers.items()}
            return state

        return state_fn


def identity_differences(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """``"key theirs (this run: ours)"`` for every identity entry that differs; mapping entries
    (the config) are compared key by key, so only the differing config keys are named."""
    out = []
    for key, mine in ours.items():
        other = theirs.get(key)
        if isinstance(mine, Mapping) and other is None:
            out.append(f"{key} not recorded (a checkpoint of an older version)")
        elif isinstance(mine, Mapping) and isinstance(other, Mapping):
            for sub in sorted(set(mine) | set(other), key=str):
                if other.get(sub) != mine.get(sub):
                    out.append(f"{key} {sub} {other.get(sub)!r} (this run: {mine.get(sub)!r})")
        elif other != mine:
            out.append(f"{key} {_short(other)} (this run: {_short(mine)})")
    return out


def _short(value: Any) -> str:
    return "none recorded" if value is None else repr(value)


def _cpu_state(value: Any) -> Any:
    """A deep copy of an optimiser state dict with tensors on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _cpu_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_state(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def seeded_generators(seed: int, names: Sequence[str]) -> dict[str, torch.Generator]:
    """The named CPU generators of one run: a single name gets a generator seeded with ``seed``;
    several names each get one seeded from a root generator of ``seed``, in the given order."""
    if not names:
        raise MethodError("a learned method must declare at least one generator name")
    if len(set(names)) != len(names):
        raise MethodError(f"generator names must be distinct, got {list(names)}")
    if len(names) == 1:
        return {names[0]: make_generator(seed)}
    root = make_generator(seed)
    return {k: make_generator(derive_seed(root)) for k in names}


def _no_heartbeat() -> None:
    return None


@dataclass
class LoopRun:
    """What the driver hands a method's ``start`` and ``step``: the data, IPC, seed, context,
    the iteration budget and the seeded generators (see :func:`seeded_generators`)."""

    real: ClassData
    ipc: int
    seed: int
    context: RunContext
    iterations: int
    generators: dict[str, torch.Generator]
    heartbeat: Callable[[], None] = field(default=_no_heartbeat, repr=False)
    """Call from inside a long ``step`` (e.g. after every image step): logs a progress line when
    :data:`LOG_INTERVAL_S` passed since the last one, so job logs show progress within long
    iterations too."""

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def num_classes(self) -> int:
        return self.real.num_classes


@dataclass(kw_only=True)
class Synthesis:
    """What a method's ``start`` returns; methods subclass it (a ``kw_only`` dataclass) to add
    the per-run values their ``step`` needs (resolved config, augmentation, ...).

    ``images`` is the learned leaf tensor and ``optimizer`` its optimiser (the driver applies the
    lr schedule to it); ``labels`` their labels; ``counters`` the cost counters the step updates
    (saved with every checkpoint); ``history`` an optional per-iteration list (checkpointed);
    ``tensors``/``optimizers`` further learned leaf tensors and their optimisers (checkpointed).
    """

    images: Tensor
    labels: Tensor
    optimizer: torch.optim.Optimizer
    counters: dict[str, float] = field(default_factory=dict)
    history: Optional[list] = None
    tensors: dict[str, Tensor] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)


class LoopMethod(Protocol):
    """What :func:`run_loop` needs of a method (``methods.synthesis.LearnedMethod`` provides
    the defaults; a method implements ``start`` and ``step``)."""

    name: str
    config: Any
    generator_names: tuple[str, ...]
    loss_label: str
    lr_decay: float
    real_on_device: bool

    def lr_milestones(self) -> Sequence[float]: ...

    def start(self, run: LoopRun) -> Synthesis: ...

    def step(self, run: LoopRun, syn: Any, iteration: int) -> Any: ...

    def progress_note(self, run: LoopRun, syn: Any) -> str: ...

    def cost_figures(self, run: LoopRun, syn: Any) -> dict[str, float]: ...

    def finish(self, run: LoopRun, syn: Any, cost: dict[str, float]) -> Any: ...


def iteration_budget(method: LoopMethod, context: RunContext) -> int:
    """``context.iterations`` when given, else the config's ``iterations``; at least 1."""
    total = context.iterations if context.iterations is not None else getattr(method.config, "iterations", None)
    if total is None:
        raise MethodError(f"{method.name}: its config has no 'iterations' and the run gave no budget")
    if int(total) < 1:
        raise MethodError(f"{method.name} needs at least 1 iteration, got {total}")
    return int(total)


def lr_factor(iteration: int, milestones: Sequence[int], decay: float) -> float:
    """The lr multiplier at ``iteration``: ``decay`` to the number of milestones reached."""
    return decay ** sum(1 for m in milestones if iteration >= m)


class _Progress:
    """The driver's progress lines: one per due iteration, and heartbeats within iterations."""

    def __init__(self, method: LoopMethod, run: LoopRun, syn: Synthesis, context: RunContext,
                 *, start: float, before: float) -> None:
        self.method, self.run, self.syn, self.context = method, run, syn, context
        self.start, self.before = start, before
        self.iteration = 0
        self.last = time.perf_counter()

    def overdue(self) -> bool:
        return time.perf_counter() - self.last >= LOG_INTERVAL_S

    def line(self, what: str) -> None:
        now = time.perf_counter()
        self.last = now
        note = self.method.progress_note(self.run, self.syn)
        lr = self.syn.optimizer.param_groups[0]["lr"]
        self.context.log(
            f"{self.method.name} ipc={self.run.ipc} iter {self.iteration + 1}/{self.run.iterations}: {what} "
            f"lr {lr:g}{' ' + note if note else ''} ({self.before + now - self.start:.0f} s)"
        )

    def heartbeat(self) -> None:
        if self.overdue():
            self.line("in progress")


def run_loop(method: LoopMethod, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext]) -> Any:
    """Run a learned method's whole outer loop (module docstring) and return ``method.finish``'s
    result (normally the :class:`~methods.synset.SyntheticSet`)."""
    validate = getattr(method.config, "validate", None)
    if callable(validate):
        validate()
    real.validate_ipc(ipc)
    context = context or RunContext(device=real.device)
    device = context.device
    if method.real_on_device and real.device != device:
        real = real.to(device)
    meter = CostMeter(device)
    total = iteration_budget(method, context)
    fractions = tuple(method.lr_milestones())
    milestones = [int(round(f * total)) for f in fractions]
    run = LoopRun(real=real, ipc=int(ipc), seed=int(seed), context=context, iterations=total,
                  generators=seeded_generators(seed, method.generator_names))
    syn = method.start(run)
    base_lrs = [group["lr"] for group in syn.optimizer.param_groups]
    identity: dict[str, Any] = {"method": method.name, "seed": int(seed), "ipc": int(ipc),
                                "config": {k: v for k, v in method.config.to_dict().items() if k != "iterations"}}
    if milestones:
        identity["budget"] = total
    loop = LoopState(syn.images, syn.optimizer, run.generators, syn.counters, identity=identity,
                     history=syn.history, tensors=syn.tensors, optimizers=syn.optimizers)
    start_it = loop.restore(context.resume_state())

    from tqdm.auto import tqdm

    every = max(1, total // 20)
    progress = _Progress(method, run, syn, context, start=meter.start, before=loop.elapsed_before)
    run.heartbeat = progress.heartbeat
    bar = tqdm(range(start_it, total), total=total, initial=start_it, desc=f"{method.name} ipc={ipc}",
               disable=not context.progress)
    try:
        for it in bar:
            progress.iteration = it
            factor = lr_factor(it, milestones, method.lr_decay) if milestones else None
            if factor is not None:
                for group, lr in zip(syn.optimizer.param_groups, base_lrs):
                    group["lr"] = lr * factor
            loss = method.step(run, syn, it)
            due = it == start_it or it == total - 1 or (it + 1) % every == 0 or progress.overdue()
            if due or context.progress:
                value = float("nan") if loss is None else float(loss)
                bar.set_postfix({method.loss_label: f"{value:.4g}"})
            if due:
                progress.line(f"{method.loss_label} {value:.4g}")
            context.iteration_done(it, loop.snapshot(it + 1))
    finally:
        bar.close()
        run.heartbeat = _no_heartbeat
    cost = meter.figures(iterations=total, **method.cost_figures(run, syn))
    cost["wall_time_s"] += loop.elapsed_before
    return method.finish(run, syn, cost)
