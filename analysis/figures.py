"""Paper-style figures (matplotlib, Agg backend): PNG and PDF in one consistent style.

Why ~600 lines: the four data figures share one style, colour map, label ordering and panel
helpers; the image grid, which needs torch, is the one figure in its own module.

Every figure is sized for a paper column (3.3 in wide per panel) with 8 pt text, so it stays
readable when printed at column width. Colours follow the methods' registry order as the
records carry it (a colour-blind-safe palette, one tone per method present), so a method has
the same colour in every figure of a report; variants share the remaining tones.

The synthetic-image grid lives in :mod:`analysis.image_grid` (the only figure that needs torch,
imported lazily); everything here works from the loaded DataFrame alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.ablation import ablation_groups, group_rows, has_ablation  # noqa: E402
from analysis.load import WHOLE, AnalysisError, Results  # noqa: E402
from analysis.render import summarise  # noqa: E402
from analysis.tables import (  # noqa: E402
    SHARED_STAGE,
    LabelInfo,
    arch_sort_key,
    cost_frame,
    has_cross,
    same_arch,
    select_main_runs,
)

FIGURES = ("accuracy-vs-ipc", "cross-heatmap", "image-grid", "ablation", "cost-scatter", "gain-over-random", "curve")

COLUMN_WIDTH_IN = 3.3

#: Okabe-Ito / Tol colour-blind-safe tones (no pale yellow on white), assigned in table row order.
PALETTE = (
    "#999999", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#882255",
    "#000000", "#44AA99", "#332288", "#DDCC77",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.5,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,
    "font.family": "DejaVu Sans",
}


@contextmanager
def paper_style() -> Iterator[None]:
    with plt.rc_context(STYLE):
        yield


def method_colours(results: Results) -> dict[str, str]:
    """Registry name -> colour, in the registry order the records carry (whole dataset
    excluded: it is drawn in grey)."""
    frame = results.runs if not results.runs.empty else results.records
    if frame.empty:
        return {}
    first = frame.drop_duplicates("method").sort_values(["method_order", "method"], kind="stable")
    names = [str(m) for m in first["method"] if m != WHOLE]
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(names)}


def colour_for(label: str, method: str, plain: bool, colours: dict[str, str], others: Sequence[str] = ()) -> str:
    """A plain registry method gets its method's colour; variants share the extra tones."""
    if plain and method in colours:
        return colours[method]
    extra = PALETTE[len(colours):] or PALETTE
    idx = list(others).index(label) if label in others else sum(map(ord, label))
    return extra[idx % len(extra)]


