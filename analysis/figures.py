"""Paper-style figures (matplotlib, Agg backend): PNG and PDF in one consistent style.

Every figure is sized for a paper column (3.3 in wide per panel) with 8 pt text, so it stays
readable when printed at column width. Colours follow the methods' registry order as the
records carry it (a colour-blind-safe palette, one tone per method present), so a method has
the same colour in every figure of a report; variants share the remaining tones.

Only :func:`image_grid` needs torch (it reads the synthetic sets through
``methods.synset.SyntheticSet.load``) and imports it lazily; everything else works from the
loaded DataFrame alone.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.ablation import ablation_groups, group_rows, has_ablation  # noqa: E402
from analysis.load import WHOLE, AnalysisError, Results  # noqa: E402
from analysis.render import summarise  # noqa: E402
from analysis.tables import (  # noqa: E402
    LabelInfo,
    arch_sort_key,
    cost_frame,
    has_cross,
    same_arch,
    select_main_runs,
)

FIGURES = ("accuracy-vs-ipc", "cross-heatmap", "image-grid", "ablation", "cost-scatter")

COLUMN_WIDTH_IN = 3.3

#: Okabe-Ito / Tol colour-blind-safe tones (no pale yellow on white), assigned in table row order.
PALETTE = (
    "#999999", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#882255",
    "#000000", "#44AA99", "#332288", "#DDCC77",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")

#: Class names of the standard datasets (used when a synthetic set carries none).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "svhn": tuple(str(i) for i in range(10)),
    "digits": tuple(str(i) for i in range(10)),
    "fashionmnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
        "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ),
}

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

    The whole-dataset accuracy is a dashed horizontal line."""
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
            if ipcs_all and ipcs_all[-1] / max(ipcs_all[0], 1) >= 10:
                ax.set_xscale("log")
            ax.set_xticks(ipcs_all)
            ax.set_xticklabels([str(i) for i in ipcs_all])
            ax.minorticks_off()
            ax.set_title(results.dataset_display(d))
            ax.set_xlabel("Images per class")
            ax.set_ylabel("Test accuracy (%)")
        handles, names = axes[0].get_legend_handles_labels()
        seen = dict(zip(names, handles))
        for ax in axes[1:]:
            for h, n in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(n, h)
        ncol = min(len(seen), 3 if len(datasets) == 1 else 5)
        fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=ncol, bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
    return fig


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
# synthetic image grid
# ----------------------------------------------------------------------------------------


