"""The GPU check: ``python -m tests.perf.gpu_check [--out gpu_check.md] [--perf medium|quick|none]``
(or ``tox -e gpu``), made to run in under 8 minutes on one CUDA device.

1. The CUDA-only paths, once each, for correctness:

   * DC's ``batched`` gradient-matching path on CUDA against the ``per_class`` path on the CPU
     (same network weights and batches; image gradient within ``1e-3`` of its largest entry);
   * the vectorised evaluation ensemble against the sequential loop on CUDA (parameters after
     two epochs, ``rtol=1e-4, atol=1e-5``, the tolerance of ``methods/ensemble.py``);
   * the compiled training step (inductor) and the compiled step with CUDA graphs
     (``mode='reduce-overhead'``) against eager on CUDA, on a 10-image batch (IPC 1), with
     their step times: the launch-bound case CUDA graphs exist for.

2. The perf suite in medium mode (one round per case, the default sizes, a selection of cases
   that fits the time left: ``--perf quick`` runs every case at the CI sizes, ``--perf none``
   skips it), under a deadline so the check ends in time; the suite writes its rows as it goes.

3. One Markdown file: device name, torch version, the correctness table (absolute seconds,
   errors, tolerances) and the perf suite's table (absolute seconds and ratios), ready to paste
   into the README.

Without CUDA every CUDA case is a row saying it was skipped and why, and the script still
writes the file and exits 0 (``tests/perf/test_gpu_check.py`` runs it in CI).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

TOTAL_BUDGET_S = 480.0
MEDIUM_SELECTION = (
    "test_evaluation_protocol or test_ensemble_vectorized_vs_sequential or "
    "(test_image_step and 10cl-3x32x32) or test_inner_epochs or "
    "test_evaluation_compiled or (test_cafe_step_compiled and ipc10) or test_dm_step_compiled"
)


def _cuda_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    return None


def _timed(fn: Callable[[], Any], sync: bool) -> tuple[Any, float]:
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def check_dc_batched() -> dict[str, Any]:
    """DC's batched path (CUDA) vs the per-class path (CPU): the image gradient."""
    from methods.dc import match_step
    from methods.networks import get_network

    C, ipc, n, size = 10, 2, 16, 32
    g = torch.Generator().manual_seed(0)
    real = torch.randn(C * n, 3, size, size, generator=g)
    syn0 = torch.randn(C * ipc, 3, size, size, generator=g)
    grads = {}
    secs = {}
    for dev, path in (("cpu", "per_class"), ("cuda", "batched")):
        net = get_network("ConvNet", 3, C, (size, size), seed=0, device=dev)
        syn = syn0.to(dev).requires_grad_(True)
        r = real.to(dev)
        batches = [(c, r[c * n : (c + 1) * n], syn[c * ipc : (c + 1) * ipc]) for c in range(C)]
        _, secs[path] = _timed(lambda: match_step(net, batches, distance="layerwise", path=path, inputs=[syn]),
                               dev == "cuda")
        grads[path] = syn.grad.detach().cpu()
    err = float((grads["batched"] - grads["per_class"]).abs().max() / grads["per_class"].abs().max())
    return dict(check="DC batched path (CUDA) vs per_class (CPU)", error=err, tolerance=1e-3, ok=err <= 1e-3,
                seconds=f"CUDA {secs['batched']:.3f} / CPU {secs['per_class']:.3f}",
                notes="image gradient, max error relative to its largest entry")


def check_vectorized_ensemble() -> dict[str, Any]:
    """The vectorised ensemble vs the sequential loop, both on CUDA."""
    from benchmarks.eval_networks import lr_schedule, network_seed
    from methods.ensemble import train_ensemble
    from methods.networks import get_network
    from methods.rng import make_generator

    n_nets, ipc = 20, 10
    x = torch.randn(10 * ipc, 3, 32, 32, generator=torch.Generator().manual_seed(1)).cuda()
    y = torch.arange(10, device="cuda").repeat_interleave(ipc)
    schedule = [(lr, new) for _ep, lr, new in lr_schedule(1)]
    params = {}
    secs = {}
    for mode in ("sequential", "vectorized"):
        gens = [make_generator(network_seed(0, "ConvNet", i)) for i in range(n_nets)]
        nets = [get_network("ConvNet", 3, 10, (32, 32), generator=g, device="cuda") for g in gens]
        _, secs[mode] = _timed(lambda: train_ensemble(nets, gens, x, y, schedule, momentum=0.9, weight_decay=5e-4,
                                                      mode=mode), True)
        params[mode] = [torch.cat([p.detach().flatten() for p in net.parameters()]) for net in nets]
    ok, worst = True, 0.0
    for a, b in zip(params["vectorized"], params["sequential"]):
        ok = ok and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))
        worst = max(worst, float((a - b).abs().max()))
    return dict(check="vectorised ensemble vs sequential (CUDA, 20 nets IPC 10, 1+1 epochs)", error=worst,
                tolerance="rtol 1e-4, atol 1e-5", ok=ok,
                seconds=f"vectorized {secs['vectorized']:.2f} / sequential {secs['sequential']:.2f} "
                        f"({secs['sequential'] / secs['vectorized']:.2f}x)",
                notes="parameters after training")


