"""The paper tables of a loaded results store: main, cross-architecture and cost (the ablation

Why ~530 lines: the main, cross-architecture and cost tables share the row ordering, the
bold-best rule and the cell formatting; the other tables (ablation, scores, fidelity) have their
own modules.
table is :mod:`analysis.ablation`); :func:`build_table` picks one by name.

Everything a table says about a method comes from the records (:mod:`analysis.load`): rows are
ordered by the registry order the records carry (``method_order``; the method as published
first, then variants of it, the whole dataset last), named by the recorded display name, and
grouped by family (LaTeX rules between families). Columns are datasets in the recorded dataset
order. Bold marks the best mean of a column, compared on the printed (one-decimal) value so
that equal printed numbers are all bold; the whole-dataset row never competes.

Every table built from runs under more than one evaluation plan says so in a note naming the
differing fields (:func:`analysis.plans.audit_note`); the ``scores`` table
(:mod:`analysis.scores`) compares each set with random selection under its own plan.

The main table only pools evaluations on the training architecture (``eval_arch ==
train_arch``, the papers' Table 1 protocol) unless ``eval_arch`` is given; the
cross-architecture table shows the rest. Statistics and rendering: :mod:`analysis.render`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from analysis.load import WHOLE, AnalysisError, Results, arch_key, main_arch
from analysis.plans import audit_note
from analysis.published import Published, published_lookup
from analysis.render import EMPTY, STD_NOTE, Cell, Stat, Table, fmt_mem, fmt_time, summarise
from analysis.verdict import VERDICT_NOTE, Budget, group_budget, record_budgets, verdict

TABLES = ("main", "cross", "ablation", "cost", "scores", "fidelity", "curve")


# ----------------------------------------------------------------------------------------
# shared selection helpers
# ----------------------------------------------------------------------------------------


def arch_sort_key(results: Results) -> Callable[[str], tuple]:
    """Architecture order of the tables: the store's main training architecture first, then
    alphabetical."""
    home = main_arch(results.records) if not results.records.empty else None
    return lambda name: arch_key(name, home)


def same_arch(runs: pd.DataFrame) -> pd.Series:
    """Evaluations on the set's own architecture (``home_arch``: the training architecture, or
    the store's main one for sets condensed without a network; see ``load.main_arch``)."""
    home = runs["home_arch"].astype(str).str.lower()
    return runs["eval_arch"].astype(str).str.lower() == home


def select_main_runs(results: Results, eval_arch: Optional[str] = None) -> pd.DataFrame:
    runs = results.runs
    if runs.empty:
        raise AnalysisError("no usable records in " + ", ".join(results.stores))
    if eval_arch is None:
        sel = runs[same_arch(runs)]
    else:
        sel = runs[runs["eval_arch"].astype(str).str.lower() == eval_arch.lower()]
        if sel.empty:
            archs = ", ".join(sorted(set(runs["eval_arch"].astype(str)), key=arch_sort_key(results)))
            raise AnalysisError(f"no evaluations on architecture {eval_arch!r}; the records have: {archs}")
    return sel


def row_order_key(label: str, method: str, rank: int, plain: bool) -> tuple:
    """Plain registry methods (whatever their label) in registry order, then variants (by
    their method's order, then label), the whole-dataset row last."""
    if method == WHOLE:
        return (2, 0, label)
    return (0 if plain else 1, rank, label)


class LabelInfo(dict):
    """label -> registry name of its row (the first in row order when a label mixes methods),
    with ``display`` (label -> printed name), ``rank`` (label -> registry order), ``family``
    and ``plain``: the labels whose every record runs the registry entry without overrides."""

    def __init__(self, frame: pd.DataFrame):
        super().__init__()
        self.plain: set[str] = set()
        self.display: dict[str, str] = {}
        self.rank: dict[str, int] = {}
        self.family: dict[str, str] = {}
        for label, grp in frame.groupby("label", sort=True):
            lab = str(label)
            first = grp.sort_values(["method_order", "method"], kind="stable").iloc[0]
            self[lab] = str(first["method"])
            self.rank[lab] = int(first["method_order"])
            self.display[lab] = str(first["label_display"])
            self.family[lab] = str(first["family"]) if "family" in grp else ""
            if bool(grp["plain"].all()):
                self.plain.add(lab)

    def order_key(self, label: str) -> tuple:
        return row_order_key(label, self[label], self.rank[label], label in self.plain)

    def group(self, label: str) -> tuple:
        """The row group of a label: the whole dataset, variants, or one family of methods
        as published."""
        if self[label] == WHOLE:
            return ("whole",)
        return ("plain", self.family[label]) if label in self.plain else ("variants",)

    def ordered(self) -> list[str]:
        return sorted(self, key=self.order_key)


