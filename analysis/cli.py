"""Command line: ``condbench-analysis`` / ``python -m analysis``.

User errors (a folder that does not exist, a store with no usable record, an unwritable
output) print one line ``condbench-analysis: error: ...`` and exit with status 2; skipped
files are reported on stderr as warnings, so stdout carries only the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from analysis.load import AnalysisError, Results, load_results

PROG = "condbench-analysis"

EPILOG = """\
examples:
  # everything at once: tables (md/tex/csv), figures (png/pdf) and report.md
  condbench-analysis report results/quick --out report/quick

  # the paper's Table 1 as Markdown, with published numbers and the difference
  condbench-analysis table main results/quick --published

  # paste-ready LaTeX (booktabs) of the ablation table, from two sweeps together
  condbench-analysis table ablation results/ablation results/main --format latex > ablation.tex

  # one figure
  condbench-analysis figure accuracy-vs-ipc results/quick --out acc.pdf
  condbench-analysis figure image-grid results/quick --dataset cifar10 --ipc 10 --out grid.png

  # our cells at the papers' budgets against the published numbers, with a verdict each
  condbench-analysis table fidelity results/cpu_fashion_paper --all

  # learning curves from kept checkpoints (curves/), as a table and a figure (.png and .pdf)
  condbench-analysis table curve results/cpu_fashion_paper
  condbench-analysis figure curve results/cpu_fashion_paper -o figs/curve

  # what is in a store: records, missing and failed cells, skipped files
  condbench-analysis summary results/quick
