"""``run``, ``status``, ``cancel`` and ``curve`` subcommands of ``python -m benchmarks`` (sweeps).

``benchmarks/cli.py`` calls :func:`register` with its subparsers. Examples::

    python -m benchmarks run quick --executor local              # shipped sweep by name
    python -m benchmarks run benchmarks/sweeps/paper_main.yaml --dry-run
    python -m benchmarks run my.yaml --executor slurm --profile gpu --no-wait
    python -m benchmarks status results/quick
    python -m benchmarks cancel results/quick
    python -m benchmarks curve results/quick --cell 0123456789ab   # learning-curve points

Problems with a spec are printed all at once (with their YAML paths) and nothing is submitted;
the exit status is then 2.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import TYPE_CHECKING, Optional, Sequence

from benchmarks import UserError
from benchmarks.executors import executor_names

if TYPE_CHECKING:
    from benchmarks.run_options import RunOptions
    from benchmarks.sweep import Sweep


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``run``, ``status``, ``cancel`` and ``curve`` to the ``python -m benchmarks`` parser."""
    p = subparsers.add_parser(
        "run", help="validate a sweep spec and run its cells (skips finished ones)",
        description="Validate SPEC completely, then run every unfinished cell. Re-running is "
        "safe: finished cells are skipped and queued/running jobs of an earlier launcher are "
        "re-attached, never submitted twice.",
    )
    p.add_argument("spec", help="sweep YAML file, or the name of a shipped sweep (quick, paper_main, ...)")
    p.add_argument("--executor", choices=executor_names(), default="slurm",
                   help="slurm: job arrays via submitit; local: subprocesses here; debug: in this process")
    p.add_argument("--profile", help="cluster profile (slurm/<name>.yaml or a path); overrides the spec's")
    p.add_argument("--output", help="results folder; overrides the spec's 'output'")
    p.add_argument("--dry-run", action="store_true", help="print the cells and sbatch parameters; run nothing")
    p.add_argument("--force", action="store_true", help="redo finished cells (deletes their records and synsets)")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return; check later with `status`")
    p.add_argument("--parallel", type=int, default=1, help="local executor: cells running at once (default 1)")
    p.add_argument("--array-parallelism", type=int, default=None,
                   help="slurm: tasks of one job array running at once (default: the profile's)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="iterations between checkpoint saves")
    p.add_argument("--progress", action="store_true", help="per-iteration progress lines in the job logs")
    p.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                   help="compiled hot paths of condensation and evaluation (default: the spec's "
                        "'compile:', else auto: compile where the run is long enough to earn the "
                        "compile time back; README, Performance)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between job state polls")
    p.set_defaults(func=cmd_run)

    s = subparsers.add_parser("status", help="state of every cell of a results store")
    s.add_argument("results", help="results folder of a sweep")
    s.add_argument("--no-query", action="store_true", help="do not ask SLURM about tracked jobs")
    s.add_argument("--verify", action="store_true",
                   help="also check the store: every record parses, every synthetic set loads and matches "
                   "its checksum, every done cell has both (exit 1 when a problem is found)")
    s.set_defaults(func=cmd_status)

    c = subparsers.add_parser("cancel", help="cancel the queued/running jobs of a results store")
    c.add_argument("results", help="results folder of a sweep")
    c.set_defaults(func=cmd_cancel)

    k = subparsers.add_parser(
        "curve", help="evaluate the kept loop states of a store's cells (learning curves)",
        description="Evaluate every kept loop state (<store>/snapshots/<cell_id>/it<N:06d>.pt: kept by a "
        "method entry's 'snapshots:' key, or a copy of the cell's checkpoint file made by hand at iteration N) "
        "of the store's cells that have a final synthetic set and no learning-curve record for it yet. Each "
        "state is evaluated like the cell's final set (its images, and learned tensors such as MTT's lr, in "
        "the final set) and written as <store>/curves/<cell_id>__<arch>__it<N:06d>.json, a record with "
        "status 'curve' and iterations N; one log line per point. Points already written are skipped, so "
        "the command is safe to re-run; cells still condensing are left for a later run.",
    )
    k.add_argument("results", help="results folder of a sweep")
    k.add_argument("--cell", action="append", default=[], metavar="ID",
                   help="only this cell id (repeatable; default: every cell with kept states)")
    k.add_argument("--archs", nargs="+", metavar="ARCH",
                   help="evaluation architectures (default: each cell's eval_archs)")
    k.add_argument("--num-eval", type=int, metavar="N",
                   help="evaluation networks per point (default: each cell's num_eval; points already written "
                        "are kept whatever their number)")
    k.add_argument("--data-root", help="folder with the datasets (default: the store's spec.yaml data_root, else data)")
    k.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: the spec's device, else auto)")
    k.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                   help="compiled evaluation hot paths (default: the spec's 'compile:', else auto)")
    k.add_argument("--progress", action="store_true", help="progress bars while evaluating")
    k.add_argument("--running", action="store_true",
                   help="also cells still condensing: their set at a kept iteration N is rebuilt by resuming that "
                        "state with a budget of N (DC/DSA, DM, MTT, DATM; CAFE's budget-relative schedule waits "
                        "for its final set)")
    k.set_defaults(func=cmd_curve)