def best_keys(stats: dict[Any, Stat]) -> set:
    """The keys whose printed mean is the best (all of them on a tie)."""
    if not stats:
        return set()
    best = max(s.key for s in stats.values())
    return {k for k, s in stats.items() if s.key == best}


# ----------------------------------------------------------------------------------------
# main table
# ----------------------------------------------------------------------------------------


def main_table(results: Results, *, published: bool = False, eval_arch: Optional[str] = None) -> Table:
    """Rows = methods, columns = dataset x IPC, cells = mean ± std (n) over all runs.

    With ``published``, a cell with a published number also shows the number, the difference
    and the verdict of :mod:`analysis.verdict` (reproduced / above / below / budget differs; the
    CSV gets ``verdict`` and ``budget`` columns, the latter the reason a budget differs)."""
    runs = select_main_runs(results, eval_arch)
    if runs.empty:
        raise AnalysisError("no evaluation on the training architecture in the records; try --eval-arch")
    lm = LabelInfo(runs)
    labels = lm.ordered()
    datasets = sorted(set(runs["dataset"]), key=results.dataset_key)
    columns: list[tuple[str, Optional[int]]] = []
    for d in datasets:
        ipcs = sorted(int(i) for i in runs.loc[(runs["dataset"] == d) & runs["ipc"].notna(), "ipc"].unique())
        columns.extend((d, i) for i in ipcs) if ipcs else columns.append((d, None))
    stats: dict[tuple[str, str, Optional[int]], Stat] = {}
    archs: dict[tuple[str, str, Optional[int]], set] = {}
    budgets: dict[tuple[str, str, Optional[int]], Budget] = {}
    rec_budgets = record_budgets(results) if published else {}
    for (label, d), grp in runs.groupby(["label", "dataset"], sort=True):
        if lm[label] == WHOLE:
            stats[(label, d, None)] = summarise(grp["accuracy"])
            archs[(label, d, None)] = set(grp["eval_arch"].astype(str).str.lower())
            if published:
                budgets[(label, d, None)] = group_budget(results, grp, rec_budgets)
            continue
        for ipc, g2 in grp.groupby("ipc", sort=True):
            stats[(label, d, int(ipc))] = summarise(g2["accuracy"])
            archs[(label, d, int(ipc))] = set(g2["eval_arch"].astype(str).str.lower())
            if published:
                budgets[(label, d, int(ipc))] = group_budget(results, g2, rec_budgets)
    bold: set = set()
    for col in columns:
        per = {lab: stats[(lab, *col)] for lab in labels if lm[lab] != WHOLE and (lab, *col) in stats}
        bold |= {(lab, *col) for lab in best_keys(per)}
    pub = published_lookup("main") if published else {}

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
        row = [Cell(text=lm.display[label])]
        whole = lm[label] == WHOLE
        if ri and lm.group(label) != lm.group(labels[ri - 1]):
            midrule.add(ri)  # LaTeX: a rule between method families, before variants and the whole dataset
        for d in datasets:
            dcols = [c for c in columns if c[0] == d]
            if whole:
                s = stats.get((label, d, None))
                p = published_for(label, d, None)
                v, why = _verdict(s, p, budgets.get((label, d, None)))
                cell = Cell(stat=s, published=p, show_published=published, verdict=v) if s else Cell(text=EMPTY)
                cell.span = len(dcols)
                row.append(cell)
                records.append(_main_record(ri, label, d, None, s, False, p, v, why))
                continue
            for col in dcols:
                s = stats.get((label, *col))
                p = published_for(label, *col)
                b = (label, *col) in bold
                v, why = _verdict(s, p, budgets.get((label, *col)))
                row.append(Cell(stat=s, bold=b, published=p, show_published=published, verdict=v) if s else Cell(text=EMPTY))
                records.append(_main_record(ri, label, d, col[1], s, b, p, v, why))
        rows.append(row)
    header = ["Method"]
    subheader = ["Method"]
    groups: list[tuple[str, int]] = [("", 1)]
    for d in datasets:
        dcols = [c for c in columns if c[0] == d]
        groups.append((results.dataset_display(d), len(dcols)))
        for _, ipc in dcols:
            header.append(f"{results.dataset_display(d)} IPC {ipc if ipc is not None else '–'}")
            subheader.append(f"IPC {ipc}" if ipc is not None else "")
    data = pd.DataFrame(records)
    data["ipc"] = data["ipc"].astype("Int64")
    if not published:
        data = data.drop(columns=[c for c in data.columns if c.startswith("published") or c in ("diff", "verdict", "budget")])
    arch_note = (
        f"each set's training architecture ({main_arch(results.records)} for sets chosen without a network)"
        if eval_arch is None else eval_arch
    )
    notes = [
        f"Test accuracy (%) evaluated on {arch_note}: mean ± std (n runs) over all evaluation runs "
        f"(seeds × networks); {STD_NOTE}. Bold: best per column (whole-dataset row excluded; "
        f"ties on the printed value all bold). {EMPTY}: not run."
    ]
    audit = audit_note(runs)
    if audit:
        notes.append(audit)
    if published and any(r["published_confirmed"] for r in records):
        notes.append(
            "With published numbers: ours · published ± std [C confirmed in a cited source, "
            "R official README only, U unconfirmed recollection] · ours − published · verdict."
        )
        notes.append(VERDICT_NOTE)
    elif published:
        notes.append("No published number matches these datasets, IPCs and methods (analysis/data/published.csv).")
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


