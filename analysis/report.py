"""``report``: every table and figure the data supports, plus one ``report.md`` page.

Layout of ``--out DIR``::

    DIR/report.md                     header (sweep, records, missing/failed cells, hardware),
                                      the tables inline and the figures as relative links
    DIR/tables/<name>.{md,tex,csv}    main, main_published (when published numbers match, with
                                      the verdicts), fidelity (cells at the papers' budgets),
                                      curve (learning curves, when curves/ has records),
                                      scores (gain over same-protocol random, DD-Ranking's
                                      LRS/ARS), cross, ablation, cost
    DIR/figures/<name>.{png,pdf}      accuracy_vs_ipc, curve, gain_over_random, cross_heatmap,
                                      ablation, cost_scatter,
                                      image_grid_<dataset>_ipc<k>

A table or figure the data cannot support (no cross-architecture evaluations, no variants of a
method with ablation components, no synthetic sets) is left out and the page says why. The output is deterministic:
no timestamps other than those in the records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import pandas as pd

from analysis.ablation import ablation_table, has_ablation
from analysis.fidelity import curve_table, fidelity_table, has_fidelity
from analysis.load import AnalysisError, Results, load_results
from analysis.render import Table, md_escape
from analysis.scores import has_scores, scores_table
from analysis.tables import cost_table, cross_table, has_cross, main_table


@dataclass
class ReportSummary:
    out: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "what: why"

    @property
    def report(self) -> Path:
        return self.out / "report.md"


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and check a file can be written there (AnalysisError if not)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".condbench-write-test"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise AnalysisError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from exc


def _write(path: Path, text: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise AnalysisError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _figure(summary: ReportSummary, name: str, title: str, make: Callable, figs_dir: Path, entries: list) -> None:
    from analysis.figures import save_figure

    try:
        fig = make()
    except AnalysisError as exc:
        summary.skipped.append(f"figure {name}: {exc}")
        return
    except ImportError as exc:  # image grid needs torch/methods
        summary.skipped.append(f"figure {name}: {exc}")
        return
    paths = save_figure(fig, figs_dir / name)
    summary.figures.extend(paths)
    entries.append((title, f"figures/{name}.png"))


def write_report(paths: Iterable[str | Path], out: str | Path, *, results: Optional[Results] = None) -> ReportSummary:
    """Load ``paths`` and write the report folder ``out``; returns what was written."""
    from analysis import figures as F

    out = Path(out)
    results = results if results is not None else load_results(paths)
    if results.runs.empty:
        raise AnalysisError("no usable records in " + ", ".join(results.stores) + _problem_hint(results))
    ensure_writable(out)
    summary = ReportSummary(out=out)
    tdir, fdir = out / "tables", out / "figures"

    def emit(table: Table, name: Optional[str] = None) -> Table:
        name = name or table.name
        for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
            summary.tables.append(_write(tdir / f"{name}.{ext}", table.render(fmt)))
        return table

    sections: list[str] = []
    main = emit(main_table(results))
    sections.append("## Main table\n\n" + main.to_markdown())
    pub = main_table(results, published=True)
    if (pub.data["published_confirmed"] != "").any():
        emit(pub, "main_published")
        sections.append("### Against published numbers\n\n" + pub.to_markdown())
    else:
        summary.skipped.append("table main_published: no published number matches these datasets/IPCs/methods")
    figs: list = []
    _figure(summary, "accuracy_vs_ipc", "Accuracy vs images per class", lambda: F.accuracy_vs_ipc(results), fdir, figs)
    sections.append(_figs_md(figs))

    if has_fidelity(results):
        fid = emit(fidelity_table(results))
        sections.append("## Fidelity: cells at the papers' budgets\n\n" + fid.to_markdown())
    else:
        summary.skipped.append("table fidelity: no cell ran at the paper's budget with a published number "
                               "(`table fidelity --all` lists the others with the reason)")
    if not results.curves.empty:
        curve = emit(curve_table(results))
        figs = []
        _figure(summary, "curve", "Accuracy vs condensation iterations", lambda: F.curve_figure(results), fdir, figs)
        sections.append("## Learning curves\n\n" + curve.to_markdown() + _figs_md(figs))
    else:
        summary.skipped.append("learning curves: no curve records (curves/) in the store")

    if has_scores(results):
        scores = emit(scores_table(results))
        figs = []
        _figure(summary, "gain_over_random", "Gain over same-protocol random selection",
                lambda: F.gain_over_random(results), fdir, figs)
        sections.append("## Scores: gain over random under the same protocol\n\n" + scores.to_markdown()
                        + _figs_md(figs))
    else:
        summary.skipped.append("scores table/figure: no random-selection records beside another set "
                               "(run the sweep with random_baseline: true, the default)")

    if has_cross(results):
        cross = emit(cross_table(results, published=True))
        figs = []
        _figure(summary, "cross_heatmap", "Cross-architecture accuracy", lambda: F.cross_heatmap(results), fdir, figs)
        sections.append("## Cross-architecture\n\n" + cross.to_markdown() + _figs_md(figs))
    else:
        summary.skipped.append("cross-architecture table/figure: every record was evaluated on its training architecture")

    if has_ablation(results):
        abl = emit(ablation_table(results))
        figs = []
        title = abl.caption.split(":")[0]
        _figure(summary, "ablation", title, lambda: F.ablation_bars(results), fdir, figs)
        sections.append(f"## {md_escape(title)}\n\n" + abl.to_markdown() + _figs_md(figs))
    else:
        summary.skipped.append("ablation table/figure: no method with ablation components has two "
                               "variants on one dataset/IPC")

    cost = emit(cost_table(results))
    figs = []
    _figure(summary, "cost_scatter", "Condensation cost vs accuracy", lambda: F.cost_scatter(results), fdir, figs)
    sections.append("## Cost\n\n" + cost.to_markdown() + _figs_md(figs))

    figs = []
    from analysis.image_grid import image_grid, synset_choices

    choices = synset_choices(results)
    if choices.empty:
        summary.skipped.append("image grids: no synthetic sets (synsets/*.pt) found")
    for d in sorted(set(choices["dataset"]), key=results.dataset_key):
        for ipc in sorted(int(i) for i in choices.loc[choices["dataset"] == d, "ipc"].unique()):
            _figure(
                summary,
                f"image_grid_{d}_ipc{ipc}",
                f"Synthetic images: {results.dataset_display(d)}, IPC {ipc}",
                lambda d=d, ipc=ipc: image_grid(results, dataset=d, ipc=ipc),
                fdir,
                figs,
            )
    if figs:
        sections.append("## Synthetic images\n\n" + _figs_md(figs).lstrip("\n"))

    text = _header(results) + "\n" + "\n".join(s.rstrip("\n") + "\n" for s in sections if s.strip())
    text += "\n" + _status_md(results, summary)
    _write(out / "report.md", text)
    return summary


def _code(value) -> str:
    """A Markdown code span (paths, ids, error messages stay literal), safe inside a table."""
    text = str(value).replace("`", "'").replace("|", "\\|").replace("\n", " ")
    return f"`{text}`"


def _problem_hint(results: Results) -> str:
    if results.problems:
        return f" ({len(results.problems)} file(s) skipped: first {results.problems[0]})"
    return ""


def _figs_md(figs: list) -> str:
    if not figs:
        return ""
    return "\n" + "\n".join(f"![{title}]({link})\n" for title, link in figs)


def _header(results: Results) -> str:
    sweeps = ", ".join(dict.fromkeys(results.sweeps))
    rec, runs = results.records, results.runs
    miss = results.missing
    planned = len(results.cells)
    counts = miss["status"].value_counts().to_dict() if not miss.empty else {}
    lines = [
        f"# Sweep report: {md_escape(sweeps)}",
        "",
        "| | |",
        "|:---|:---|",
        f"| Results | {', '.join(_code(s) for s in results.stores)} |",
        f"| Records | {len(rec)} usable ({len(runs)} evaluation runs); {len(results.problems)} file(s) skipped |",
        f"| Cells × eval archs | {planned} planned, {planned - len(miss) if planned else len(rec)} done, "
        f"{len(miss)} missing ({counts.get('not run', 0)} not run, {counts.get('failed', 0)} failed, "
        f"{counts.get('corrupt record', 0)} corrupt record) |",
        f"| Failed cells | {len(results.failures)} |",
        f"| Hardware | {md_escape('; '.join(results.hardware()) or 'unknown')} |",
    ]
    versions = sorted({str(v) for v in rec["code_version"].dropna()}) if "code_version" in rec else []
    if versions:
        lines.append(f"| Code version | {md_escape(', '.join(versions))} |")
    created = sorted(str(c) for c in rec["created"].dropna()) if "created" in rec else []
    if created:
        lines.append(f"| Records written | {md_escape(created[0])} … {md_escape(created[-1])} |")
    return "\n".join(lines) + "\n"


def _status_md(results: Results, summary: ReportSummary) -> str:
    parts = ["## Missing and failed cells\n"]
    miss = results.missing
    if miss.empty:
        parts.append("None: every planned cell has a record.\n" if len(results.cells) else "No cells.json: missing cells cannot be listed.\n")
    else:
        parts.append("| Cell | Eval arch | Dataset | IPC | Method | Seed | Status | Detail |")
        parts.append("|:---|:---|:---|---:|:---|---:|:---|:---|")
        for _, r in miss.iterrows():
            ipc = "–" if pd.isna(r["ipc"]) else str(int(r["ipc"]))
            parts.append(
                f"| {_code(r['cell_id'])} | {md_escape(r['eval_arch'])} | {results.dataset_display(r['dataset'])} | {ipc} | "
                f"{md_escape(r['label_display'])} | {r['seed']} | {r['status']} | {_code(r['detail']) if r['detail'] else '–'} |"
            )
        parts.append("")
    if not results.failures.empty:
        parts.append("### Failures\n")
        parts.append("| Cell | Error | Log | Job |")
        parts.append("|:---|:---|:---|:---|")
        for _, f in results.failures.iterrows():
            parts.append(
                f"| {_code(f['cell_id'])} | {_code(f['error'])} | {_code(f['log_path']) if f['log_path'] else '–'} | "
                f"{_code(f['job_id']) if f['job_id'] else '–'} |"
            )
        parts.append("")
    if results.problems:
        parts.append("### Skipped files\n")
        parts.append("| File | Reason |")
        parts.append("|:---|:---|")
        for p in results.problems:
            parts.append(f"| {_code(p.path)} | {_code(p.reason)} |")
        parts.append("")
    if summary.skipped:
        parts.append("### Not drawn\n")
        parts.extend(f"- {md_escape(s)}" for s in summary.skipped)
        parts.append("")
    parts.append("### Files\n")
    for p in summary.tables + summary.figures:
        parts.append(f"- [{p.relative_to(summary.out).as_posix()}]({p.relative_to(summary.out).as_posix()})")
    return "\n".join(parts) + "\n"
