"""What a method receives from its caller besides data, IPC and seed: :class:`RunContext`.

The device, progress bars, an iteration budget, where checkpoints go (:class:`CheckpointStore`),
a cache for expensive shared artefacts (e.g. herding's trained feature network) and a log
callable; plus :class:`CostMeter`, the wall-time and peak-memory figures every result records.
``benchmarks`` fills these in; ``methods`` never opens a file by name.
"""

from __future__ import annotations

import io
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch

from methods.errors import MethodError


class CheckpointStore(Protocol):
    """Where a method's loop state goes. ``benchmarks`` provides a file-backed one; tests use
    :class:`MemoryCheckpointStore`. States are dicts of tensors and primitives.

    ``save`` replaces the one resumable state. A store may also offer ``keep(state, n)``
    (:class:`KeepingCheckpointStore`): keep a copy of the state after ``n`` iterations beside
    it, never replaced by later saves -- what :attr:`RunContext.keep_at` uses for learning
    curves (the accuracy of the set at a few iterations of one run)."""

    def load(self) -> Optional[dict[str, Any]]: ...

    def save(self, state: dict[str, Any]) -> None: ...


class KeepingCheckpointStore(CheckpointStore, Protocol):
    """A :class:`CheckpointStore` that can also keep the state of chosen iterations."""

    def keep(self, state: dict[str, Any], iteration: int) -> None:
        """Keep ``state`` (``state['iteration'] == iteration``: that many iterations done)."""