def check_compiled_cuda(cuda_graphs: bool) -> dict[str, Any]:
    """A compiled 10-image training step (optionally with CUDA graphs) vs eager, on CUDA."""
    from methods import compile as mc
    from methods.networks import get_network
    from methods.training import sgd, train_epoch

    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(2)).cuda()
    y = torch.arange(10, device="cuda")
    epochs = 200
    out = {}
    secs = {}
    for side in ("eager", "compiled"):
        net = get_network("ConvNet", 3, 10, (32, 32), seed=0, device="cuda")
        fwd = mc.compiled(net, enabled=True, batch=10, cuda_graphs=cuda_graphs) if side == "compiled" else None
        opt = sgd(net.parameters(), 0.01, momentum=0.9)
        g = torch.Generator().manual_seed(3)
        train_epoch(net, x, y, opt, batch_size=256, generator=g, forward=fwd)  # warm-up (compiles)
        _, secs[side] = _timed(lambda: [train_epoch(net, x, y, opt, batch_size=256, generator=g, forward=fwd)
                                        for _ in range(epochs)], True)
        out[side] = torch.cat([p.detach().flatten() for p in net.parameters()])
    err = float((out["compiled"] - out["eager"]).abs().max() / out["eager"].abs().max())
    tol = 1e-3
    label = "compiled + CUDA graphs" if cuda_graphs else "compiled (inductor)"
    return dict(check=f"{label} training step vs eager (CUDA, 10 images)", error=err, tolerance=tol, ok=err <= tol,
                seconds=f"{label} {secs['compiled'] / epochs * 1e3:.2f} ms / eager {secs['eager'] / epochs * 1e3:.2f} "
                        f"ms per step ({secs['eager'] / secs['compiled']:.2f}x)",
                notes=f"parameters after {epochs + 1} steps, max error relative to the largest; "
                      f"{mc.compile_stats()['compile_recompiles']:.0f} recompiles so far")


CHECKS: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("DC batched path (CUDA) vs per_class (CPU)", check_dc_batched),
    ("vectorised ensemble vs sequential (CUDA)", check_vectorized_ensemble),
    ("compiled (inductor) training step vs eager (CUDA)", lambda: check_compiled_cuda(False)),
    ("compiled + CUDA graphs training step vs eager (CUDA)", lambda: check_compiled_cuda(True)),
]


def run_checks() -> list[dict[str, Any]]:
    reason = _cuda_reason()
    rows = []
    for name, fn in CHECKS:
        if reason is not None:
            rows.append(dict(check=name, status=f"skipped: {reason}"))
            continue
        t0 = time.perf_counter()
        try:
            row = fn()
            row["status"] = "ok" if row.pop("ok") else "**FAILED**"
        except Exception as exc:  # one failing check must not hide the others
            row = dict(check=name, status=f"**ERROR** {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
    return rows


def run_perf(mode: str, deadline_s: float, results: Path, selection: Optional[str]) -> tuple[list, dict, str]:
    """The perf suite in a subprocess (``mode`` medium or quick), cut at ``deadline_s``."""
    if mode == "none":
        return [], {}, "perf suite not run (--perf none)"
    env = dict(os.environ, CONDBENCH_PERF_OUT=str(results))
    if mode == "quick":
        env["CONDBENCH_PERF_QUICK"] = "1"
    else:
        env.setdefault("CONDBENCH_PERF_ROUNDS", "1")
        env.pop("CONDBENCH_PERF_QUICK", None)
    sel = selection if selection is not None else (MEDIUM_SELECTION if mode == "medium" else "")
    cmd = [sys.executable, "-m", "pytest", "-m", "perf", "tests/perf", "-p", "no:cacheprovider", "-q"]
    if sel:
        cmd += ["-k", sel]
    note = f"`{' '.join(cmd[1:])}` ({mode})"
    if results.exists():
        results.unlink()
    try:
        proc = subprocess.run(cmd, env=env, timeout=max(30.0, deadline_s), capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[2])
        if proc.returncode not in (0, 5):
            note += f"; pytest exit {proc.returncode}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}"
    except subprocess.TimeoutExpired:
        note += f"; cut at the {deadline_s:.0f} s deadline (rows so far)"
    if not results.exists():
        return [], {}, note + "; no rows written"
    data = json.loads(results.read_text())
    return data.get("rows", []), data.get("meta", {}), note


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"cpu ({os.cpu_count()} cores; no CUDA)"


def render(checks: Sequence[dict[str, Any]], perf_rows: Sequence[dict], perf_meta: dict, perf_note: str,
           total_s: float) -> str:
    from tests.perf.report import render as render_perf

    out = [f"## GPU check: {device_name()}", "",
           f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}, total {total_s:.0f} s.", "",
           "| check | status | error | tolerance | seconds | notes |", "|---|---|---:|---|---|---|"]
    for r in checks:
        err = r.get("error")
        out.append(f"| {r['check']} | {r['status']} | {'' if err is None else format(err, '.2e')} | "
                   f"{r.get('tolerance', '')} | {r.get('seconds', '')} | {r.get('notes', '')} |")
    out += ["", f"Perf suite: {perf_note}.", ""]
    if perf_rows:
        out.append(render_perf(perf_rows, perf_meta))
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.perf.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.md"), help="Markdown file to write")
    ap.add_argument("--perf", choices=("medium", "quick", "none"), default="medium",
                    help="perf suite mode after the checks (default medium)")
    ap.add_argument("-k", dest="selection", default=None, help="pytest -k selection of perf cases (default: "
                                                               "the medium selection)")
    ap.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="total seconds (default 480)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    checks = run_checks()
    left = args.budget_s - (time.perf_counter() - t0) - 10
    results = args.out.with_suffix(".perf.json")
    perf_rows, perf_meta, note = run_perf(args.perf, left, results, args.selection)
    text = render(checks, perf_rows, perf_meta, note, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 1 if any("FAILED" in r["status"] or "ERROR" in r["status"] for r in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