"""


def _parser() -> argparse.ArgumentParser:
    from analysis.figures import FIGURES
    from analysis.render import FORMATS
    from analysis.tables import TABLES

    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Paper-style tables and figures from condensation-bench results folders "
            "(the --out folder of a sweep). Several folders are pooled."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("report", help="write every table and figure plus report.md", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("results", nargs="+", metavar="RESULTS", help="results folder(s)")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")

    t = sub.add_parser(
        "table",
        help="print one table to stdout",
        description="Print one table: main (methods x dataset/IPC), cross (train -> eval "
        "architectures), ablation (variants of a method with ablation components), cost (time and memory), "
        "scores (gain over same-protocol random), fidelity (cells at the papers' budgets: verdict and cost), "
        "curve (accuracy at kept iterations of a run).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("kind", choices=TABLES)
    t.add_argument("results", nargs="+", metavar="RESULTS", help="results folder(s)")
    t.add_argument("--format", choices=FORMATS, default="md", help="output format (default md)")
    t.add_argument("--published", action="store_true", help="show published numbers (reference notes §4), the difference and, in main, the verdict (main, cross)")
    t.add_argument("--all", action="store_true", dest="include_all", help="fidelity: also list the cells whose budget differs from the paper's, with the reason")
    t.add_argument("--eval-arch", metavar="ARCH", help="main table: pool evaluations on ARCH instead of each set's training architecture")

    f = sub.add_parser("figure", help="draw one figure", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("kind", choices=FIGURES)
    f.add_argument("results", nargs="+", metavar="RESULTS", help="results folder(s)")
    f.add_argument("--out", "-o", required=True, metavar="FILE", help="image file (.png, .pdf or .svg; no suffix writes .png and .pdf); a folder (existing, or ending in /) gets <figure>.png and .pdf")
    f.add_argument("--dataset", help="only this dataset (accuracy-vs-ipc, cross-heatmap, image-grid, curve)")
    f.add_argument("--ipc", type=int, help="only this IPC (cross-heatmap, image-grid, curve)")
    f.add_argument("--method", action="append", dest="methods", metavar="LABEL", help="image-grid: only these method labels (repeatable)")
    f.add_argument("--max-ipc", type=int, default=10, help="image-grid: at most this many images per class (default 10)")
    f.add_argument("--eval-arch", metavar="ARCH", help="accuracy-vs-ipc: evaluations on ARCH instead of the training architecture")

    s = sub.add_parser("summary", help="records, missing and failed cells, skipped files")
    s.add_argument("results", nargs="+", metavar="RESULTS", help="results folder(s)")
    return p


def _warn(results: Results) -> None:
    for prob in results.problems:
        print(f"{PROG}: warning: skipped {prob}", file=sys.stderr)


def _load(paths: Sequence[str]) -> Results:
    results = load_results(paths)
    _warn(results)
    if results.runs.empty:
        raise AnalysisError(
            "no usable records in " + ", ".join(results.stores)
            + (" (every record file was skipped, see the warnings above)" if results.problems else " (has the sweep finished any cell?)")
        )
    return results


def _summary(results: Results) -> str:
    lines = [
        f"sweep(s): {', '.join(dict.fromkeys(results.sweeps))}",
        f"records: {len(results.records)} usable, {len(results.runs)} evaluation runs, {len(results.problems)} file(s) skipped",
        f"hardware: {'; '.join(results.hardware()) or 'unknown'}",
        f"planned (cell x eval arch): {len(results.cells)}; missing: {len(results.missing)}",
    ]
    if not results.curves.empty:
        points = results.curves.drop_duplicates(["store", "cell_id", "eval_arch", "iterations"])
        lines.insert(2, f"curve records: {len(points)} (learning-curve points of {points['cell_id'].nunique()} cell(s))")
    for _, m in results.missing.iterrows():
        detail = f" ({m['detail']})" if m["detail"] else ""
        ipc = "whole" if pd.isna(m["ipc"]) else f"ipc={m['ipc']}"
        lines.append(
            f"  missing {m['cell_id']} {m['dataset']} {ipc} {m['label']} seed={m['seed']} "
            f"[{m['eval_arch']}]: {m['status']}{detail}"
        )
    for _, fl in results.failures.iterrows():
        lines.append(f"  failed {fl['cell_id']}: {fl['error']} (log: {fl['log_path']})")
    return "\n".join(lines) + "\n"


def run(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        from analysis.report import ensure_writable, write_report

        out = Path(args.out)
        results = _load(args.results)
        ensure_writable(out)
        summary = write_report(args.results, out, results=results)
        print(f"wrote {summary.report} ({len(summary.tables)} table files, {len(summary.figures)} figure files)")
        for s in summary.skipped:
            print(f"  not drawn: {s}")
        return 0
    if args.command == "table":
        from analysis.tables import build_table

        results = _load(args.results)
        if args.include_all and args.kind != "fidelity":
            raise AnalysisError("--all applies to the fidelity table only; drop it or use `table fidelity`")
        table = build_table(args.kind, results, published=args.published, eval_arch=args.eval_arch,
                            include_all=args.include_all)
        sys.stdout.write(table.render(args.format))
        return 0
    if args.command == "figure":
        from analysis.figures import build_figure, save_figure
        from analysis.report import ensure_writable

        out = Path(args.out)
        if out.is_dir() or args.out.endswith(("/", "\\")):
            out = out / args.kind.replace("-", "_")  # a folder: <folder>/<figure>.png and .pdf
        results = _load(args.results)
        ensure_writable(out.parent if str(out.parent) else Path("."))
        fig = build_figure(
            args.kind, results, dataset=args.dataset, ipc=args.ipc, methods=args.methods,
            max_ipc=args.max_ipc, eval_arch=args.eval_arch,
        )
        try:
            written = save_figure(fig, out)
        except OSError as exc:
            raise AnalysisError(f"cannot write {out}: {exc.strerror or exc}") from exc
        print("wrote " + ", ".join(str(w) for w in written))
        return 0
    if args.command == "summary":
        results = load_results(args.results)
        _warn(results)
        sys.stdout.write(_summary(results))
        return 0
    raise AssertionError(args.command)  # argparse restricts the choices


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return run(argv)
    except AnalysisError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `... | head`
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
