"""Perf-suite machinery: device choice, quick mode, interleaved oracle/fast timing, peak memory,
the matmul peak, and the Markdown table printed at the end of the session.

Environment:

* ``CONDBENCH_DEVICE``: ``cuda`` / ``cpu`` / ``cuda:1`` ...; default ``cuda`` if available.
* ``CONDBENCH_PERF_QUICK=1``: tiny sizes, one round: only checks that every case runs (CI).
* ``CONDBENCH_PERF_THREADS``: intra-op threads (default: every core, 1 in quick mode; the
  unit-test conftest pins 1 thread, the perf suite undoes that).
* ``CONDBENCH_PERF_BATCH_REAL``: real images per class for the 10-class step cases (default
  256, the reference's; 100 classes use an eighth). ``CONDBENCH_PERF_EVAL_SCALE``: scale of
  the evaluation-protocol case (default 0.01 of 300 epochs / 10,000 test images).
* ``CONDBENCH_PERF_ROUNDS``: rounds per case (default: 3, 2 for large cases; 1 in quick mode).
* ``CONDBENCH_PERF_OUT``: where the JSON results go (default ``.perf/results.json``);
  ``python -m tests.perf.report`` re-prints the table from it.

Timing: each round runs the oracle and the fast path once each, alternating which goes first
(ABBA), so machine noise hits both; the ratio is median(oracle) / median(fast) from the same
rounds. The fast path runs once before the rounds (warm-up, under ``FlopCounterMode`` to count
its FLOPs). pytest-benchmark times the (oracle + fast) pair per round; its ``extra_info``
holds the per-side figures.

Peak memory of one call: on CUDA ``max_memory_allocated`` minus the allocation before the
call; on CPU the peak resident set size (``VmHWM`` after ``echo 5 > /proc/self/clear_refs``)
minus the RSS before the call. glibc is told (``mallopt``) to serve every block >= 128 KiB by
``mmap`` and to return freed heap memory, so memory freed by one call does not hide the next
call's peak; both sides run under the same allocator settings.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

QUICK = os.environ.get("CONDBENCH_PERF_QUICK", "") not in ("", "0", "false", "False")
RESULTS: list[dict[str, Any]] = []
_MATMUL: dict[str, float] = {}

# Quick mode only checks that the cases run: one thread (tiny ops on two threads of a busy
# machine were measured 2-10x slower, descheduled at every barrier).
torch.set_num_threads(int(os.environ.get("CONDBENCH_PERF_THREADS", "1" if QUICK else str(os.cpu_count() or 1))))


def _tune_glibc() -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic growth)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        return True
    except (OSError, AttributeError):
        return False


GLIBC_TUNED = _tune_glibc()


def perf_device() -> torch.device:
    name = os.environ.get("CONDBENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"CONDBENCH_DEVICE={name} but CUDA is not available; use cpu")
    return dev


@pytest.fixture(scope="session")
def device() -> torch.device:
    return perf_device()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rounds_for(big: bool) -> int:
    if "CONDBENCH_PERF_ROUNDS" in os.environ:
        return max(1, int(os.environ["CONDBENCH_PERF_ROUNDS"]))
    if QUICK:
        return 1
    return 2 if big else 3


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(seconds, peak MiB above the memory in use before) of one call of ``fn``."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        return dt, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    can_reset = os.path.exists("/proc/self/clear_refs")
    if can_reset:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            can_reset = False
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    peak = _status_kib("VmHWM") if can_reset else 0
    return dt, max(0.0, (peak - base) / 1024)


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return _status_kib_meminfo("MemAvailable") * 1024
    except OSError:
        return 8 * 2**30


def _status_kib_meminfo(field: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------------------
# Matmul peak and FLOPs
# --------------------------------------------------------------------------------------------


def matmul_peak_gflops(device: torch.device) -> float:
    """Best of 5 of a large float32 matmul (2 n^3 FLOPs), measured once per session."""
    key = str(device)
    if key not in _MATMUL:
        n = 1024 if QUICK else (2048 if device.type == "cpu" else 8192)
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        best = float("inf")
        for _ in range(2 if QUICK else 5):
            sync(device)
            t0 = time.perf_counter()
            (a @ b).sum().item()
            sync(device)
            best = min(best, time.perf_counter() - t0)
        _MATMUL[key] = 2 * n**3 / best / 1e9
    return _MATMUL[key]


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn``, from ``torch.utils.flop_counter``'s per-op formulas
    (matmul/conv/... forward and backward). A bare dispatch mode is used instead of
    ``FlopCounterMode`` because the latter's module hooks break ``torch.autograd.grad`` with
    respect to leaf tensors (what every image step does)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class _Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                type(self).total += int(formula(*args, **kwargs, out_val=out))
            return out

    with _Count() as counter:
        fn()
    return int(type(counter).total)


# --------------------------------------------------------------------------------------------
# Interleaved comparison
# --------------------------------------------------------------------------------------------


def compare(
    benchmark,
    *,
    group: str,
    case: str,
    oracle: Callable[[], Any],
    fast: Callable[[], Any],
    device: torch.device,
    big: bool = False,
    flops: bool = True,
    notes: str = "",
    oracle_label: str = "reference-structured",
    fast_label: str = "ours",
    target: str = "",
) -> dict[str, Any]:
    """Time ``oracle`` and ``fast`` in alternating rounds; record and return the figures."""
    rounds = rounds_for(big)
    n_flops = count_flops(fast) if flops else 0  # also the fast path's warm-up
    if not flops:
        fast()
    times: dict[str, list[float]] = {"oracle": [], "fast": []}
    peaks: dict[str, list[float]] = {"oracle": [], "fast": []}
    state = {"round": 0}

    def pair() -> None:
        order = ("oracle", "fast") if state["round"] % 2 == 0 else ("fast", "oracle")
        for side in order:
            dt, peak = measure(oracle if side == "oracle" else fast, device)
            times[side].append(dt)
            peaks[side].append(peak)
        state["round"] += 1

    benchmark.pedantic(pair, rounds=rounds, iterations=1, warmup_rounds=0)
    t_o, t_f = statistics.median(times["oracle"]), statistics.median(times["fast"])
    m_o, m_f = max(peaks["oracle"]), max(peaks["fast"])
    peak_gflops = matmul_peak_gflops(device)
    row = {
        "group": group,
        "case": case,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "oracle_s": t_o,
        "fast_s": t_f,
        "speedup": t_o / t_f if t_f > 0 else float("nan"),
        "oracle_peak_mib": m_o,
        "fast_peak_mib": m_f,
        "mem_ratio": (m_f / m_o) if m_o > 0 else float("nan"),
        "gflop": n_flops / 1e9,
        "gflops": (n_flops / t_f / 1e9) if n_flops else float("nan"),
        "matmul_peak_gflops": peak_gflops,
        "peak_fraction": (n_flops / t_f / 1e9 / peak_gflops) if n_flops else float("nan"),
        "oracle_label": oracle_label,
        "fast_label": fast_label,
        "notes": notes,
        "target": target,
        "quick": QUICK,
    }
    benchmark.extra_info.update(row)
    RESULTS.append(row)
    _flush()
    return row


def record(row: dict[str, Any]) -> None:
    """Add a non-timing row (e.g. an accuracy comparison) to the session's results."""
    RESULTS.append(dict(row, quick=QUICK))
    _flush()