def save_figure(fig: Figure, path: str | Path) -> list[Path]:
    """Write ``fig`` to ``path``; a path without a known suffix gets both ``.png`` and ``.pdf``.

    PDFs carry no creation date so that re-running gives identical files.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    targets = [path] if suffix in (".png", ".pdf", ".svg") else [path.with_name(path.name + ".png"), path.with_name(path.name + ".pdf")]
    out = []
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {}
        if t.suffix.lower() == ".pdf":
            meta = {"CreationDate": None, "ModDate": None}
        elif t.suffix.lower() == ".svg":
            meta = {"Date": None}
        with paper_style():  # savefig reads dpi/bbox from rcParams at save time
            fig.savefig(t, metadata=meta)
        out.append(t)
    plt.close(fig)
    return out


def _panel_grid(n: int, max_cols: int = 3, height: float = 2.3) -> tuple[Figure, list]:
    cols = min(n, max_cols)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN_WIDTH_IN * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# ----------------------------------------------------------------------------------------
# accuracy vs IPC
# ----------------------------------------------------------------------------------------


def accuracy_vs_ipc(results: Results, dataset: Optional[str] = None, eval_arch: Optional[str] = None) -> Figure:
    """One panel per dataset: mean accuracy vs IPC, one line per method, band = ± std.

    The whole-dataset accuracy is a dashed horizontal line. A dataset run at a single IPC has
    no axis to draw lines along: its panel is a horizontal bar per method (± std error bars,
    in table order, the whole dataset as a dashed vertical line) and needs no legend."""
    runs = select_main_runs(results, eval_arch)
    if dataset is not None:
        runs = runs[runs["dataset"] == dataset.lower()]
        if runs.empty:
            raise AnalysisError(f"no records for dataset {dataset!r}")
    if runs[runs["method"] != WHOLE].empty:
        raise AnalysisError("accuracy vs IPC needs condensed sets (only whole-dataset records found)")
    lm = LabelInfo(runs)
    labels = lm.ordered()
    others = [lab for lab in labels if lab not in lm.plain]
    colours = method_colours(results)
    datasets = [d for d in sorted(set(runs["dataset"]), key=results.dataset_key) if not runs[(runs["dataset"] == d) & (runs["method"] != WHOLE)].empty]
    with paper_style():
        fig, axes = _panel_grid(len(datasets))
        for ax, d in zip(axes, datasets):
            rd = runs[runs["dataset"] == d]
            ipcs_all = sorted(int(i) for i in rd["ipc"].dropna().unique())
            if len(ipcs_all) == 1:
                _accuracy_bars(ax, rd, labels, lm, colours, others)
                ax.set_title(f"{results.dataset_display(d)}, IPC {ipcs_all[0]}")
                continue
            for i, lab in enumerate(labels):
                g = rd[rd["label"] == lab]
                if g.empty:
                    continue
                colour = colour_for(lab, lm[lab], lab in lm.plain, colours, others)
                if lm[lab] == WHOLE:
                    s = summarise(g["accuracy"])
                    ax.axhline(s.mean, color="#444444", ls="--", lw=0.9, label=lm.display[lab], zorder=1)
                    continue
                pts = sorted((int(ipc), summarise(gg["accuracy"])) for ipc, gg in g.groupby("ipc"))
                x = np.array([p[0] for p in pts], dtype=float)
                m = np.array([p[1].mean for p in pts])
                sd = np.array([p[1].std for p in pts])
                ax.plot(x, m, marker=MARKERS[i % len(MARKERS)], color=colour, label=lm.display[lab], zorder=3)
                ax.fill_between(x, m - sd, m + sd, color=colour, alpha=0.18, lw=0, zorder=2)
            _ipc_axis(ax, ipcs_all, results.dataset_display(d), "Test accuracy (%)")
        _figure_legend(fig, axes, 3 if len(datasets) == 1 else 5)
        fig.tight_layout()
    return fig


def _ipc_axis(ax: Any, ipcs: Sequence[int], title: str, ylabel: str) -> None:
    """An IPC x axis (log scale when the IPCs span 10x or more, one tick per IPC), a title and
    a y label."""
    if ipcs and ipcs[-1] / max(ipcs[0], 1) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(list(ipcs))
    ax.set_xticklabels([str(i) for i in ipcs])
    ax.minorticks_off()
    ax.set_title(title)
    ax.set_xlabel("Images per class")
    ax.set_ylabel(ylabel)


def _figure_legend(fig: Figure, axes: Sequence[Any], max_cols: int) -> None:
    """One legend above the panels with every distinct entry of ``axes`` (none when empty)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(n, h)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(len(seen), max_cols),
                   bbox_to_anchor=(0.5, 1.0))


