"""The resumable state of a learned method's outer loop (:class:`LoopState`)."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from methods.errors import MethodError


class LoopState:
    """The resumable state of an iterative method, shared by every method that learns images.

    Holds references to the live synthetic ``images`` (a leaf tensor), their ``optimizer``, the
    method's named CPU ``generators``, a ``counters`` dict (cost figures; ``elapsed_s`` sums
    wall time across resumes) and an optional per-iteration ``history`` list (e.g. losses).
    ``identity`` (method, seed, IPC, ...) is stored with every snapshot and must match on
    restore, so a checkpoint of another run is refused rather than silently continued.
    :meth:`restore` loads a checkpoint into them and returns the iteration to continue from;
    :meth:`snapshot` returns the ``state_fn`` that :meth:`RunContext.iteration_done` expects
    (cloned tensors, so later steps cannot alter it).
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
    ) -> None:
        self.images = images
        self.optimizer = optimizer
        self.generators = dict(generators)
        self.counters = counters
        self.counters.setdefault("elapsed_s", 0.0)
        self.identity = dict(identity or {})
        self.history = history
        self._run_start = time.perf_counter()
        self.elapsed_before = 0.0

    def restore(self, state: Optional[Mapping[str, Any]]) -> int:
        """Load ``state`` (None = fresh start); returns the first iteration to run."""
        start = 0
        if state is not None:
            missing = [k for k in ("iteration", "images", "opt_img", "generators", "counters") if k not in state]
            if missing or not isinstance(state.get("images"), Tensor):
                raise MethodError(
                    f"the checkpoint lacks {', '.join(missing) or 'images'}: it was written by another "
                    f"version or another kind of run; delete it to start afresh"
                )
            theirs = dict(state.get("identity") or {})
            differ = {k: (theirs.get(k), v) for k, v in self.identity.items() if theirs.get(k) != v}
            if differ:
                what = ", ".join(f"{k} {a!r} (this run: {b!r})" for k, (a, b) in differ.items())
                raise MethodError(
                    f"the checkpoint belongs to a different run: {what}; delete it or use the matching run"
                )
            if tuple(state["images"].shape) != tuple(self.images.shape):
                raise MethodError(
                    f"checkpoint holds images of shape {tuple(state['images'].shape)}, this run needs "
                    f"{tuple(self.images.shape)}: it belongs to a different run; clear it to start afresh"
                )
            with torch.no_grad():
                self.images.copy_(state["images"].to(self.images.device))
            self.optimizer.load_state_dict(state["opt_img"])
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
            return state

        return state_fn


def _cpu_state(value: Any) -> Any:
    """A deep copy of an optimiser state dict with tensors on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _cpu_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_state(v) for v in value)
    return value