def _verdict(s: Optional[Stat], p: Optional[Published], budget: Optional[Budget]) -> tuple[str, str]:
    """(verdict, budget reason) of a main-table cell; empty strings without a published number."""
    if s is None or p is None or budget is None:
        return "", ""
    return verdict(s, p, budget), budget.reason


def _main_record(order: int, label: str, d: str, ipc: Optional[int], s: Optional[Stat], bold: bool,
                 p: Optional[Published], v: str = "", why: str = "") -> dict:
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
        "verdict": v,
        "budget": why,
    }


# ----------------------------------------------------------------------------------------
# cross-architecture table
# ----------------------------------------------------------------------------------------


def has_cross(results: Results) -> bool:
    runs = results.runs
    if runs.empty:
        return False
    r = runs[runs["method"] != WHOLE]
    return bool((~same_arch(r)).any())


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
    akey = arch_sort_key(results)
    archs = sorted(set(runs["eval_arch"].astype(str)), key=akey)
    lm = LabelInfo(runs)
    pub = published_lookup("cross") if published else {}
    rows, records, midrule = [], [], set()
    groups = sorted(
        {(d, int(i)) for d, i in zip(runs["dataset"], runs["ipc"])}, key=lambda t: (results.dataset_key(t[0]), t[1])
    )
    for d, ipc in groups:
        g = runs[(runs["dataset"] == d) & (runs["ipc"] == ipc)]
        crossed = g[~same_arch(g)]
        if crossed.empty:
            continue
        keys = sorted(
            {(lab, ta) for lab, ta in zip(crossed["label"], crossed["train_arch"])},
            key=lambda k: (lm.order_key(k[0]), akey(k[1])),
        )
        stats = {}
        for (lab, ta, ea), gg in g.groupby(["label", "train_arch", "eval_arch"], sort=True):
            stats[(lab, ta, ea)] = summarise(gg["accuracy"])
        bold = set()
        for ea in archs:
            per = {k: stats[(*k, ea)] for k in keys if (*k, ea) in stats}
            bold |= {(*k, ea) for k in best_keys(per)}
        if rows:
            midrule.add(len(rows))
        for lab, ta in keys:
            row = [Cell(text=results.dataset_display(d)), Cell(text=str(ipc), verbatim=True), Cell(text=lm.display[lab]), Cell(text=ta)]
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
    audit = audit_note(runs)
    if audit:
        notes.append(audit)
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
# cost table
# ----------------------------------------------------------------------------------------


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
    lm = LabelInfo(rec)
    out = []
    same_arch_runs = results.runs[same_arch(results.runs)]  # accuracy as in the main table
    for (d, ipc, lab), g in rec.groupby(["dataset", rec["ipc"].fillna(-1), "label"], sort=True):
        cells = g.drop_duplicates(["store", "cell_id"])
        spent = _mean_of(cells, SHARED_STAGE_SPENT)
        once = _mean_of(cells, SHARED_STAGE_ONCE)
        runs = same_arch_runs[(same_arch_runs["dataset"] == d) & (same_arch_runs["label"] == lab)]
        runs = runs[runs["ipc"].fillna(-1) == ipc]
        out.append(
            {
                "dataset": d,
                "ipc": None if ipc == -1 else int(ipc),
                "method": lab,
                "_method": lm[lab],
                "_display": lm.display[lab],
                "_order": lm.order_key(lab),
                "cells": len(cells),
                "condense_time_s": float(np.nanmean(cells["cost_condense_wall_time_s"])) if cells["cost_condense_wall_time_s"].notna().any() else np.nan,
                "shared_stage_spent_s": spent,
                "shared_stage_once_s": once,
                "own_condense_time_s": (float(np.nanmean(cells["cost_condense_wall_time_s"])) - (0.0 if np.isnan(spent) else spent))
                if cells["cost_condense_wall_time_s"].notna().any() else np.nan,
                "condense_peak_memory_mb": float(np.nanmax(cells["cost_condense_peak_memory_mb"])) if cells["cost_condense_peak_memory_mb"].notna().any() else np.nan,
                "eval_time_per_net_s": float(np.nanmean(g["eval_time_per_net_s"])) if g["eval_time_per_net_s"].notna().any() else np.nan,
                "eval_peak_memory_mb": float(np.nanmax(g["cost_eval_peak_memory_mb"])) if g["cost_eval_peak_memory_mb"].notna().any() else np.nan,
                "accuracy_mean": float(runs["accuracy"].mean()) if not runs.empty else np.nan,
                "hardware": "; ".join(sorted(set(g["hardware"]))),
                "set_reused": bool(REUSED in cells and cells[REUSED].notna().all()),
            }
        )
    df = pd.DataFrame(out)
    df["_sort"] = [
        (results.dataset_key(d), (10**9 if ipc is None or pd.isna(ipc) else int(ipc)), o)
        for d, ipc, o in zip(df["dataset"], df["ipc"], df["_order"])
    ]
    df = df.sort_values("_sort", kind="stable").drop(columns=["_sort"]).reset_index(drop=True)
    df["ipc"] = df["ipc"].astype("Int64")
    return df