class MemoryCheckpointStore:
    """In-memory :class:`CheckpointStore` (tests, debugging). Keeps a serialised copy so the
    saved state cannot alias live tensors."""

    def __init__(self) -> None:
        self._blob: Optional[bytes] = None
        self._kept: dict[int, bytes] = {}
        self.saves = 0

    def load(self) -> Optional[dict[str, Any]]:
        if self._blob is None:
            return None
        return torch.load(io.BytesIO(self._blob), weights_only=True)

    def save(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self._blob = buf.getvalue()
        self.saves += 1

    def keep(self, state: dict[str, Any], iteration: int) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self._kept[int(iteration)] = buf.getvalue()

    @property
    def kept(self) -> dict[int, dict[str, Any]]:
        """The kept states by iteration (fresh copies), ascending."""
        return {n: torch.load(io.BytesIO(blob), weights_only=True) for n, blob in sorted(self._kept.items())}


class StopRequested(Exception):
    """Raised by :meth:`RunContext.iteration_done` when ``stop_after`` iterations ran (used by
    tests to simulate preemption at an exact point)."""


@dataclass
class RunContext:
    """Everything a method receives from the caller besides data, IPC and seed.

    * ``device``: where to compute (chosen at run time by the caller, never hard-coded).
    * ``iterations``: overrides the method's iteration budget when not None.
    * ``progress``: show tqdm bars.
    * ``checkpoint`` + ``checkpoint_every``: periodic state saves; ``iteration_done`` also keeps
      the latest consistent snapshot so a preemption handler can save it (``save_latest``).
    * ``cache``: ``cache(key, compute) -> dict`` memoises expensive tensor dicts (e.g. the
      trained feature network of herding/k-center) across runs; default computes every time.
    * ``log``: a callable for one-line progress messages.
    * ``stop_after``: raise :class:`StopRequested` after this many iterations (tests).
    * ``compile``: compile mode of the method's single-backward hot paths (``'auto'``, ``'on'``,
      ``'off'``; :mod:`methods.compile`). ``'off'`` (the default here) runs the eager code, whose
      results are bit-identical to the uncompiled suite; the CLIs and sweeps default to ``'auto'``.
    * ``resources``: artefacts of an earlier, shared stage that a method needs, by name (e.g.
      ``"expert_trajectories"`` for trajectory matching); the caller loads them, a method reads
      them with :meth:`resource`, which names the missing stage in its error.
    * ``keep_at``: iteration counts N at which ``iteration_done`` also hands the state after N
      iterations to ``checkpoint.keep(state, N)`` (a :class:`KeepingCheckpointStore`), besides
      the periodic save: the points of a learning curve of this one run. Empty (the default):
      nothing is kept and nothing else changes. Needs a checkpoint store with ``keep``.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    iterations: Optional[int] = None
    progress: bool = False
    checkpoint: Optional[CheckpointStore] = None
    checkpoint_every: int = 10
    cache: Optional[Callable[[str, Callable[[], dict]], dict]] = None
    log: Callable[[str], None] = lambda msg: None
    stop_after: Optional[int] = None
    compile: str = "off"
    resources: dict[str, Any] = field(default_factory=dict)
    keep_at: frozenset[int] = frozenset()
    _latest: Optional[dict[str, Any]] = field(default=None, repr=False)
    _done_in_this_run: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        bad = [n for n in self.keep_at if isinstance(n, bool) or not isinstance(n, int) or n < 1]
        if bad:
            raise MethodError(f"keep_at must hold positive iteration counts, got {sorted(map(repr, bad))}")
        self.keep_at = frozenset(int(n) for n in self.keep_at)
        if self.keep_at and not callable(getattr(self.checkpoint, "keep", None)):
            raise MethodError("keep_at needs a checkpoint store that can keep states (one with a keep method); "
                              "give the run a checkpoint path or snapshot folder")

    def resume_state(self) -> Optional[dict[str, Any]]:
        """The last saved loop state, or None for a fresh start."""
        if self.checkpoint is None:
            return None
        state = self.checkpoint.load()
        if state is not None:
            self.log(f"resuming from checkpoint at iteration {state.get('iteration')}")
        return state

    def iteration_done(self, iteration: int, state_fn: Callable[[], dict[str, Any]]) -> None:
        """Call at the end of every outer iteration with a function returning the full loop
        state *after* that iteration (cloned tensors). ``state['iteration']`` must be the
        index of the next iteration to run. When ``iteration + 1`` is in ``keep_at`` the state
        is also kept (``checkpoint.keep``)."""
        self._done_in_this_run += 1
        if self.checkpoint is not None:
            self._latest = state_fn()
            if (iteration + 1) % max(1, self.checkpoint_every) == 0:
                self.checkpoint.save(self._latest)
            if iteration + 1 in self.keep_at:
                self.checkpoint.keep(self._latest, iteration + 1)  # type: ignore[attr-defined]
        if self.stop_after is not None and self._done_in_this_run >= self.stop_after:
            if self._latest is not None and self.checkpoint is not None:
                self.checkpoint.save(self._latest)
            raise StopRequested(f"stopped after {self._done_in_this_run} iterations")

    def save_latest(self) -> bool:
        """Save the latest consistent snapshot (called from a preemption handler)."""
        if self.checkpoint is None or self._latest is None:
            return False
        self.checkpoint.save(self._latest)
        return True

    def resource(self, name: str, how: str = "") -> Any:
        """The shared artefact ``name`` the caller provided; :class:`MethodError` if absent
        (``how`` says how to make it, e.g. which command runs the stage)."""
        if name not in self.resources:
            raise MethodError(f"this method needs {name.replace('_', ' ')}, which the run did not provide"
                              + (f"; {how}" if how else ""))
        return self.resources[name]

    def cached(self, key: str, compute: Callable[[], dict]) -> dict:
        return compute() if self.cache is None else self.cache(key, compute)


class CostMeter:
    """Wall time and peak memory of one run.

    Peak memory: on CUDA the allocator's ``max_memory_allocated`` (reset at start); on CPU the
    process's peak resident set size (``ru_maxrss``), which is process-wide and monotonic, so
    it is an upper bound for this run when several runs share a process.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def figures(self, **extra: float) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
        out = {"wall_time_s": time.perf_counter() - self.start, "peak_memory_mb": float(peak)}
        out.update({k: float(v) for k, v in extra.items()})
        return out