def _accuracy_bars(ax: Any, rd: Any, labels: list[str], lm: LabelInfo, colours: Any,
                   others: list[str]) -> None:
    """The single-IPC panel of :func:`accuracy_vs_ipc`: one horizontal bar per set label."""
    rows = []
    whole = None
    for lab in labels:
        g = rd[rd["label"] == lab]
        if g.empty:
            continue
        s = summarise(g["accuracy"])
        if lm[lab] == WHOLE:
            whole = (lm.display[lab], s.mean)
            continue
        rows.append((lm.display[lab], s, colour_for(lab, lm[lab], lab in lm.plain, colours, others)))
    y = np.arange(len(rows))[::-1]  # first label on top
    ax.barh(y, [r[1].mean for r in rows], xerr=[r[1].std for r in rows], color=[r[2] for r in rows],
            height=0.7, error_kw={"elinewidth": 0.8, "capsize": 2}, zorder=2)
    for yy, (_, s, _) in zip(y, rows):
        inside = s.mean >= 20  # the value inside the bar's end, else after it
        ax.text(s.mean - s.std - 1 if inside else s.mean + s.std + 1, yy, f"{s.mean:.1f}", va="center",
                ha="right" if inside else "left", fontsize=7, color="white" if inside else "black", zorder=3)
    ax.set_yticks(y)
    ax.set_yticklabels([r[0] for r in rows])
    if whole is not None:
        ax.axvline(whole[1], color="#444444", ls="--", lw=0.9, zorder=1)
        ax.set_xlabel(f"Test accuracy (%); dashed: {whole[0].lower()} {whole[1]:.1f}")
    else:
        ax.set_xlabel("Test accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="y", visible=False)
    fig = ax.figure
    if len(fig.axes) == 1:  # one panel: as tall as its rows need
        fig.set_size_inches(fig.get_size_inches()[0], max(2.3, 0.2 * len(rows) + 0.9))


# ----------------------------------------------------------------------------------------
# cross-architecture heatmap
# ----------------------------------------------------------------------------------------


def cross_heatmap(results: Results, dataset: Optional[str] = None, ipc: Optional[int] = None) -> Figure:
    """Mean accuracy of (method, training net) rows on each evaluation network, one panel per
    dataset/IPC with cross-architecture evaluations."""
    if not has_cross(results):
        raise AnalysisError("no cross-architecture evaluations in the records (add eval_archs to the sweep)")
    runs = results.runs[results.runs["method"] != WHOLE].copy()
    runs["train_arch"] = runs["train_arch"].fillna("–").astype(str)
    if dataset is not None:
        runs = runs[runs["dataset"] == dataset.lower()]
    if ipc is not None:
        runs = runs[runs["ipc"] == ipc]
    groups = []
    for (d, i), g in runs.groupby(["dataset", "ipc"], sort=False):
        crossed = g[~same_arch(g)]
        if not crossed.empty:  # rows as in the cross table: sets evaluated on another net
            keep = set(zip(crossed["label"], crossed["train_arch"]))
            g = g[[k in keep for k in zip(g["label"], g["train_arch"])]]
            groups.append((d, int(i), g))
    if not groups:
        raise AnalysisError("no cross-architecture evaluations for the chosen dataset/IPC")
    groups.sort(key=lambda t: (results.dataset_key(t[0]), t[1]))
    lm = LabelInfo(runs)
    akey = arch_sort_key(results)
    with paper_style():
        heights = []
        mats = []
        for d, i, g in groups:
            archs = sorted(set(g["eval_arch"].astype(str)), key=akey)
            keys = sorted({(lab, ta) for lab, ta in zip(g["label"], g["train_arch"])}, key=lambda k: (lm.order_key(k[0]), akey(k[1])))
            mat = np.full((len(keys), len(archs)), np.nan)
            for (lab, ta, ea), gg in g.groupby(["label", "train_arch", "eval_arch"]):
                mat[keys.index((lab, ta)), archs.index(ea)] = gg["accuracy"].mean()
            mats.append((d, i, archs, keys, mat))
            heights.append(0.6 + 0.28 * len(keys))
        width = max(COLUMN_WIDTH_IN, 1.4 + 0.55 * max(len(m[2]) for m in mats))
        fig, axes = plt.subplots(len(mats), 1, figsize=(width, sum(heights) + 0.3), squeeze=False, gridspec_kw={"height_ratios": heights})
        for ax, (d, i, archs, keys, mat) in zip(axes[:, 0], mats):
            ax.grid(False)
            im = ax.imshow(mat, cmap="viridis", aspect="auto", vmin=np.nanmin(mat), vmax=np.nanmax(mat))
            ax.set_xticks(range(len(archs)))
            ax.set_xticklabels(archs, rotation=30, ha="right")
            ax.set_yticks(range(len(keys)))
            ax.set_yticklabels([f"{lm.display[lab]} ({ta})" for lab, ta in keys])
            lo, hi = np.nanmin(mat), np.nanmax(mat)
            for r in range(mat.shape[0]):
                for c in range(mat.shape[1]):
                    v = mat[r, c]
                    if np.isnan(v):
                        ax.text(c, r, "–", ha="center", va="center", fontsize=6.5, color="#666666")
                        continue
                    light = (v - lo) / (hi - lo + 1e-9) > 0.6
                    ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=6.5, color="black" if light else "white")
            ax.set_title(f"{results.dataset_display(d)}, IPC {i}: evaluated on")
            for side in ("top", "right", "left", "bottom"):
                ax.spines[side].set_visible(False)
            cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
            cb.set_label("Accuracy (%)")
            cb.outline.set_linewidth(0.4)
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# ablation bars
# ----------------------------------------------------------------------------------------