REUSED = "cost_set_reused_from"
"""The cell whose stored set a cell copied instead of condensing it again (cells that differ
only in their evaluation, ``benchmarks.worker``); its condense time is that cell's."""

SHARED_STAGE = "feature network"
"""The stage several methods share through the run cache (herding, k-center and the forgetting
coreset train one feature network per dataset/seed, ``methods.coreset_features``)."""
SHARED_STAGE_SPENT = "cost_feature_train_time_s"
"""Seconds a cell spent training the shared stage (0 when it came from the cache)."""
SHARED_STAGE_ONCE = "cost_feature_net_train_time_s"
"""Seconds the shared stage took when it was trained (recorded by every cell that uses it)."""


def _mean_of(frame: pd.DataFrame, column: str) -> float:
    if column not in frame or not frame[column].notna().any():
        return np.nan
    return float(np.nanmean(frame[column]))


def shared_stage_note(df: pd.DataFrame) -> Optional[str]:
    """A note naming the shared stage's one-time cost and the rows whose times include it."""
    if "shared_stage_once_s" not in df or not df["shared_stage_once_s"].notna().any():
        return None
    rows = df[df["shared_stage_once_s"].notna()]
    names = ", ".join(dict.fromkeys(str(n) for n in rows["_display"]))
    once = float(rows["shared_stage_once_s"].max())
    return (f"Shared stage: the {SHARED_STAGE} that {names} share costs {fmt_time(once)} once per dataset and "
            "seed; a condense time includes it only in the cell that trained it (the others load it from the "
            "run cache).")


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
            Cell(text=results.dataset_display(r["dataset"])),
            Cell(text=ipc, verbatim=True),
            Cell(text=r["_display"]),
            Cell(text=str(r["cells"]), verbatim=True),
            Cell(text=fmt_time(r["condense_time_s"]) + (" (shared)" if r["set_reused"] else ""), verbatim=True),
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
    data = df.drop(columns=[c for c in df.columns if c.startswith("_") or c.startswith("shared_stage")
                            or c == "own_condense_time_s"])
    notes = [
        "Hardware: " + "; ".join(hardware) + ". Condense time: mean wall time per cell (seed); "
        "peak memory: maximum over cells/records; eval time: mean wall time per trained evaluation "
        f"network. {EMPTY}: not measured (no condensation for the whole dataset)."
    ]
    shared = shared_stage_note(df)
    if shared:
        notes.append(shared)
    if df["set_reused"].any():
        names = ", ".join(dict.fromkeys(str(n) for n in df.loc[df["set_reused"], "_display"]))
        notes.append(f"(shared): {names} evaluate a set that another row's cell condensed (the same method, "
                     "overrides, seed and budget; only the evaluation differs); its condensation ran once and "
                     "its time is that cell's.")
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


def build_table(kind: str, results: Results, *, published: bool = False, eval_arch: Optional[str] = None,
                include_all: bool = False) -> Table:
    """The table ``kind`` (one of :data:`TABLES`) of ``results`` (``include_all``: the fidelity
    table also lists the cells whose budget differs from the paper's)."""
    if kind == "main":
        return main_table(results, published=published, eval_arch=eval_arch)
    if kind == "cross":
        return cross_table(results, published=published)
    if kind == "ablation":
        from analysis.ablation import ablation_table

        return ablation_table(results)
    if kind == "cost":
        return cost_table(results)
    if kind == "scores":
        from analysis.scores import scores_table

        return scores_table(results, eval_arch=eval_arch)
    if kind == "fidelity":
        from analysis.fidelity import fidelity_table

        return fidelity_table(results, include_all=include_all)
    if kind == "curve":
        from analysis.fidelity import curve_table

        return curve_table(results)
    raise AnalysisError(f"unknown table {kind!r}; choose one of {', '.join(TABLES)}")