def denormalise(images: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo the per-channel normalisation ``(x - mean) / std`` and clamp to [0, 1].

    ``images``: (N, C, H, W) tensor or array. Returns a float64 numpy array of the same shape.
    With empty ``mean``/``std`` (unknown statistics) the images are min-max scaled per image.
    """
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    arr = arr.astype(np.float64)
    if arr.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {arr.shape}")
    c = arr.shape[1]
    if len(mean) and len(std):
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {c} channels")
        m = np.asarray(mean, dtype=np.float64).reshape(1, c, 1, 1)
        s = np.asarray(std, dtype=np.float64).reshape(1, c, 1, 1)
        arr = arr * s + m
    else:
        lo = arr.min(axis=(1, 2, 3), keepdims=True)
        hi = arr.max(axis=(1, 2, 3), keepdims=True)
        arr = (arr - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    return np.clip(arr, 0.0, 1.0)


def image_grid_array(
    images: Any,
    labels: Any,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    max_ipc: int = 10,
    max_classes: int = 10,
    pad: int = 1,
) -> tuple[np.ndarray, list[int]]:
    """Mosaic (H', W', C) in [0, 1]: one row per class (first ``max_classes`` classes), at most
    ``max_ipc`` images per row in set order, ``pad`` white pixels between tiles.

    Returns the mosaic and the class index of each row."""
    x = denormalise(images, mean, std)
    lab = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    lab = lab.astype(np.int64).reshape(-1)
    n, c, h, w = x.shape
    classes = [k for k in range(num_classes) if (lab == k).any()][:max_classes]
    if not classes:
        raise ValueError("the synthetic set has no images")
    cols = min(max_ipc, max(int((lab == k).sum()) for k in classes))
    mosaic = np.ones((len(classes) * (h + pad) - pad, cols * (w + pad) - pad, c))
    for r, k in enumerate(classes):
        idx = np.flatnonzero(lab == k)[:cols]
        for j, i in enumerate(idx):
            y0, x0 = r * (h + pad), j * (w + pad)
            mosaic[y0 : y0 + h, x0 : x0 + w, :] = x[i].transpose(1, 2, 0)
    return mosaic, classes


def _class_names(dataset: str, num_classes: int, names: Optional[Sequence[str]]) -> list[str]:
    if names and len(names) >= num_classes:
        return [str(n) for n in names]
    known = CLASS_NAMES.get(dataset.lower())
    if known and len(known) >= num_classes:
        return list(known)
    return [f"class {k}" for k in range(num_classes)]


def _load_synset(path: str):
    from methods.synset import SyntheticSet  # lazy: only this figure needs torch

    return SyntheticSet.load(path)


def synset_choices(results: Results) -> pd.DataFrame:
    """One synthetic set per (dataset, IPC, label): the lowest seed's, existing files only."""
    runs = results.records
    if runs.empty:
        return pd.DataFrame(columns=["dataset", "ipc", "label", "label_display", "method", "method_order",
                                     "family", "plain", "synset_path"])
    r = runs[runs["synset_path"].notna() & (runs["method"] != WHOLE)]
    r = r[[Path(p).is_file() for p in r["synset_path"]]] if not r.empty else r
    r = r.sort_values(["dataset", "ipc", "label", "seed", "cell_id"], kind="stable")
    r = r.drop_duplicates(["dataset", "ipc", "label"])
    return r[["dataset", "ipc", "label", "label_display", "method", "method_order", "family", "plain",
              "synset_path"]].reset_index(drop=True)


def image_grid(
    results: Results,
    dataset: Optional[str] = None,
    ipc: Optional[int] = None,
    labels: Optional[Sequence[str]] = None,
    *,
    max_ipc: int = 10,
    max_classes: int = 10,
) -> Figure:
    """Synthetic images, one panel per method (lowest seed), one row per class (class names
    where known), at most ``max_ipc`` columns. Images are de-normalised with the set's own
    mean/std and clamped to [0, 1]. Defaults to the first dataset and the largest IPC <= 10."""
    choices = synset_choices(results)
    if choices.empty:
        raise AnalysisError("no synthetic sets (synsets/*.pt) found next to the records")
    if dataset is not None:
        choices = choices[choices["dataset"] == dataset.lower()]
        if choices.empty:
            raise AnalysisError(f"no synthetic sets for dataset {dataset!r}")
    d = sorted(set(choices["dataset"]), key=results.dataset_key)[0]
    choices = choices[choices["dataset"] == d]
    if ipc is None:
        ipcs = sorted(int(i) for i in choices["ipc"].unique())
        small = [i for i in ipcs if i <= max_ipc]
        ipc = small[-1] if small else ipcs[0]
    choices = choices[choices["ipc"] == ipc]
    if labels:
        choices = choices[choices["label"].isin(list(labels))]
    if choices.empty:
        raise AnalysisError(f"no synthetic sets for {results.dataset_display(d)} at IPC {ipc}")
    lm = LabelInfo(choices)
    order = lm.ordered()
    panels = []
    for lab in order:
        path = choices.loc[choices["label"] == lab, "synset_path"].iloc[0]
        try:
            syn = _load_synset(path)
        except Exception as exc:  # unreadable or foreign file: say which, skip it
            raise AnalysisError(f"cannot read synthetic set {path}: {exc}") from exc
        mosaic, rows = image_grid_array(syn.images, syn.labels, syn.num_classes, syn.mean, syn.std, max_ipc=max_ipc, max_classes=max_classes)
        names = _class_names(d, syn.num_classes, syn.class_names)
        h = int(syn.images.shape[2])
        panels.append((lab, mosaic, [names[k] for k in rows], h))
    with paper_style():
        ncls = max(len(p[2]) for p in panels)
        widths = [p[1].shape[1] / p[1].shape[0] * ncls for p in panels]
        tile_in = 0.22
        fig_w = max(COLUMN_WIDTH_IN, 0.9 + tile_in * sum(widths) + 0.15 * len(panels))
        fig_h = 0.45 + tile_in * ncls
        fig, axes = plt.subplots(
            1, len(panels), figsize=(fig_w, fig_h), squeeze=False, gridspec_kw={"width_ratios": widths},
            layout="constrained",  # keeps the suptitle tight above the panel titles
        )
        for j, (ax, (lab, mosaic, names, h)) in enumerate(zip(axes[0], panels)):
            ax.grid(False)
            if mosaic.shape[2] == 1:
                ax.imshow(mosaic[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(mosaic, interpolation="nearest")
            ax.set_xticks([])
            centres = [r * (h + 1) + h / 2 - 0.5 for r in range(len(names))]
            ax.set_yticks(centres)
            ax.set_yticklabels(names if j == 0 else [""] * len(names), fontsize=6)
            ax.tick_params(length=0)
            for side in ("top", "right", "left", "bottom"):
                ax.spines[side].set_visible(False)
            ax.set_title(lm.display[lab], fontsize=7)
            ax._condbench_mosaic = mosaic  # the exact array shown, for tests
        fig.suptitle(f"{results.dataset_display(d)}, {ipc} image{'s' if ipc != 1 else ''} per class", fontsize=8)
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
    one panel per dataset, IPC written beside each point."""
    df = cost_frame(results)
    df = df[df["condense_time_s"].notna() & df["accuracy_mean"].notna() & (df["_method"] != WHOLE)].copy()
    # coresets can take ~0 s; on a log axis they sit at the floor instead of vanishing
    df["condense_time_s"] = df["condense_time_s"].clip(lower=MIN_TIME_S)
    if df.empty:
        raise AnalysisError("no condensation times in the records' cost figures")
    datasets = sorted(set(df["dataset"]), key=results.dataset_key)
    lm = LabelInfo(results.records)
    labels = [lab for lab in lm.ordered() if lab in set(df["method"])]
    others = [lab for lab in labels if lab not in lm.plain]
    colours = method_colours(results)
    with paper_style():
        fig, axes = _panel_grid(len(datasets))
        for ax, d in zip(axes, datasets):
            g = df[df["dataset"] == d]
            for i, lab in enumerate(labels):
                gl = g[g["method"] == lab].sort_values("ipc")
                if gl.empty:
                    continue
                colour = colour_for(lab, lm[lab], lab in lm.plain, colours, others)
                ax.scatter(gl["condense_time_s"], gl["accuracy_mean"], color=colour, marker=MARKERS[i % len(MARKERS)], s=14, label=lm.display[lab], zorder=3, edgecolors="none")
                for t, a, ipc in zip(gl["condense_time_s"], gl["accuracy_mean"], gl["ipc"]):
                    ax.annotate(str(int(ipc)), (t, a), xytext=(2.5, 1.5), textcoords="offset points", fontsize=5.5, color="#555555")
            ax.set_xscale("log")
            ax.set_xlabel(f"Condensation time (s, log; floor {MIN_TIME_S:g} s)")
            ax.set_ylabel("Test accuracy (%)")
            ax.set_title(results.dataset_display(d))
        seen: dict[str, Any] = {}
        for ax in axes:
            for h, n in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(n, h)
        fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(len(seen), 4), bbox_to_anchor=(0.5, 1.0), handletextpad=0.2)
        fig.tight_layout()
    return fig


def build_figure(kind: str, results: Results, **kw: Any) -> Figure:
    if kind == "accuracy-vs-ipc":
        return accuracy_vs_ipc(results, dataset=kw.get("dataset"), eval_arch=kw.get("eval_arch"))
    if kind == "cross-heatmap":
        return cross_heatmap(results, dataset=kw.get("dataset"), ipc=kw.get("ipc"))
    if kind == "image-grid":
        return image_grid(results, dataset=kw.get("dataset"), ipc=kw.get("ipc"), labels=kw.get("methods"), max_ipc=kw.get("max_ipc") or 10)
    if kind == "ablation":
        return ablation_bars(results)
    if kind == "cost-scatter":
        return cost_scatter(results)
    raise AnalysisError(f"unknown figure {kind!r}; choose one of {', '.join(FIGURES)}")