def run_options(args: argparse.Namespace, sweep: "Sweep") -> "RunOptions":
    """The one :class:`RunOptions` of a ``run`` command: its flags over the spec's values."""
    from benchmarks.run_options import RunOptions

    return RunOptions.from_sweep(
        sweep, executor=args.executor, force=args.force, wait=not args.no_wait, parallel=args.parallel,
        array_parallelism=args.array_parallelism, checkpoint_every=args.checkpoint_every,
        progress=args.progress, poll_s=args.poll,
        **({} if getattr(args, "compile", None) is None else {"compile": args.compile}))


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.executors import executor_for, sbatch_preview
    from benchmarks.launcher import run_sweep
    from benchmarks.store import Store
    from benchmarks.sweep import load_sweep

    for flag, value in (("--parallel", args.parallel), ("--checkpoint-every", args.checkpoint_every),
                        ("--array-parallelism", args.array_parallelism)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    sweep = load_sweep(args.spec, output=args.output, profile=args.profile,
                       need_profile=args.executor == "slurm")
    options = run_options(args, sweep)
    if args.dry_run:
        store = Store(sweep.output)
        print(f"sweep '{sweep.name}' from {sweep.source}: {len(sweep.cells)} cells -> {sweep.output}")
        print(f"{'cell_id':12}  {'dataset':12} {'ipc':>5}  {'method / label':34} {'seed':>4}  "
              f"{'iters':>6} {'epochs':>6}  eval archs  [state]")
        for cell in sweep.cells:
            missing = store.missing_archs(cell.cell_id, list(cell.eval_archs)) if store.exists() else list(cell.eval_archs)
            state = "done" if not missing else ("partial" if len(missing) < len(cell.eval_archs) else "to run")
            print(f"{cell.cell_id:12}  {cell.dataset[:12]:12} {str(cell.ipc or '-'):>5}  {cell.label[:34]:34} "
                  f"{cell.seed:>4}  {str(cell.iterations or 'dflt'):>6} {str(cell.eval_epochs or 'dflt'):>6}  "
                  f"{','.join(cell.eval_archs)}  [{state}]"
                  + ("  eval: " + ", ".join(f"{k}={v}" for k, v in cell.eval.items()) if cell.eval else "")
                  + ("  keep: " + ",".join(map(str, cell.snapshots)) if cell.snapshots else ""))
        if args.executor == "slurm":
            slurm = executor_for("slurm", store, options)
            arrays = slurm.arrays(sweep.name, [(cell, list(cell.eval_archs)) for cell in sweep.cells])
            profile = options.profile
            print(f"\nprofile {profile.name} ({profile.path}): {len(arrays)} job array(s)")
            for group in arrays:
                ipcs = sorted({str(cell.ipc) if cell.ipc is not None else "whole" for cell, _ in group})
                print(f"  array for {len(group)} cell(s) (IPC {', '.join(ipcs)}):")
                for line in sbatch_preview(slurm.parameters(group[0][0].ipc, f"cb-{sweep.name}"), store.logs_dir):
                    print(f"    {line}")
        print("\ndry run: nothing submitted")
        return 0
    summary = run_sweep(sweep, options)
    print()
    print(f"summary: {len(sweep.cells)} cells; {summary.skipped} already finished, {summary.submitted} submitted, "
          f"{summary.reattached} re-attached; this run: {summary.done} done, {summary.failed} failed"
          + (f", {summary.cancelled} cancelled" if summary.cancelled else "")
          + (f", {summary.held} held back (SLURM did not answer; re-run)" if summary.held else "")
          + (f", {summary.still_running} still queued/running" if summary.still_running else ""))
    print_status_table(summary.statuses)
    print(f"results: {sweep.output}   (status: python -m benchmarks status {sweep.output})")
    return 1 if summary.failed else 0


def print_status_table(statuses: Sequence, file=None) -> None:
    out = file or sys.stdout
    if not statuses:
        return
    width = max(9, *(len(st.status) for st in statuses))
    print(f"{'cell_id':12}  {'status':{width}} {'job':>12}  {'dataset':10} {'ipc':>5}  {'label':28} {'seed':>4}  detail",
          file=out)
    for st in statuses:
        c = st.cell
        detail = ""
        if st.status in ("failed", "corrupt") or (st.status == "cancelled" and st.error):
            cause = " | ".join(ln.strip() for ln in (st.error or "").splitlines() if ln.strip())
            detail = cause + (f"  log: {st.log_path}" if st.log_path else "")
        elif st.status in ("running", "pending"):
            detail = f"{st.job_state}  log: {st.log_path}"
        elif st.status == "unknown":
            detail = "SLURM did not answer about this job; ask again later"
        elif st.status == "partial":
            detail = f"missing archs: {', '.join(st.missing_archs)}"
        print(f"{c.cell_id:12}  {st.status:{width}} {str(st.job_id or '-'):>12}  {c.dataset[:10]:10} "
              f"{str(c.ipc or '-'):>5}  {c.label[:28]:28} {c.seed:>4}  {detail}", file=out)
    counts = Counter(st.status for st in statuses)
    order = ("done", "running", "pending", "unknown", "failed", "cancelled", "partial", "corrupt", "missing")
    print("total: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in order) + f" (of {len(statuses)})", file=out)


def cmd_status(args: argparse.Namespace) -> int:
    from benchmarks.launcher import store_status
    from benchmarks.store import Store

    store = Store(args.results)
    name, _ = store.read_cells()
    statuses = store_status(store, query=not args.no_query)
    print(f"sweep '{name}' in {store.root}")
    print_status_table(statuses)
    if not args.verify:
        return 0
    from benchmarks.launcher import verify_store

    problems, notes = verify_store(store)
    for line in notes:
        print(f"note: {line}")
    for line in problems:
        print(f"problem: {line}")
    print("verify: OK" if not problems else
          f"verify: {len(problems)} problem(s); run the sweep again to recompute the cells concerned")
    return 1 if problems else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from benchmarks.launcher import cancel_store
    from benchmarks.store import Store

    store = Store(args.results)
    cancelled = cancel_store(store)
    print(f"cancelled {len(cancelled)} job(s)")
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from benchmarks.curves import run_curves
    from benchmarks.store import Store

    store = Store(args.results)
    summary = run_curves(store, cells=args.cell, archs=args.archs, num_eval=args.num_eval, data_root=args.data_root,
                         device=args.device, compile=args.compile, progress=args.progress, running=args.running,
                         log=lambda msg: print(msg, flush=True))
    if summary.written or summary.skipped:
        print(f"curve: {len(summary.written)} point(s) written to {store.curves_dir}"
              + (f", {len(summary.skipped)} kept state(s) skipped (see above)" if summary.skipped else ""))
    return 1 if summary.skipped else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry (``python -m benchmarks.sweep_cli``) with the same subcommands."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
