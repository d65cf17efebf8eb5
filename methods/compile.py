"""Compiled hot paths: one ``torch.compile`` graph per architecture, method and batch shape,
shared by every freshly built network.

Condensation methods build a new network every outer iteration and the evaluation protocol a
new one per evaluation network, so compiling a module would compile again for every network.
Here the compiled function takes the parameters as inputs: ``functional_call`` over a cached
*skeleton* of the architecture (a copy of the first network seen), called with the current
network's parameters and buffers. Dynamo guards on the tensors' shapes, dtypes and devices,
not on their identity, so a second network of the same architecture and batch shape runs the
same graph (``tests/test_compile.py`` fails if it recompiles).

Batch shape: every call is cut into chunks of the entry's fixed ``batch`` and the last chunk is
padded with zeros to it (the padded rows' outputs are dropped, their gradients are exactly
zero), so the last minibatch of an epoch or of a test pass does not compile a second graph.
Padding is exact only for networks whose layers act per sample: networks with batch norm or
dropout (:func:`compilable`) always run eager.

Modes (``compile='auto'|'on'|'off'``, :func:`resolve_compile`):

* ``off``: the plain eager path, bit for bit the code without this module.
* ``on``: compile where :func:`compilable` and the toolchain allow; where compilation is
  unavailable (no C++ compiler for the CPU backend, no triton for CUDA) or a compilation fails,
  one warning line is logged and the eager path runs.
* ``auto``: ``on`` when the caller's expected number of compiled calls (``steps``, e.g.
  networks x epochs x minibatches) reaches :data:`AUTO_MIN_STEPS` for the device, else ``off``:
  a cold compilation is a fixed cost per graph that a short run never earns back (README,
  Performance, gives the measurement and the break-even).

Counters (:data:`STATS`, :func:`compile_stats`): graphs compiled, entries, recompilations (a
second graph for an entry), fall-backs and compile seconds, for the cost figures.

Results: compiled and eager differ by floating-point reassociation only (tests state the
tolerance per path); the same seed and mode give identical sets.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from methods.errors import MethodError

log = logging.getLogger("methods.compile")

COMPILE_MODES = ("auto", "on", "off")

AUTO_MIN_STEPS = {"cpu": 2000, "cuda": 2000}
"""Expected compiled calls from which ``auto`` compiles, per device type (README, Performance,
gives the measured compile cost per graph, the saving per call and the break-even)."""

BACKEND_ENV = "CONDBENCH_COMPILE_BACKEND"
"""Environment override of the ``torch.compile`` backend (default ``inductor``; tests use
``aot_eager``, which traces and runs AOTAutograd without generating kernels)."""


@dataclass
class CompileStats:
    """Process-wide compilation counters (reset with :func:`reset_stats`)."""

    graphs: int = 0
    entries: int = 0
    recompiles: int = 0
    fallbacks: int = 0
    seconds: float = 0.0
    calls: int = 0


STATS = CompileStats()
_WARNED: set[str] = set()


def compile_stats() -> dict[str, float]:
    """The counters as a dict (keys prefixed ``compile_``) for cost figures."""
    return {f"compile_{k}": v for k, v in asdict(STATS).items()}


def compile_delta(base: dict[str, float]) -> dict[str, float]:
    """What :func:`compile_stats` gained since ``base`` (an earlier :func:`compile_stats`):
    graphs compiled, recompilations, fall-backs and compile seconds of one run."""
    now = compile_stats()
    return {k: now[k] - base.get(k, 0) for k in ("compile_graphs", "compile_recompiles", "compile_fallbacks",
                                                 "compile_seconds")}


def reset_stats() -> None:
    for k, v in asdict(CompileStats()).items():
        setattr(STATS, k, v)


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def backend() -> str:
    return os.environ.get(BACKEND_ENV, "inductor")


def unavailable_reason(device: torch.device | str) -> Optional[str]:
    """Why compilation cannot run on ``device`` here, or None."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if backend() != "inductor":
        return None
    dev = torch.device(device)
    if dev.type == "cpu":
        cxx = os.environ.get("CXX") or "c++"
        if not (shutil.which(cxx) or shutil.which("g++") or shutil.which("clang++")):
            return "no C++ compiler on PATH for inductor's CPU kernels"
    elif dev.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed (inductor's CUDA kernels need it)"
    else:
        return f"compilation is not supported here on device type '{dev.type}'"
    return None


def resolve_compile(mode: str, device: torch.device | str, *, steps: Optional[int] = None) -> bool:
    """Whether to compile for ``mode`` on ``device``; ``steps`` is the caller's expected number
    of compiled calls (``auto`` compiles from :data:`AUTO_MIN_STEPS`; unknown: eager).
    ``on`` where compilation is unavailable warns once and returns False."""
    if mode not in COMPILE_MODES:
        raise MethodError(f"unknown compile mode '{mode}'; valid modes: {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return False
    reason = unavailable_reason(device)
    if reason is not None:
        if mode == "on":
            _warn_once(f"compile=on but {reason}: running eager")
        return False
    if mode == "on":
        return True
    threshold = AUTO_MIN_STEPS.get(torch.device(device).type, AUTO_MIN_STEPS["cpu"])
    return steps is not None and steps >= threshold


def context_mode(context: Any) -> str:
    """The compile mode a :class:`methods.context.RunContext` carries (its ``compile`` field;
    ``'off'`` for a context without one)."""
    return str(getattr(context, "compile", "off"))


def compilable(net: nn.Module) -> bool:
    """Whether ``net`` may run compiled: every layer acts per sample (no batch norm, whose batch
    statistics padding would change) and nothing draws from the global RNG (no dropout)."""
    return not any(
        isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)) for m in net.modules()
    )