def ablation_bars(results: Results) -> Figure:
    """Mean ± std per variant of a method with ablation components (dot and whisker chart),
    one panel per dataset/IPC/method as in the ablation table; the method as published is
    highlighted and drawn as a dotted reference line."""
    if not has_ablation(results):
        raise AnalysisError("no ablation in the records (need at least two variants of one method with "
                            "ablation components on one dataset/IPC)")
    colours = method_colours(results)
    groups = []
    for d, i, base, g in ablation_groups(results):
        rows, ref_label, _ = group_rows(base, g)
        info = [(r["label"], r["stat"], r["display"]) for r in rows]
        ref = next((x for x in info if x[0] == ref_label), None)
        base_name = next((r["display"] for r in rows if r["method"] == base), base)
        groups.append((d, i, base, base_name, info, ref))
    with paper_style():
        nmax = max(len(info) for *_, info, _ in groups)
        fig, axes = _panel_grid(len(groups), max_cols=2, height=0.55 + 0.22 * nmax)
        for ax, (d, i, base, base_name, info, ref) in zip(axes, groups):
            y = np.arange(len(info))[::-1]
            # Dots with ± std whiskers, not bars: the axis does not start at 0, and a truncated
            # bar would exaggerate the differences.
            for yy, x in zip(y, info):
                colour = colours.get(base, PALETTE[0]) if x is ref else "#0072B2"
                ax.errorbar(x[1].mean, yy, xerr=x[1].std, fmt="o", color=colour, ms=4, lw=0.9, capsize=2, zorder=3)
                ax.annotate(f"{x[1].mean:.1f}", (x[1].mean, yy), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=6, color="#333333")
            ax.set_ylim(-0.6, len(info) - 0.4)
            ax.set_yticks(y)
            ax.set_yticklabels([x[2] for x in info])
            if ref is not None:
                ax.axvline(ref[1].mean, color="#444444", ls=":", lw=0.8)
            lo = min(x[1].mean - x[1].std for x in info)
            hi = max(x[1].mean + x[1].std for x in info)
            span = max(hi - lo, 1.0)
            ax.set_xlim(max(0.0, lo - 0.3 * span), hi + 0.15 * span)
            ax.grid(axis="y", visible=False)
            ax.set_xlabel("Test accuracy (%)")
            ax.set_title(f"{base_name} ablation: {results.dataset_display(d)}, IPC {i}")
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# cost vs accuracy
# ----------------------------------------------------------------------------------------


MIN_TIME_S = 0.01


