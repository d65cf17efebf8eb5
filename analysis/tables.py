"""Paper-style tables from a loaded results store: Markdown, LaTeX (booktabs) and CSV.

Conventions (shared by every table):

* Accuracy is the test accuracy in percent, printed with one decimal.
* ``mean ± std`` is taken over *all* evaluation runs of a cell (seeds x evaluation networks).
  The std is the **population** standard deviation (``ddof=0``, numpy's default ``np.std``),
  which is what the reference code (DC/DSA/DM/CAFE ``main.py``) reports.
* ``(n)`` after a cell is the number of evaluation runs it pools.
* Bold marks the best mean of a column, compared on the printed (one-decimal) value so that
  equal printed numbers are all bold; the whole-dataset row never competes.
* Output is deterministic: rows and columns follow fixed orders (``METHOD_ORDER``,
  ``DATASET_ORDER``, ``ARCH_ORDER``, then alphabetical) and floats use fixed formats.

The main table only pools evaluations on the training architecture (``eval_arch ==
train_arch``, the papers' Table 1 protocol) unless ``eval_arch`` is given; the
cross-architecture table shows the rest.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from analysis.load import (
    NON_VARIANT_KEYS,
    WHOLE,
    AnalysisError,
    Results,
    arch_key,
    dataset_display,
    dataset_key,
    label_display,
    main_arch,
    method_rank,
)

FORMATS = ("md", "latex", "csv")
TABLES = ("main", "cross", "ablation", "cost")

STD_NOTE = "std = population standard deviation (ddof=0, numpy's np.std default, as the reference code reports)"


# ----------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """mean ± std (population, ddof=0) of ``n`` accuracies in percent."""

    mean: float
    std: float
    n: int

    @property
    def key(self) -> float:
        """The printed value, used to compare cells (ties on the printed value are ties)."""
        return float(f"{self.mean:.1f}")


def summarise(values: Sequence[float]) -> Stat:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise ValueError("no values to summarise")
    return Stat(float(np.mean(arr)), float(np.std(arr)), int(arr.size))


@dataclass(frozen=True)
class Published:
    mean: float
    std: Optional[float]
    confirmed: str
    source: str


def fmt1(x: float) -> str:
    """One decimal; negative zero prints as 0.0."""
    s = f"{x:.1f}"
    return "0.0" if s == "-0.0" else s


def fmt_signed(x: float) -> str:
    s = fmt1(x)
    return s if s.startswith("-") or s == "0.0" else "+" + s


# ----------------------------------------------------------------------------------------
# escaping
# ----------------------------------------------------------------------------------------

_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "✓": r"$\checkmark$",
    "✗": r"$\times$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "–": "--",
    "—": "---",
    "−": "$-$",
}


def tex_escape(text: Any) -> str:
    """Escape every LaTeX special character of a free-text label (& % $ # _ { } ~ ^ \\ ...)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


_MD_SPECIAL = set("\\|*_`<>[]")


def md_escape(text: Any) -> str:
    """Escape characters that would break a Markdown table cell or start emphasis."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text))


# ----------------------------------------------------------------------------------------
# table model
# ----------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One table cell: plain text, a ✓/✗ switch, or a statistic (optionally with a paper value)."""

    text: str = ""
    stat: Optional[Stat] = None
    bold: bool = False
    published: Optional[Published] = None
    show_published: bool = False
    delta: Optional[float] = None  # explicit signed difference column (ablation)
    switch: Optional[bool] = None
    span: int = 1  # LaTeX: \multicolumn over this many columns (md/csv repeat the cell)
    verbatim: bool = False  # text is already formatted for every output (numbers, units)

    def md(self) -> str:
        if self.switch is not None:
            return "✓" if self.switch else "✗"
        if self.delta is not None:
            return fmt_signed(self.delta)
        if self.stat is None:
            return self.text if self.verbatim else md_escape(self.text)
        m = fmt1(self.stat.mean)
        core = f"**{m}** ± {fmt1(self.stat.std)}" if self.bold else f"{m} ± {fmt1(self.stat.std)}"
        core += f" ({self.stat.n})"
        if self.show_published and self.published is not None:
            core += " · " + self._pub_md()
        return core

    def _pub_md(self) -> str:
        p = self.published
        std = "" if p.std is None or math.isnan(p.std) else f" ± {fmt1(p.std)}"
        return f"{fmt1(p.mean)}{std} [{p.confirmed}] · {fmt_signed(self.stat.mean - p.mean)}"

    def tex(self) -> str:
        if self.switch is not None:
            return r"$\checkmark$" if self.switch else r"$\times$"
        if self.delta is not None:
            return "$" + fmt_signed(self.delta) + "$"
        if self.stat is None:
            return tex_escape(self.text)
        m = fmt1(self.stat.mean)
        core = (r"\textbf{" + m + "}" if self.bold else m) + r"$\pm$" + fmt1(self.stat.std)
        core += r"\,{\scriptsize(" + str(self.stat.n) + ")}"
        if self.show_published and self.published is not None:
            p = self.published
            std = "" if p.std is None or math.isnan(p.std) else r"$\pm$" + fmt1(p.std)
            core += (
                " / " + fmt1(p.mean) + std + "$^{" + p.confirmed + "}$"
                + r"\,{\scriptsize($" + fmt_signed(self.stat.mean - p.mean) + "$)}"
            )
        return core


EMPTY = "–"


@dataclass
class Table:
    """A rendered-format-independent table.

    ``header`` names every column (Markdown/CSV-style flat header). ``groups`` optionally
    gives LaTeX a two-level header: a list of (group label, number of columns) covering all
    columns, and ``subheader`` the second-level labels. ``data`` is the tidy CSV frame.
    """

    name: str
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    data: pd.DataFrame
    align: str = ""
    groups: Optional[list[tuple[str, int]]] = None
    subheader: Optional[list[str]] = None
    midrule_before: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    needs_amssymb: bool = False

    # -- markdown --------------------------------------------------------------------------
    def to_markdown(self) -> str:
        align = self.align or "l" + "r" * (len(self.header) - 1)
        lines = ["| " + " | ".join(md_escape(h) for h in self.header) + " |"]
        lines.append("|" + "|".join(":---" if a == "l" else ":---:" if a == "c" else "---:" for a in align) + "|")
        for row in self.rows:
            cells: list[str] = []
            for c in row:
                cells.extend([c.md()] * c.span)
            lines.append("| " + " | ".join(cells) + " |")
        out = "\n".join(lines) + "\n"
        if self.notes:
            out += "\n" + "\n".join(self.notes) + "\n"
        return out

    # -- latex -----------------------------------------------------------------------------
    def to_latex(self) -> str:
        align = self.align or "l" + "r" * (len(self.header) - 1)
        packages = "booktabs, amssymb" if self.needs_amssymb else "booktabs"
        lines = [
            f"% {self.name} table written by condbench-analysis; needs \\usepackage{{{packages}}}",
            r"\begin{table}[t]",
            r"\centering",
            r"\caption{" + tex_escape(self.caption) + "}",
            r"\label{tab:" + self.name + "}",
            r"\begin{tabular}{" + align + "}",
            r"\toprule",
        ]
        if self.groups:
            parts, rules, col = [], [], 1
            for label, span in self.groups:
                if span == 1:
                    parts.append(tex_escape(label))
                else:
                    parts.append(r"\multicolumn{" + str(span) + "}{c}{" + tex_escape(label) + "}")
                if label:
                    rules.append(r"\cmidrule(lr){" + f"{col}-{col + span - 1}" + "}")
                col += span
            lines.append(" & ".join(parts) + r" \\")
            if rules:
                lines.append(" ".join(rules))
            lines.append(" & ".join(tex_escape(h) for h in (self.subheader or self.header)) + r" \\")
        else:
            lines.append(" & ".join(tex_escape(h) for h in self.header) + r" \\")
        lines.append(r"\midrule")
        for i, row in enumerate(self.rows):
            if i in self.midrule_before:
                lines.append(r"\midrule")
            parts = []
            for c in row:
                t = c.tex()
                parts.append(t if c.span == 1 else r"\multicolumn{" + str(c.span) + "}{c}{" + t + "}")
            lines.append(" & ".join(parts) + r" \\")
        lines.append(r"\bottomrule")
        lines.append(r"\end{tabular}")
        if self.notes:
            lines.append(r"\par\smallskip{\footnotesize " + tex_escape(" ".join(_plain_note(n) for n in self.notes)) + "}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    # -- csv -------------------------------------------------------------------------------
    def to_csv(self) -> str:
        return self.data.to_csv(index=False, float_format="%.1f", lineterminator="\n")

    def render(self, fmt: str) -> str:
        if fmt == "md":
            return self.to_markdown()
        if fmt == "latex":
            return self.to_latex()
        if fmt == "csv":
            return self.to_csv()
        raise AnalysisError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _plain_note(note: str) -> str:
    return note.replace("**", "").strip()


# ----------------------------------------------------------------------------------------
# published numbers
# ----------------------------------------------------------------------------------------


def load_published() -> pd.DataFrame:
    """The published numbers shipped in ``analysis/data/published.csv`` (reference notes §4)."""
    with resources.files("analysis").joinpath("data/published.csv").open("r", encoding="utf-8") as fh:
        df = pd.read_csv(fh, dtype={"confirmed": str, "source": str})
    df["ipc"] = df["ipc"].astype("Int64")
    return df


def _published_lookup(table: str) -> dict[tuple, Published]:
    df = load_published()
    df = df[df["table"] == table]
    out = {}
    for _, r in df.iterrows():
        ipc = None if pd.isna(r["ipc"]) else int(r["ipc"])
        key = (str(r["dataset"]), ipc, str(r["method"]), str(r["train_arch"]).lower(), str(r["eval_arch"]).lower())
        std = None if pd.isna(r["std"]) else float(r["std"])
        out[key] = Published(float(r["mean"]), std, str(r["confirmed"]), str(r["source"]))
    return out


# ----------------------------------------------------------------------------------------
# shared selection helpers
# ----------------------------------------------------------------------------------------


def _same_arch(runs: pd.DataFrame) -> pd.Series:
    """Evaluations on the set's own architecture (``home_arch``: the training architecture, or
    the store's main one for sets condensed without a network; see ``load.main_arch``)."""
    home = runs["home_arch"].astype(str).str.lower()
    return runs["eval_arch"].astype(str).str.lower() == home


def select_main_runs(results: Results, eval_arch: Optional[str] = None) -> pd.DataFrame:
    runs = results.runs
    if runs.empty:
        raise AnalysisError("no usable records in " + ", ".join(results.stores))
    if eval_arch is None:
        sel = runs[_same_arch(runs)]
    else:
        sel = runs[runs["eval_arch"].astype(str).str.lower() == eval_arch.lower()]
        if sel.empty:
            archs = ", ".join(sorted(set(runs["eval_arch"].astype(str)), key=arch_key))
            raise AnalysisError(f"no evaluations on architecture {eval_arch!r}; the records have: {archs}")
    return sel


def row_order_key(label: str, method: str, plain: bool) -> tuple:
    """Plain registry methods (whatever their label) in paper order, then variants (by their
    method, then label), the whole-dataset row last."""
    if method == WHOLE:
        return (2, 0, label)
    if plain:
        return (0, method_rank(method), label)
    return (1, method_rank(method), label)


class LabelInfo(dict):
    """label -> method (the first in row order when a label mixes methods), plus ``plain``:
    the labels whose every record runs the registry method without overrides."""

    def __init__(self, frame: pd.DataFrame):
        super().__init__()
        self.plain: set[str] = set()
        for label, grp in frame.groupby("label", sort=True):
            self[str(label)] = sorted(set(grp["method"]), key=method_rank)[0]
            if "plain" not in grp or bool(grp["plain"].all()):
                self.plain.add(str(label))

    def order_key(self, label: str) -> tuple:
        return row_order_key(label, self[label], label in self.plain)

    def ordered(self) -> list[str]:
        return sorted(self, key=self.order_key)


def _label_methods(runs: pd.DataFrame) -> LabelInfo:
    return LabelInfo(runs)


def _ordered_labels(runs: pd.DataFrame) -> list[str]:
    return LabelInfo(runs).ordered()


def _bold(stats: dict[Any, Stat]) -> set:
    if not stats:
        return set()
    best = max(s.key for s in stats.values())
    return {k for k, s in stats.items() if s.key == best}


# ----------------------------------------------------------------------------------------
# main table
# ----------------------------------------------------------------------------------------


def main_table(results: Results, *, published: bool = False, eval_arch: Optional[str] = None) -> Table:
    """Rows = methods, columns = dataset x IPC, cells = mean ± std (n) over all runs."""
    runs = select_main_runs(results, eval_arch)
    if runs.empty:
        raise AnalysisError("no evaluation on the training architecture in the records; try --eval-arch")
    lm = _label_methods(runs)
    labels = _ordered_labels(runs)
    datasets = sorted(set(runs["dataset"]), key=dataset_key)
    columns: list[tuple[str, Optional[int]]] = []
    for d in datasets:
        ipcs = sorted(int(i) for i in runs.loc[(runs["dataset"] == d) & runs["ipc"].notna(), "ipc"].unique())
        columns.extend((d, i) for i in ipcs) if ipcs else columns.append((d, None))
    stats: dict[tuple[str, str, Optional[int]], Stat] = {}
    archs: dict[tuple[str, str, Optional[int]], set] = {}
    for (label, d), grp in runs.groupby(["label", "dataset"], sort=True):
        if lm[label] == WHOLE:
            stats[(label, d, None)] = summarise(grp["accuracy"])
            archs[(label, d, None)] = set(grp["eval_arch"].astype(str).str.lower())
            continue
        for ipc, g2 in grp.groupby("ipc", sort=True):
            stats[(label, d, int(ipc))] = summarise(g2["accuracy"])
            archs[(label, d, int(ipc))] = set(g2["eval_arch"].astype(str).str.lower())
    bold: set = set()
    for col in columns:
        per = {lab: stats[(lab, *col)] for lab in labels if lm[lab] != WHOLE and (lab, *col) in stats}
        bold |= {(lab, *col) for lab in _bold(per)}
    pub = _published_lookup("main") if published else {}

    def published_for(label: str, d: str, ipc: Optional[int]) -> Optional[Published]:
        if not published or label not in lm.plain:
            return None  # only the unmodified registry method has a published number
        if archs.get((label, d, ipc)) != {"convnet"}:
            return None  # published main-table numbers are ConvNet evaluations
        for key, p in pub.items():
            if key[0] == d and key[1] == ipc and key[2] == lm[label]:
                return p
        return None

    rows: list[list[Cell]] = []
    records = []
    midrule: set[int] = set()
    for ri, label in enumerate(labels):
        row = [Cell(text=label_display(label))]
        whole = lm[label] == WHOLE
        if whole:
            midrule.add(ri)
        for d in datasets:
            dcols = [c for c in columns if c[0] == d]
            if whole:
                s = stats.get((label, d, None))
                p = published_for(label, d, None)
                cell = Cell(stat=s, published=p, show_published=published) if s else Cell(text=EMPTY)
                cell.span = len(dcols)
                row.append(cell)
                records.append(_main_record(ri, label, d, None, s, False, p))
                continue
            for col in dcols:
                s = stats.get((label, *col))
                p = published_for(label, *col)
                b = (label, *col) in bold
                row.append(Cell(stat=s, bold=b, published=p, show_published=published) if s else Cell(text=EMPTY))
                records.append(_main_record(ri, label, d, col[1], s, b, p))
        rows.append(row)
    header = ["Method"]
    subheader = ["Method"]
    groups: list[tuple[str, int]] = [("", 1)]
    for d in datasets:
        dcols = [c for c in columns if c[0] == d]
        groups.append((dataset_display(d), len(dcols)))
        for _, ipc in dcols:
            header.append(f"{dataset_display(d)} IPC {ipc if ipc is not None else '–'}")
            subheader.append(f"IPC {ipc}" if ipc is not None else "")
    data = pd.DataFrame(records)
    data["ipc"] = data["ipc"].astype("Int64")
    if not published:
        data = data.drop(columns=[c for c in data.columns if c.startswith("published") or c == "diff"])
    arch_note = (
        f"each set's training architecture ({main_arch(results.records)} for sets chosen without a network)"
        if eval_arch is None else eval_arch
    )
    notes = [
        f"Test accuracy (%) evaluated on {arch_note}: mean ± std (n runs) over all evaluation runs "
        f"(seeds × networks); {STD_NOTE}. Bold: best per column (whole-dataset row excluded; "
        f"ties on the printed value all bold). {EMPTY}: not run."
    ]
    if published:
        notes.append(
            "With published numbers: ours · published ± std [C confirmed in a cited source, "
            "R official README only, U unconfirmed recollection] · ours − published."
        )
    caption = "Test accuracy (%) of condensed sets (mean ± std over evaluation runs)"
    return Table(
        name="main",
        caption=caption,
        header=header,
        rows=rows,
        data=data,
        groups=groups,
        subheader=subheader,
        midrule_before=midrule,
        notes=notes,
    )


def _main_record(order: int, label: str, d: str, ipc: Optional[int], s: Optional[Stat], bold: bool, p: Optional[Published]) -> dict:
    return {
        "row": order,
        "method": label,
        "dataset": d,
        "ipc": ipc,
        "mean": s.mean if s else np.nan,
        "std": s.std if s else np.nan,
        "n": s.n if s else 0,
        "best": bool(bold),
        "published_mean": p.mean if p else np.nan,
        "published_std": (p.std if p and p.std is not None else np.nan),
        "published_confirmed": p.confirmed if p else "",
        "published_source": p.source if p else "",
        "diff": (s.mean - p.mean) if (s and p) else np.nan,
    }


# ----------------------------------------------------------------------------------------
# cross-architecture table
# ----------------------------------------------------------------------------------------


def has_cross(results: Results) -> bool:
    runs = results.runs
    if runs.empty:
        return False
    r = runs[runs["method"] != WHOLE]
    return bool((~_same_arch(r)).any())


def cross_table(results: Results, *, published: bool = False) -> Table:
    """Rows = (dataset, IPC, method, training architecture), columns = evaluation architectures."""
    runs = results.runs
    if runs.empty:
        raise AnalysisError("no usable records in " + ", ".join(results.stores))
    if not has_cross(results):
        raise AnalysisError(
            "no cross-architecture evaluations: every record was evaluated on its training "
            "architecture (add eval_archs to the sweep)"
        )
    runs = runs[runs["method"] != WHOLE].copy()
    runs["train_arch"] = runs["train_arch"].fillna(EMPTY).astype(str)
    archs = sorted(set(runs["eval_arch"].astype(str)), key=arch_key)
    lm = _label_methods(runs)
    pub = _published_lookup("cross") if published else {}
    rows, records, midrule = [], [], set()
    groups = sorted(
        {(d, int(i)) for d, i in zip(runs["dataset"], runs["ipc"])}, key=lambda t: (dataset_key(t[0]), t[1])
    )
    for d, ipc in groups:
        g = runs[(runs["dataset"] == d) & (runs["ipc"] == ipc)]
        crossed = g[~_same_arch(g)]
        if crossed.empty:
            continue
        keys = sorted(
            {(lab, ta) for lab, ta in zip(crossed["label"], crossed["train_arch"])},
            key=lambda k: (lm.order_key(k[0]), arch_key(k[1])),
        )
        stats = {}
        for (lab, ta, ea), gg in g.groupby(["label", "train_arch", "eval_arch"], sort=True):
            stats[(lab, ta, ea)] = summarise(gg["accuracy"])
        bold = set()
        for ea in archs:
            per = {k: stats[(*k, ea)] for k in keys if (*k, ea) in stats}
            bold |= {(*k, ea) for k in _bold(per)}
        if rows:
            midrule.add(len(rows))
        for lab, ta in keys:
            row = [Cell(text=dataset_display(d)), Cell(text=str(ipc), verbatim=True), Cell(text=label_display(lab)), Cell(text=ta)]
            for ea in archs:
                s = stats.get((lab, ta, ea))
                p = None
                if published and lab in lm.plain:
                    p = pub.get((d, ipc, lm[lab], ta.lower(), ea.lower()))
                b = (lab, ta, ea) in bold
                row.append(Cell(stat=s, bold=b, published=p, show_published=published) if s else Cell(text=EMPTY))
                rec = _main_record(len(rows), lab, d, ipc, s, b, p)
                rec.update({"train_arch": ta, "eval_arch": ea})
                records.append(rec)
            rows.append(row)
    data = pd.DataFrame(records)
    data["ipc"] = data["ipc"].astype("Int64")
    cols = ["row", "dataset", "ipc", "method", "train_arch", "eval_arch", "mean", "std", "n", "best"]
    if published:
        cols += ["published_mean", "published_std", "published_confirmed", "published_source", "diff"]
    data = data[cols]
    header = ["Dataset", "IPC", "Method", "Trained on", *archs]
    notes = [
        "Test accuracy (%) of sets condensed on the 'Trained on' network and evaluated on each "
        f"column's network: mean ± std (n runs); {STD_NOTE}. Bold: best per column within a "
        f"dataset/IPC block. {EMPTY}: not evaluated."
    ]
    return Table(
        name="cross",
        caption="Cross-architecture generalisation: test accuracy (%)",
        header=header,
        rows=rows,
        data=data,
        align="lrll" + "r" * len(archs),
        midrule_before=midrule,
        notes=notes,
    )


# ----------------------------------------------------------------------------------------
# CAFE ablation table
# ----------------------------------------------------------------------------------------

#: The CAFE paper's defaults (reference notes §1.2/§4.5): used when a record's config lacks a key.
CAFE_DEFAULTS: dict[str, Any] = {
    "layer_weights": None,  # None = the paper's 0.1/0.1/1/1 over the blocks (methods.cafe)
    "embedding_weight": 1.0,
    "discrimination_weight": 0.01,
    "dynamic_bilevel": True,
    "dsa": False,
}

#: Column label -> predicate on the (defaults-completed) config.
SWITCHES: dict[str, Callable[[dict], bool]] = {
    # Layer-wise alignment = more than one depth aligned (aligning only the last block is the
    # "without layer-wise alignment" variant).
    "Layer-wise": lambda c: _aligned_layers(c.get("layer_weights")) >= 2,
    "Embedding": lambda c: _f(c.get("embedding_weight")) > 0,
    "Discrimination": lambda c: _f(c.get("discrimination_weight")) > 0,
    "Dynamic bi-level": lambda c: bool(c.get("dynamic_bilevel")),
    "DSA": lambda c: bool(c.get("dsa")),
}
_SWITCH_KEYS = {"layer_weights", "embedding_weight", "discrimination_weight", "dynamic_bilevel", "dsa"}


def _aligned_layers(spec: Any) -> int:
    """How many layers a CAFE ``layer_weights`` value aligns with a non-zero weight.

    Accepts what :class:`methods.cafe.CAFEConfig` accepts, as it reads back from JSON: None
    (the paper's default: every block, so "many"), a mapping ``{layer: weight}``, a list of
    ``[layer, weight]`` pairs, or a plain list of weights."""
    if spec is None:
        return 4
    if isinstance(spec, dict):
        weights = list(spec.values())
    elif isinstance(spec, (list, tuple)):
        weights = [w[1] if isinstance(w, (list, tuple)) and len(w) == 2 else w for w in spec]
    else:
        weights = [spec]
    return sum(1 for w in weights if _f(w) > 0)


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def cafe_switches(method_config: dict, overrides: Optional[dict] = None, method: str = "cafe") -> dict[str, bool]:
    """The ablation switches of a CAFE variant derived from its recorded config."""
    cfg = dict(CAFE_DEFAULTS)
    cfg.update(method_config or {})
    cfg.update(overrides or {})
    if method == "cafe_dsa":
        cfg["dsa"] = True
    return {name: pred(cfg) for name, pred in SWITCHES.items()}


def _other_settings(overrides: dict) -> str:
    parts = [
        f"{k}={_short(v)}" for k, v in sorted(overrides.items()) if k not in _SWITCH_KEYS and k not in NON_VARIANT_KEYS
    ]
    return ", ".join(parts) if parts else ""


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_short(x) for x in v) + "]"
    return str(v)


def _cafe_runs(results: Results) -> pd.DataFrame:
    runs = results.runs
    if runs.empty:
        return runs
    r = runs[runs["method"].isin(["cafe", "cafe_dsa"])]
    return r[_same_arch(r)]


def has_ablation(results: Results) -> bool:
    r = _cafe_runs(results)
    if r.empty:
        return False
    return bool((r.groupby(["dataset", "ipc"])["label"].nunique() >= 2).any())


def ablation_table(results: Results) -> Table:
    """One row per CAFE variant label, component switches as ✓/✗, Δ against full CAFE."""
    runs = _cafe_runs(results)
    if results.runs.empty:
        raise AnalysisError("no usable records in " + ", ".join(results.stores))
    if not has_ablation(results):
        raise AnalysisError(
            "no CAFE ablation in the records: need at least two CAFE variants (labels) on one "
            "dataset/IPC, e.g. {method: cafe, discrimination_weight: 0, label: w/o discrimination}"
        )
    rows, records, midrule = [], [], set()
    groups = sorted({(d, int(i)) for d, i in zip(runs["dataset"], runs["ipc"])}, key=lambda t: (dataset_key(t[0]), t[1]))
    for d, ipc in groups:
        g = runs[(runs["dataset"] == d) & (runs["ipc"] == ipc)]
        if g["label"].nunique() < 2:
            continue
        info = {}
        for lab, gg in g.groupby("label", sort=True):
            first = gg.sort_values(["seed", "cell_id"], kind="stable").iloc[0]
            overrides = json.loads(first["overrides"])
            info[lab] = {
                "stat": summarise(gg["accuracy"]),
                "method": first["method"],
                "overrides": overrides,
                "plain": bool(gg["plain"].all()),
                "switches": cafe_switches(json.loads(first["method_config"]), overrides, first["method"]),
            }
        plain = [lab for lab, v in info.items() if v["method"] == "cafe" and v["plain"]]
        ref = "cafe" if "cafe" in plain else (sorted(plain)[0] if plain else None)

        def order(lab: str) -> tuple:
            if lab == ref:
                return (0, "")
            if info[lab]["method"] == "cafe_dsa" and info[lab]["plain"]:
                return (1, lab)
            return (2, lab)

        if rows:
            midrule.add(len(rows))
        for lab in sorted(info, key=order):
            v = info[lab]
            s: Stat = v["stat"]
            delta = None if ref is None else s.mean - info[ref]["stat"].mean
            row = [Cell(text=dataset_display(d)), Cell(text=str(ipc), verbatim=True), Cell(text=label_display(lab))]
            row += [Cell(switch=v["switches"][k]) for k in SWITCHES]
            other = _other_settings(v["overrides"])
            row.append(Cell(text=other or EMPTY))
            row.append(Cell(stat=s))
            row.append(Cell(delta=delta) if delta is not None else Cell(text=EMPTY))
            rec = {"dataset": d, "ipc": ipc, "variant": lab, "reference": lab == ref}
            rec.update({k.lower().replace(" ", "_").replace("-", "_"): v["switches"][k] for k in SWITCHES})
            rec.update({"other": other, "mean": s.mean, "std": s.std, "n": s.n, "delta": delta if delta is not None else np.nan})
            records.append(rec)
            rows.append(row)
    header = ["Dataset", "IPC", "Variant", *SWITCHES, "Other settings", "Accuracy", "Δ"]
    notes = [
        "CAFE variants: ✓/✗ = component on/off, read from each record's method config (missing keys "
        "take the paper's defaults). Layer-wise = more than one depth aligned. Accuracy: mean ± std "
        f"(n runs) on the training architecture; {STD_NOTE}. Δ = variant − full CAFE (method cafe "
        f"without overrides) on the same dataset/IPC; {EMPTY} when that row is absent."
    ]
    return Table(
        name="ablation",
        caption="CAFE ablation: components and test accuracy (%)",
        header=header,
        rows=rows,
        data=pd.DataFrame(records),
        align="lrl" + "c" * len(SWITCHES) + "lrr",
        midrule_before=midrule,
        notes=notes,
        needs_amssymb=True,
    )


# ----------------------------------------------------------------------------------------
# cost table
# ----------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return EMPTY
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_mem(mb: float) -> str:
    if mb is None or (isinstance(mb, float) and math.isnan(mb)):
        return EMPTY
    if mb < 1024:
        return f"{mb:.1f} MB"
    return f"{mb / 1024:.1f} GB"


def cost_frame(results: Results) -> pd.DataFrame:
    """Per (dataset, IPC, label): mean condensation time and max peak memory over cells,
    mean evaluation time per network and max evaluation peak memory over records, and the mean
    accuracy on the training architecture (as in the main table)."""
    rec = results.records
    if rec.empty:
        raise AnalysisError("no usable records in " + ", ".join(results.stores))
    rec = rec.copy()
    rec["eval_time_per_net_s"] = rec["cost_eval_wall_time_s"] / rec["runs"]
    rec["hardware"] = [f"{h or 'unknown host'} ({dv or 'unknown device'})" for h, dv in zip(rec["host"], rec["device"])]
    out = []
    same_arch_runs = results.runs[_same_arch(results.runs)]  # accuracy as in the main table
    for (d, ipc, lab), g in rec.groupby(["dataset", rec["ipc"].fillna(-1), "label"], sort=True):
        cells = g.drop_duplicates(["store", "cell_id"])
        runs = same_arch_runs[(same_arch_runs["dataset"] == d) & (same_arch_runs["label"] == lab)]
        runs = runs[runs["ipc"].fillna(-1) == ipc]
        method = sorted(set(g["method"]), key=method_rank)[0]
        out.append(
            {
                "dataset": d,
                "ipc": None if ipc == -1 else int(ipc),
                "method": lab,
                "_method": method,
                "_plain": bool(g["plain"].all()) if "plain" in g else True,
                "cells": len(cells),
                "condense_time_s": float(np.nanmean(cells["cost_condense_wall_time_s"])) if cells["cost_condense_wall_time_s"].notna().any() else np.nan,
                "condense_peak_memory_mb": float(np.nanmax(cells["cost_condense_peak_memory_mb"])) if cells["cost_condense_peak_memory_mb"].notna().any() else np.nan,
                "eval_time_per_net_s": float(np.nanmean(g["eval_time_per_net_s"])) if g["eval_time_per_net_s"].notna().any() else np.nan,
                "eval_peak_memory_mb": float(np.nanmax(g["cost_eval_peak_memory_mb"])) if g["cost_eval_peak_memory_mb"].notna().any() else np.nan,
                "accuracy_mean": float(runs["accuracy"].mean()) if not runs.empty else np.nan,
                "hardware": "; ".join(sorted(set(g["hardware"]))),
            }
        )
    df = pd.DataFrame(out)
    df["_order"] = [
        (dataset_key(d), (10**9 if ipc is None or pd.isna(ipc) else int(ipc)), row_order_key(lab, m, p))
        for d, ipc, lab, m, p in zip(df["dataset"], df["ipc"], df["method"], df["_method"], df["_plain"])
    ]
    df = df.sort_values("_order", kind="stable").drop(columns=["_order"]).reset_index(drop=True)
    df["ipc"] = df["ipc"].astype("Int64")
    return df


def cost_table(results: Results) -> Table:
    """Condensation time, evaluation time and peak memory per method and IPC, hardware named."""
    df = cost_frame(results)
    hardware = sorted(set("; ".join(df["hardware"]).split("; ")))
    multi = len(hardware) > 1
    rows, midrule, prev = [], set(), None
    for _, r in df.iterrows():
        if prev is not None and r["dataset"] != prev:
            midrule.add(len(rows))
        prev = r["dataset"]
        ipc = "–" if pd.isna(r["ipc"]) else str(int(r["ipc"]))
        row = [
            Cell(text=dataset_display(r["dataset"])),
            Cell(text=ipc, verbatim=True),
            Cell(text=label_display(r["method"])),
            Cell(text=str(r["cells"]), verbatim=True),
            Cell(text=fmt_time(r["condense_time_s"]), verbatim=True),
            Cell(text=fmt_mem(r["condense_peak_memory_mb"]), verbatim=True),
            Cell(text=fmt_time(r["eval_time_per_net_s"]), verbatim=True),
            Cell(text=fmt_mem(r["eval_peak_memory_mb"]), verbatim=True),
        ]
        if multi:
            row.append(Cell(text=r["hardware"]))
        rows.append(row)
    header = ["Dataset", "IPC", "Method", "Cells", "Condense time", "Condense peak mem.", "Eval time / net", "Eval peak mem."]
    if multi:
        header.append("Hardware")
    data = df.drop(columns=["_method", "_plain"])
    notes = [
        "Hardware: " + "; ".join(hardware) + ". Condense time: mean wall time per cell (seed); "
        "peak memory: maximum over cells/records; eval time: mean wall time per trained evaluation "
        f"network. {EMPTY}: not measured (no condensation for the whole dataset)."
    ]
    return Table(
        name="cost",
        caption="Cost of condensation and evaluation",
        header=header,
        rows=rows,
        data=data,
        align="lrlrrrrr" + ("l" if multi else ""),
        midrule_before=midrule,
        notes=notes,
    )


def build_table(kind: str, results: Results, *, published: bool = False, eval_arch: Optional[str] = None) -> Table:
    if kind == "main":
        return main_table(results, published=published, eval_arch=eval_arch)
    if kind == "cross":
        return cross_table(results, published=published)
    if kind == "ablation":
        return ablation_table(results)
    if kind == "cost":
        return cost_table(results)
    raise AnalysisError(f"unknown table {kind!r}; choose one of {', '.join(TABLES)}")
