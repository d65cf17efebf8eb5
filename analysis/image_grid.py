"""The synthetic-image grid figure: one panel per method, one row per class (at IPC 1, one row
per method with the classes across).

Images are de-normalised with the set's own mean/std (:func:`denormalise`) and tiled by class
(:func:`image_grid_array`); class names come from the set, else the standard datasets' names
below. Reading a set needs torch (``methods.synset.SyntheticSet.load``, imported lazily).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.figures import COLUMN_WIDTH_IN, paper_style, plt

TEXT_WIDTH_IN = 6.75
"""Full text width of a two-column paper page (the widest a figure prints)."""
TILE_IN = 0.16
"""Printed size of one image at IPC >= 3 (10 images per class: 1.6 in per panel)."""
TILE_IN_LARGE = 0.3
"""Printed size of one image at IPC 1 and 2."""
MIN_PANEL_IN = 0.6
"""Narrowest panel (its title wraps to this width)."""
TITLE_CHAR_IN = 0.055
"""Width of one 7 pt title character, for wrapping."""
from analysis.load import WHOLE, AnalysisError, Results
from analysis.tables import LabelInfo

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
    where known, on every panel), at most ``max_ipc`` columns; panels wrap into rows so the
    figure is at most :data:`TEXT_WIDTH_IN` wide (a page's text width), titles wrap to their
    panel, and a set of a method already shown (its same images evaluated under another plan)
    is not repeated. Images are de-normalised with the set's own
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
    shown: list[tuple[str, Any, Any]] = []
    for lab in order:
        path = choices.loc[choices["label"] == lab, "synset_path"].iloc[0]
        try:
            syn = _load_synset(path)
        except Exception as exc:  # unreadable or foreign file: say which, skip it
            raise AnalysisError(f"cannot read synthetic set {path}: {exc}") from exc
        # the same method's same set evaluated under another plan (a same-protocol random
        # baseline, a method without its augmentation) is one panel, the first in row order
        if any(m == lm[lab] and x.shape == syn.images.shape and bool((x == syn.images).all())
               and bool((y == syn.labels).all()) for m, x, y in shown):
            continue
        shown.append((lm[lab], syn.images, syn.labels))
        mosaic, rows = image_grid_array(syn.images, syn.labels, syn.num_classes, syn.mean, syn.std, max_ipc=max_ipc, max_classes=max_classes)
        names = _class_names(d, syn.num_classes, syn.class_names)
        h = int(syn.images.shape[2])
        panels.append((lab, mosaic, [names[k] for k in rows], h))
    if ipc == 1:
        return _one_image_per_class(results, d, panels, lm)
    with paper_style():
        ncls = max(len(p[2]) for p in panels)
        cols = max(p[1].shape[1] for p in panels)
        tiles = max(round(cols / (h + 1)) for _l, _m, _n, h in panels) or 1
        tile_in = TILE_IN_LARGE if tiles <= 2 else TILE_IN
        label_in = 0.12 + 0.045 * max(len(n) for p in panels for n in p[2])  # 6 pt text
        panel_in = max(tile_in * tiles, MIN_PANEL_IN)
        title_chars = max(8, int(panel_in / TITLE_CHAR_IN))
        per_row = max(1, min(len(panels), int(TEXT_WIDTH_IN // (panel_in + label_in + 0.08))))
        n_rows = -(-len(panels) // per_row)
        per_row = -(-len(panels) // n_rows)  # balanced rows (7 panels: 4 + 3, not 6 + 1)
        fig_w = min(TEXT_WIDTH_IN, max(COLUMN_WIDTH_IN, per_row * (panel_in + label_in + 0.08)))
        fig_h = 0.3 + n_rows * (tile_in * ncls + 0.28)
        fig, axes = plt.subplots(
            n_rows, per_row, figsize=(fig_w, fig_h), squeeze=False,
            layout="constrained",  # keeps the suptitle tight above the panel titles
        )
        flat = list(axes.ravel())
        for ax in flat[len(panels):]:
            ax.set_visible(False)
        for ax, (lab, mosaic, names, h) in zip(flat, panels):
            _show(ax, mosaic)
            ax.set_xticks([])
            centres = [r * (h + 1) + h / 2 - 0.5 for r in range(len(names))]
            ax.set_yticks(centres)
            ax.set_yticklabels(names, fontsize=6)  # every panel: wrapped rows each need them
            ax.tick_params(length=0, pad=1.5)
            for side in ("top", "right", "left", "bottom"):
                ax.spines[side].set_visible(False)
            ax.set_title(textwrap.fill(lm.display[lab], title_chars), fontsize=7)
            ax._condbench_mosaic = mosaic  # the exact array shown, for tests
        fig.suptitle(f"{results.dataset_display(d)}, {ipc} image{'s' if ipc != 1 else ''} per class", fontsize=8)
    return fig


def _show(ax: Any, mosaic: np.ndarray) -> None:
    """Draw a mosaic in [0, 1] pixel for pixel (grey for one channel), without a grid."""
    ax.grid(False)
    if mosaic.shape[2] == 1:
        ax.imshow(mosaic[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic, interpolation="nearest")


def _one_image_per_class(results: Results, dataset: str, panels: list, lm: Any) -> Figure:
    """IPC 1: one row per set (the method named on the left), one column per class (named
    above the first row): a column of single tiles per method would waste the page's width."""
    rows = []
    for lab, mosaic, names, h in panels:  # the class-per-row mosaic, one tile wide
        tiles = [mosaic[r * (h + 1): r * (h + 1) + h] for r in range(len(names))]
        gap = np.ones((h, 1, mosaic.shape[2]))
        strip = np.concatenate([t if i == 0 else np.concatenate([gap, t], axis=1) for i, t in enumerate(tiles)],
                               axis=1)
        rows.append((lab, strip, names, h))
    with paper_style():
        ncls = max(len(r[2]) for r in rows)
        label_in = 0.12 + 0.05 * max(len(lm.display[r[0]]) for r in rows)
        tile_in = min(TILE_IN_LARGE, (TEXT_WIDTH_IN - label_in) / max(ncls, 1))
        fig_w = min(TEXT_WIDTH_IN, label_in + tile_in * ncls + 0.1)
        fig_h = 0.55 + len(rows) * (tile_in + 0.04)
        fig, axes = plt.subplots(len(rows), 1, figsize=(fig_w, fig_h), squeeze=False, layout="constrained")
        for i, (ax, (lab, strip, names, h)) in enumerate(zip(axes[:, 0], rows)):
            _show(ax, strip)
            ax.set_yticks([])
            ax.set_ylabel(lm.display[lab], rotation=0, ha="right", va="center", fontsize=7)
            if i == 0:
                ax.xaxis.tick_top()
                ax.set_xticks([c * (h + 1) + h / 2 - 0.5 for c in range(len(names))])
                ax.set_xticklabels(names, fontsize=6, rotation=0 if max(len(n) for n in names) <= 3 else 45,
                                   ha="center" if max(len(n) for n in names) <= 3 else "left")
            else:
                ax.set_xticks([])
            ax.tick_params(length=0, pad=1.5)
            for side in ("top", "right", "left", "bottom"):
                ax.spines[side].set_visible(False)
            ax._condbench_mosaic = strip  # the exact array shown, for tests
        fig.suptitle(f"{results.dataset_display(dataset)}, 1 image per class", fontsize=8)
    return fig