def cost_scatter(results: Results) -> Figure:
    """Condensation wall time (log x) against mean accuracy, one point per method and IPC,
    one panel per dataset, IPC written beside each point (placed where it overlaps no other
    label or point). A stage several methods share through the run cache (the coresets'
    feature network) is taken out of their points and drawn once, as a dotted line labelled
    with its one-time cost, so a cell that trained it and one that loaded it are comparable.
    A row whose set another cell condensed (cells differing only in evaluation) is drawn hollow
    at that cell's time, matching the cost table's "(shared)"."""
    df = cost_frame(results)
    df = df[df["condense_time_s"].notna() & df["accuracy_mean"].notna() & (df["_method"] != WHOLE)].copy()
    if df.empty:
        raise AnalysisError("no condensation times in the records' cost figures")
    df["time_s"] = df["own_condense_time_s"].where(df["own_condense_time_s"].notna(), df["condense_time_s"])
    # coresets can take ~0 s; on a log axis they sit at the floor instead of vanishing
    df["time_s"] = df["time_s"].clip(lower=MIN_TIME_S)
    datasets = sorted(set(df["dataset"]), key=results.dataset_key)
    lm = LabelInfo(results.records)
    labels = [lab for lab in lm.ordered() if lab in set(df["method"])]
    others = [lab for lab in labels if lab not in lm.plain]
    colours = method_colours(results)
    with paper_style():
        fig, axes = _panel_grid(len(datasets), height=2.6)
        to_label = []
        for ax, d in zip(axes, datasets):
            g = df[df["dataset"] == d]
            points, texts = [], []
            for i, lab in enumerate(labels):
                gl = g[g["method"] == lab].sort_values("ipc")
                if gl.empty:
                    continue
                colour = colour_for(lab, lm[lab], lab in lm.plain, colours, others)
                marker = MARKERS[i % len(MARKERS)]
                own, reused = gl[~gl["set_reused"]], gl[gl["set_reused"]]
                ax.scatter(own["time_s"], own["accuracy_mean"], color=colour, marker=marker, s=14,
                           label=lm.display[lab] if not own.empty else None, zorder=3, edgecolors="none")
                # a set another row's cell condensed: its time is that cell's, drawn hollow
                ax.scatter(reused["time_s"], reused["accuracy_mean"], facecolors="none", edgecolors=colour,
                           marker=marker, s=14, linewidths=0.8, zorder=3,
                           label=f"{lm.display[lab]} (shared set)" if not reused.empty else None)
                for t, a, ipc in zip(gl["time_s"], gl["accuracy_mean"], gl["ipc"]):
                    points.append((t, a))
                    texts.append(str(int(ipc)))
            shared = g["shared_stage_once_s"].dropna()
            notes = []
            if not shared.empty:
                once = float(shared.max())
                ax.axvline(once, color="#777777", ls=":", lw=0.8, zorder=1)
                notes.append(ax.annotate(f"shared {SHARED_STAGE}:\n{once:.3g} s, once", (once, 0.03),
                                         xycoords=("data", "axes fraction"), xytext=(2, 0), textcoords="offset points",
                                         fontsize=5.5, color="#555555", va="bottom", ha="left"))
            ax.set_xscale("log")
            ax.set_xlabel(f"Condensation time per set (s, log; floor {MIN_TIME_S:g} s)")
            ax.set_ylabel("Test accuracy (%)")
            ipcs = sorted(set(texts))
            if len(ipcs) == 1:  # one IPC: the title says it, the points need no IPC labels
                ax.set_title(f"{results.dataset_display(d)}, IPC {ipcs[0]}")
                points, texts = [], []
            else:
                ax.set_title(results.dataset_display(d))
            ax.margins(x=0.15, y=0.12)
            to_label.append((ax, points, texts, notes))
        _figure_legend(fig, axes, 2 * len(datasets))
        fig.tight_layout()
        fig.canvas.draw()  # final limits and layout: the labels are placed in their printed positions
        for ax, points, texts, notes in to_label:
            place_labels(ax, points, texts, avoid=notes)
    return fig


#: Offsets (points) tried for a point label, nearest first.
LABEL_OFFSETS = ((3, 2), (3, -7), (-8, 2), (-8, -7), (3, 7), (-8, 7), (3, -12), (-8, -12), (8, -2), (-13, -2),
                 (3, 12), (-8, 12), (3, -17), (-8, -17))


