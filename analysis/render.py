"""The table model every table is built as, and its three renderings.

A :class:`Table` is a list of rows of :class:`Cell` objects plus a tidy :class:`pandas.DataFrame`
(the CSV). :meth:`Table.render` writes Markdown, LaTeX (booktabs; ``amssymb`` when a table
has ✓/✗ switches) or CSV. Conventions shared by every table:

* Accuracy is the test accuracy in percent, printed with one decimal.
* ``mean ± std`` is taken over *all* evaluation runs of a cell (seeds x evaluation networks).
  The std is the **population** standard deviation (``ddof=0``, numpy's default ``np.std``),
  which is what the methods' reference code (``main.py`` of each paper's release) reports.
* ``(n)`` after a cell is the number of evaluation runs it pools.
* Floats use fixed formats, so output is deterministic.

Free text (labels, captions) is escaped for each format (:func:`md_escape`, :func:`tex_escape`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import pandas as pd

from analysis.load import AnalysisError

if TYPE_CHECKING:
    from analysis.published import Published

FORMATS = ("md", "latex", "csv")
EMPTY = "–"
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


def fmt1(x: float) -> str:
    """One decimal; negative zero prints as 0.0."""
    s = f"{x:.1f}"
    return "0.0" if s == "-0.0" else s


def fmt_signed(x: float) -> str:
    s = fmt1(x)
    return s if s.startswith("-") or s == "0.0" else "+" + s


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
    published: Optional["Published"] = None
    show_published: bool = False
    delta: Optional[float] = None  # explicit signed difference column (ablation)
    switch: Optional[bool] = None
    span: int = 1  # LaTeX: \multicolumn over this many columns (md/csv repeat the cell)
    verbatim: bool = False  # text is already formatted for every output (numbers, units)
    verdict: Optional[str] = None  # shown after the published number (analysis.verdict)

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
            if self.verdict:
                core += " · " + md_escape(self.verdict)
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
            if self.verdict:
                core += r"\,{\scriptsize " + tex_escape(self.verdict) + "}"
        return core


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