def _meta() -> dict[str, Any]:
    return {"loadavg": os.getloadavg(), "glibc_tuned": GLIBC_TUNED, "quick": QUICK,
            "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def _flush() -> Optional[str]:
    """Write the results so far (a run cut short still leaves its table); None or an error."""
    path = results_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": _meta(), "rows": RESULTS}, indent=1))
        tmp.replace(path)
    except OSError as exc:
        return f"(could not write {path}: {exc})"
    return None


def results_path() -> Path:
    return Path(os.environ.get("CONDBENCH_PERF_OUT", ".perf/results.json"))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    # pytest may load this file as ``perf.conftest`` while the test modules import
    # ``tests.perf.conftest``: read the results from the copy the tests used.
    import tests.perf.conftest as shared
    from tests.perf.report import render

    if not shared.RESULTS:
        return
    problem = shared._flush()
    if problem:
        terminalreporter.write_line(problem)
    terminalreporter.write_sep("=", "condensation perf table (Markdown)")
    terminalreporter.write_line(render(shared.RESULTS, shared._meta()))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def random_classdata(num_classes: int, per_class: int, channel: int, size: int, device: torch.device, seed: int = 0):
    """Class-dependent random images (normalised-space values), on ``device``."""
    from methods.realdata import ClassData

    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, channel, size, size, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = protos[labels] + torch.randn(labels.numel(), channel, size, size, generator=g)
    return ClassData(images=images.to(device), labels=labels.to(device), num_classes=num_classes,
                     mean=tuple([0.5] * channel), std=tuple([0.25] * channel), name="perf")


def affordable_batch(per_image_bytes: float, num_classes: int, wanted: int, device: torch.device, share: float = 0.35) -> int:
    """Largest power-of-two per-class batch <= ``wanted`` whose kept graph fits in ``share`` of
    the memory available now (never below 8)."""
    budget = share * available_memory_bytes(device)
    b = wanted
    while b > 8 and b * num_classes * per_image_bytes > budget:
        b //= 2
    return b


def graph_bytes_per_image(net: torch.nn.Module, channel: int, size: int, device: torch.device) -> float:
    """Bytes of activations one image leaves in an autograd graph (sum of module outputs)."""
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net(torch.zeros(1, channel, size, size, device=device))
    for h in handles:
        h.remove()
    return float(total[0])