def place_labels(ax: Any, points: Sequence[tuple[float, float]], texts: Sequence[str], fontsize: float = 5.5,
                 avoid: Sequence[Any] = ()) -> list:
    """Annotate each point with its text at the first offset of :data:`LABEL_OFFSETS` whose box
    overlaps no label placed before, no point and no artist of ``avoid`` (the least-overlapping
    one when all do)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    marker_px = 3.0 * fig.dpi / 72.0
    occupied = []
    for x, y in points:
        px, py = to_px((x, y))
        occupied.append((px - marker_px, py - marker_px, px + marker_px, py + marker_px))
    for artist in avoid:
        e = artist.get_window_extent(renderer)
        occupied.append((e.x0, e.y0, e.x1, e.y1))
    placed = []

    def overlap(a, b) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    for (x, y), text in zip(points, texts):
        best, best_cost = None, None
        for dx, dy in LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                              color="#555555")
            e = ann.get_window_extent(renderer)
            box = (e.x0, e.y0, e.x1, e.y1)
            cost = sum(overlap(box, o) for o in occupied)
            if best_cost is None or cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (ann, box), cost
            else:
                ann.remove()
            if cost == 0:
                break
        occupied.append(best[1])
        placed.append(best[0])
    return placed


def gain_over_random(results: Results, dataset: Optional[str] = None, eval_arch: Optional[str] = None) -> Figure:
    """Gain over same-protocol random selection (IOR, :mod:`analysis.scores`) against IPC, one
    panel per dataset, one line per set configuration (solid: hard labels, dashed: teacher or
    soft labels), error bars = std over seeds; zero (random) as a grey line."""
    from analysis.scores import LABEL_ORDER, score_frame

    df = score_frame(results, eval_arch)
    df = df[df["IOR_n"] > 0]
    if dataset is not None:
        df = df[df["dataset"] == dataset.lower()]
    if df.empty:
        raise AnalysisError("no gain over random to draw: no set has a random baseline under its plan "
                            "(the scores table names the cells to run)")
    datasets = sorted(set(df["dataset"]), key=results.dataset_key)
    lm = LabelInfo(results.runs)
    labels = [lab for lab in lm.ordered() if lab in set(df["method"])]
    others = [lab for lab in labels if lab not in lm.plain]
    colours = method_colours(results)
    styles = {"hard": "-", "soft": ":", "teacher": "--"}
    with paper_style():
        fig, axes = _panel_grid(len(datasets))
        for ax, d in zip(axes, datasets):
            g = df[df["dataset"] == d]
            ipcs = sorted(int(i) for i in g["ipc"].unique())
            ax.axhline(0.0, color="#888888", lw=0.8, zorder=1)
            for i, lab in enumerate(labels):
                for kind in sorted(set(g.loc[g["method"] == lab, "labels"]), key=lambda k: LABEL_ORDER.get(k, 9)):
                    gl = g[(g["method"] == lab) & (g["labels"] == kind)].sort_values("ipc")
                    colour = colour_for(lab, lm[lab], lab in lm.plain, colours, others)
                    name = lm.display[lab] + ("" if kind == "hard" else f" ({kind} labels)")
                    ax.errorbar(gl["ipc"].astype(float), gl["IOR_mean"], yerr=gl["IOR_std"], color=colour,
                                ls=styles.get(kind, "-"), marker=MARKERS[i % len(MARKERS)], capsize=1.5,
                                elinewidth=0.6, label=name, zorder=3)
            _ipc_axis(ax, ipcs, results.dataset_display(d), "Gain over random (pp)")
        _figure_legend(fig, axes, 3)
        fig.tight_layout()
    return fig


def curve_figure(results: Results, dataset: Optional[str] = None, ipc: Optional[int] = None) -> Figure:
    """Learning curves (:mod:`analysis.fidelity`): accuracy against condensation iterations (log
    x axis), one panel per (dataset, IPC, evaluation architecture), one line per method label
    (error bars = std over every evaluation run of the point); a dashed horizontal line at the
    published mean of the method (its colour, a band of ± the published std) and a dotted grey
    one at the same-protocol random baseline when the store has it."""
    from analysis.fidelity import curve_frame, curve_plans, random_baseline

    df = curve_frame(results)
    if dataset is not None:
        df = df[df["dataset"] == dataset.lower()]
    if ipc is not None:
        df = df[df["ipc"] == ipc]
    if df.empty:
        raise AnalysisError("no learning-curve point matches " + ", ".join(
            x for x in (f"dataset {dataset}" if dataset else "", f"IPC {ipc}" if ipc is not None else "") if x))
    panels = list(dict.fromkeys(zip(df["dataset"], df["ipc"], df["eval_arch"])))
    colours = method_colours(results)
    labels = list(dict.fromkeys(df["method"]))
    others = [lab for lab, plain in dict(zip(df["method"], df["_plain"])).items() if not plain]
    with paper_style():
        fig, axes = _panel_grid(len(panels))
        for ax, (d, k, arch) in zip(axes, panels):
            g = df[(df["dataset"] == d) & (df["ipc"] == k) & (df["eval_arch"] == arch)]
            for i, lab in enumerate(labels):
                gl = g[g["method"] == lab].sort_values("iterations")
                if gl.empty:
                    continue
                first = gl.iloc[0]
                colour = colour_for(lab, first["_method"], bool(first["_plain"]), colours, others)
                ax.errorbar(gl["iterations"].astype(float), gl["mean"], yerr=gl["std"], color=colour,
                            marker=MARKERS[i % len(MARKERS)], capsize=1.5, elinewidth=0.6,
                            label=str(first["_display"]), zorder=3)
                if first["published_confirmed"]:
                    pm, ps = float(first["published_mean"]), float(first["published_std"])
                    ax.axhline(pm, color=colour, ls="--", lw=0.8, zorder=2,
                               label=f"{first['_display']} published [{first['published_confirmed']}]")
                    if not np.isnan(ps):
                        ax.axhspan(pm - ps, pm + ps, color=colour, alpha=0.12, lw=0, zorder=1)
            base = random_baseline(results, d, int(k), arch, curve_plans(results, d, int(k), arch))
            if base is not None:
                ax.axhline(base.mean, color="#777777", ls=":", lw=0.9, zorder=2, label="Random (same protocol)")
            its = sorted(int(i) for i in g["iterations"].unique())
            ax.set_xscale("log")
            ax.set_xticks(its)
            ax.set_xticklabels([str(i) for i in its], rotation=45 if len(its) > 5 else 0)
            ax.minorticks_off()
            ax.set_title(f"{results.dataset_display(d)}, IPC {k}, {arch}")
            ax.set_xlabel("Condensation iterations")
            ax.set_ylabel("Test accuracy (%)")
        seen: dict[str, Any] = {}
        for ax in axes:
            for h, n in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(n, h)
        fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(len(seen), 3),
                   bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
    return fig


def build_figure(kind: str, results: Results, **kw: Any) -> Figure:
    if kind == "accuracy-vs-ipc":
        return accuracy_vs_ipc(results, dataset=kw.get("dataset"), eval_arch=kw.get("eval_arch"))
    if kind == "cross-heatmap":
        return cross_heatmap(results, dataset=kw.get("dataset"), ipc=kw.get("ipc"))
    if kind == "image-grid":
        from analysis.image_grid import image_grid

        return image_grid(results, dataset=kw.get("dataset"), ipc=kw.get("ipc"), labels=kw.get("methods"), max_ipc=kw.get("max_ipc") or 10)
    if kind == "ablation":
        return ablation_bars(results)
    if kind == "cost-scatter":
        return cost_scatter(results)
    if kind == "gain-over-random":
        return gain_over_random(results, dataset=kw.get("dataset"), eval_arch=kw.get("eval_arch"))
    if kind == "curve":
        return curve_figure(results, dataset=kw.get("dataset"), ipc=kw.get("ipc"))
    raise AnalysisError(f"unknown figure {kind!r}; choose one of {', '.join(FIGURES)}")