class _Bound(nn.Module):
    """A module whose forward is ``getattr(net, method)``: lets ``functional_call`` reach
    ``feature_maps``/``embed`` as well as ``forward``."""

    def __init__(self, net: nn.Module, method: str) -> None:
        super().__init__()
        self.net = net
        self.method = method

    def forward(self, x: Tensor) -> Any:
        return getattr(self.net, self.method)(x)


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _raise_cache_limit() -> None:
    import torch._dynamo.config as cfg

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < 256:
            setattr(cfg, name, 256)  # entries (architecture x method x batch) share one code object


class _Entry:
    """One compiled function of (architecture, method, mode, batch shape)."""

    def __init__(self, net: nn.Module, method: str, cuda_graphs: bool) -> None:
        _raise_cache_limit()
        skeleton = copy.deepcopy(net)
        for p in skeleton.parameters():
            p.requires_grad_(False)
        holder = _Bound(skeleton, method)

        def run(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Any:
            return torch.func.functional_call(holder, (params, buffers), (x,))

        options = {"mode": "reduce-overhead"} if cuda_graphs else {}
        self.fn = torch.compile(run, backend=backend(), dynamic=False, **options)
        self.graphs = 0
        self.failed: Optional[str] = None

    def __call__(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Any:
        before = _graph_count()
        t0 = time.perf_counter()
        out = self.fn(params, buffers, x)
        new = _graph_count() - before
        if new:
            STATS.seconds += time.perf_counter() - t0
            STATS.graphs += new
            STATS.recompiles += new if self.graphs else new - 1
            self.graphs += new
        STATS.calls += 1
        return out


_ENTRIES: dict[tuple, _Entry] = {}


def clear_cache() -> None:
    """Forget every compiled entry and Dynamo's caches (tests). Entries are otherwise kept for
    the process's life: Dynamo guards on the skeleton's identity, which a freed skeleton's
    successor could reuse."""
    _ENTRIES.clear()
    torch._dynamo.reset()


def _slice(out: Any, k: int) -> Any:
    if isinstance(out, Tensor):
        return out[:k]
    return type(out)(_slice(o, k) for o in out)


def _cat(outs: list[Any]) -> Any:
    if isinstance(outs[0], Tensor):
        return torch.cat(outs)
    return type(outs[0])(_cat([o[i] for o in outs]) for i in range(len(outs[0])))


class CompiledCall:
    """``net.<method>(x)`` through the shared compiled entry of its architecture, ``x`` cut into
    padded chunks of ``batch``; calls the eager method where its entry failed to compile.

    ``param_grads=False`` passes the parameters detached: use it where only the input's
    gradient is wanted (an image step), so the compiled backward skips the weight gradients."""

    def __init__(self, net: nn.Module, method: str, batch: int, *, param_grads: bool = True,
                 cuda_graphs: bool = False) -> None:
        if batch < 1:
            raise MethodError(f"compiled batch must be >= 1, got {batch}")
        self.net, self.method, self.batch = net, method, int(batch)
        self.param_grads, self.cuda_graphs = param_grads, cuda_graphs
        first = next(iter(net.parameters()), None)
        self._structure = (type(net).__module__, type(net).__qualname__, repr(net),
                           None if first is None else (str(first.device), first.dtype))

    def _entry(self, x: Tensor) -> tuple[tuple, _Entry]:
        key = (self._structure, self.method, self.net.training, torch.is_grad_enabled(),
               torch.is_autocast_enabled(x.device.type) if x.device.type in ("cpu", "cuda") else False,
               self.param_grads, self.batch, tuple(x.shape[1:]), x.dtype, str(x.device), backend(), self.cuda_graphs)
        entry = _ENTRIES.get(key)
        if entry is None:
            entry = _ENTRIES[key] = _Entry(self.net, self.method, self.cuda_graphs)
            STATS.entries += 1
        return key, entry

    def __call__(self, x: Tensor) -> Any:
        eager = getattr(self.net, self.method)
        if x.shape[0] == 0:
            return eager(x)
        key, entry = self._entry(x)
        if entry.failed is not None:
            return eager(x)
        if self.param_grads:
            params = dict(self.net.named_parameters(prefix="net"))
        else:
            params = {k: v.detach() for k, v in self.net.named_parameters(prefix="net")}
        buffers = dict(self.net.named_buffers(prefix="net"))
        outs = []
        try:
            for s in range(0, x.shape[0], self.batch):
                chunk = x[s : s + self.batch]
                k = chunk.shape[0]
                if k < self.batch:
                    chunk = torch.cat([chunk, chunk.new_zeros((self.batch - k, *chunk.shape[1:]))])
                out = entry(params, buffers, chunk)
                outs.append(_slice(out, k) if k < self.batch else out)
        except Exception as exc:  # compilation failed: eager from now on for this entry
            entry.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            STATS.fallbacks += 1
            _warn_once(f"torch.compile failed for {type(self.net).__name__}.{self.method} "
                       f"({entry.failed}); running eager")
            return eager(x)
        return outs[0] if len(outs) == 1 else _cat(outs)


def compiled(net: nn.Module, method: str = "forward", *, enabled: bool, batch: int, param_grads: bool = True,
             cuda_graphs: bool = False) -> Callable[[Tensor], Any]:
    """``net.<method>`` itself when not ``enabled`` or ``net`` is not :func:`compilable`, else
    its :class:`CompiledCall` (chunks of ``batch``)."""
    if not enabled or not compilable(net):
        return getattr(net, method)
    return CompiledCall(net, method, batch, param_grads=param_grads, cuda_graphs=cuda_graphs)
