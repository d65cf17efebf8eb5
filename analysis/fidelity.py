"""Fidelity and learning-curve tables: did our runs at the papers' budgets reproduce them, and
how does a learned set approach the published number as its run goes on (issue 15).

``fidelity`` (:func:`fidelity_table`): one row per (dataset, IPC, method as published) whose
cells ran at the paper's budget (:func:`analysis.verdict.paper_budget`) and have a published
number (:mod:`analysis.published`; ConvNet evaluations, as the papers' Table 1). Columns: ours
(mean ± std over every evaluation run), the number of sets (distinct seeds) and of trained
evaluation networks (accuracies), the published mean ± std with its grade, the difference, the
verdict (:func:`analysis.verdict.verdict`) and the wall time the row cost: the sum over its
cells of the condensation wall time plus the evaluation wall time of the records shown
(``cost.condense_wall_time_s`` + ``cost.eval_wall_time_s``). With ``include_all`` the cells whose
budget differs are listed too, one row per distinct reason.

``curve`` (:func:`curve_table`, figure :func:`analysis.figures.curve_figure`): the curve records
of ``<out>/curves/`` (the set a cell's run held after N iterations, evaluated like the final
set) plus, as the last point, the cell's normal record at its budget (the cell's
``iterations``, or the ``method_config["iterations"]`` the method recorded when the cell ran
the default). One row per (dataset, IPC, method label, evaluation architecture); a column per
iteration: mean ± std (n) pooled over the cells' seeds; the published number (when one matches
the row) last.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pandas as pd

from analysis.load import AnalysisError, Results
from analysis.published import Published, published_lookup
from analysis.render import EMPTY, STD_NOTE, Cell, Stat, Table, fmt1, fmt_signed, fmt_time, summarise
from analysis.tables import LabelInfo, arch_sort_key, select_main_runs
from analysis.verdict import VERDICT_NOTE, Budget, combined_se, record_budgets, verdict

PUBLISHED_ARCH = "convnet"
"""The evaluation architecture of the papers' main-table numbers."""


def find_published(pub: dict[tuple, Published], dataset: str, ipc: Optional[int], method: str) -> Optional[Published]:
    """The published main-table number of (dataset, IPC, registry method), or None."""
    for key, p in pub.items():
        if key[0] == dataset and key[1] == ipc and key[2] == method:
            return p
    return None


def _ipc(value: Any) -> Optional[int]:
    return None if value is None or pd.isna(value) else int(value)


def _pub_text(p: Published) -> str:
    std = "" if p.std is None or np.isnan(p.std) else f" ± {fmt1(p.std)}"
    return f"{fmt1(p.mean)}{std} [{p.confirmed}]"


def _stat_text(s: Stat) -> str:
    return f"{fmt1(s.mean)} ± {fmt1(s.std)}"


def _wall_time(results: Results, runs: pd.DataFrame) -> tuple[float, float]:
    """(condense seconds summed over the cells, eval seconds summed over the records) behind
    ``runs``; NaN where no record measured it."""
    rec = results.records
    keys = set(zip(runs["store"], runs["cell_id"], runs["eval_arch"]))
    mine = rec[[k in keys for k in zip(rec["store"], rec["cell_id"], rec["eval_arch"])]]
    cells = mine.drop_duplicates(["store", "cell_id"])
    cond = cells["cost_condense_wall_time_s"]
    ev = mine["cost_eval_wall_time_s"]
    return (float(np.nansum(cond)) if cond.notna().any() else np.nan,
            float(np.nansum(ev)) if ev.notna().any() else np.nan)


# ----------------------------------------------------------------------------------------
# fidelity table
# ----------------------------------------------------------------------------------------


def fidelity_frame(results: Results, *, include_all: bool = False) -> pd.DataFrame:
    """The fidelity table's rows as a tidy frame (module doc), in table order."""
    runs = select_main_runs(results)
    if runs.empty:
        raise AnalysisError("no evaluation on the training architecture in the records")
    lm = LabelInfo(runs)
    pub = published_lookup("main")
    budgets = record_budgets(results)
    runs = runs.copy()
    keys = [(str(s), str(c), _ipc(i)) for s, c, i in zip(runs["store"], runs["cell_id"], runs["iterations"])]
    runs["_at"] = [budgets.get(k, Budget(False, "record not loaded")).at_paper for k in keys]
    runs["_why"] = [budgets.get(k, Budget(False, "record not loaded")).reason for k in keys]
    runs["_ipc"] = runs["ipc"].fillna(-1).astype(int)
    out = []
    for (d, ipc, label, at, why), g in runs.groupby(["dataset", "_ipc", "label", "_at", "_why"], sort=True):
        lab = str(label)
        if not (at or include_all):
            continue  # a variant (config overrides) is never at the paper's budget: its reason names them
        if set(g["eval_arch"].astype(str).str.lower()) != {PUBLISHED_ARCH}:
            continue
        ipc_v = None if ipc == -1 else int(ipc)
        p = find_published(pub, str(d), ipc_v, lm[lab])
        if p is None:
            continue
        s = summarise(g["accuracy"])
        b = Budget(bool(at), str(why))
        cond, ev = _wall_time(results, g)
        wall = np.nan if np.isnan(cond) and np.isnan(ev) else float(np.nansum([cond, ev]))
        out.append({
            "dataset": str(d), "ipc": ipc_v, "method": lab, "mean": s.mean, "std": s.std,
            "n_sets": int(g[["store", "seed"]].drop_duplicates().shape[0]), "n_networks": s.n,
            "published_mean": p.mean, "published_std": np.nan if p.std is None else p.std,
            "published_confirmed": p.confirmed, "published_source": p.source,
            "diff": s.mean - p.mean, "se_combined": combined_se(s, p), "verdict": verdict(s, p, b),
            "budget": b.reason, "condense_time_s": cond, "eval_time_s": ev, "wall_time_s": wall,
            "_display": lm.display[lab], "_pub": p, "_stat": s,
            "_sort": (results.dataset_key(str(d)), 10**9 if ipc_v is None else ipc_v, lm.order_key(lab), not at, str(why)),
        })
    if not out:
        if include_all:
            raise AnalysisError("no cell has a published number (analysis/data/published.csv) on a ConvNet "
                                "evaluation of the method as published")
        raise AnalysisError("no cell ran at the paper's budget with a published number; "
                            "--all lists the cells whose budget differs, with the reason")
    df = pd.DataFrame(out).sort_values("_sort", kind="stable").reset_index(drop=True)
    df["ipc"] = df["ipc"].astype("Int64")
    return df


def fidelity_table(results: Results, *, include_all: bool = False) -> Table:
    """Cells at the paper's budget with a published number, their verdict and cost (module doc)."""
    df = fidelity_frame(results, include_all=include_all)
    rows, midrule, prev = [], set(), None
    for _, r in df.iterrows():
        if prev is not None and r["dataset"] != prev:
            midrule.add(len(rows))
        prev = r["dataset"]
        row = [
            Cell(text=results.dataset_display(r["dataset"])),
            Cell(text=EMPTY if pd.isna(r["ipc"]) else str(int(r["ipc"])), verbatim=True),
            Cell(text=r["_display"]),
            Cell(text=_stat_text(r["_stat"])),
            Cell(text=str(r["n_sets"]), verbatim=True),
            Cell(text=str(r["n_networks"]), verbatim=True),
            Cell(text=_pub_text(r["_pub"]), verbatim=True),
            Cell(text=fmt_signed(r["diff"]), verbatim=True),
            Cell(text=r["verdict"]),
            Cell(text=fmt_time(r["wall_time_s"]), verbatim=True),
        ]
        if include_all:
            row.append(Cell(text=r["budget"] or EMPTY))
        rows.append(row)
    header = ["Dataset", "IPC", "Method", "Ours", "Sets", "Networks", "Published", "Difference", "Verdict", "Wall time"]
    if include_all:
        header.append("Budget")
    data = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    if not include_all:
        data = data.drop(columns=["budget"])
    scope = ("every cell with a published number; Budget: why a budget differs from the paper's"
             if include_all else "only cells run at the paper's budget (--all adds the others)")
    notes = [
        f"Test accuracy (%) on ConvNet, {scope}. Ours: mean ± std over every evaluation run; {STD_NOTE}. "
        "Sets: distinct seeds; Networks: evaluation runs (accuracies). Published: mean ± std [C confirmed "
        "in a cited source, R official README only, U unconfirmed recollection]. Difference: ours − published.",
        VERDICT_NOTE,
        "Wall time: condensation of every set plus evaluation of every network of the row "
        f"({'; '.join(results.hardware()) or 'unknown hardware'}).",
    ]
    return Table(
        name="fidelity",
        caption="Fidelity: our runs at the papers' budgets against the published numbers",
        header=header,
        rows=rows,
        data=data,
        align="lrlrrrrrlr" + ("l" if include_all else ""),
        midrule_before=midrule,
        notes=notes,
    )


def has_fidelity(results: Results) -> bool:
    """True when at least one cell ran at the paper's budget and has a published number."""
    try:
        fidelity_frame(results)
    except AnalysisError:
        return False
    return True


# ----------------------------------------------------------------------------------------
# learning curves
# ----------------------------------------------------------------------------------------


def _final_iteration(its: Any, method_config: Any) -> Optional[int]:
    """The iteration of a cell's final record: its ``iterations``, else the method's recorded
    ``method_config["iterations"]``."""
    if its is not None and not pd.isna(its):
        return int(its)
    try:
        cfg = json.loads(method_config) if isinstance(method_config, str) else dict(method_config or {})
    except (json.JSONDecodeError, TypeError, ValueError):
        return None
    value = cfg.get("iterations") if isinstance(cfg, dict) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def curve_points(results: Results) -> pd.DataFrame:
    """One row per evaluation run of a learning curve: the curve records' runs plus the final
    records of the same cells, with ``point`` (the iteration) and ``final`` (True for the
    cell's normal record)."""
    curves = results.curves
    if curves.empty:
        raise AnalysisError(
            "no curve records in " + ", ".join(results.stores)
            + " (curves/ is written for cells with kept checkpoints: a sweep entry's snapshots: key, "
            "or `python -m benchmarks curve STORE`)"
        )
    pts = curves.copy()
    pts["point"] = pts["iterations"].astype(int)
    pts["final"] = False
    cells = set(zip(curves["store"], curves["cell_id"]))
    runs = results.runs
    fin = runs[[k in cells for k in zip(runs["store"], runs["cell_id"])]].copy()
    if not fin.empty:
        fin["point"] = [_final_iteration(i, c) for i, c in zip(fin["iterations"], fin["method_config"])]
        fin = fin[fin["point"].notna()]
        fin["final"] = True
    pts = pd.concat([pts, fin], ignore_index=True) if not fin.empty else pts
    pts["point"] = pts["point"].astype(int)
    pts["ipc"] = pts["ipc"].astype("Int64")
    return pts


def curve_frame(results: Results) -> pd.DataFrame:
    """Per (dataset, IPC, label, eval architecture, iteration): mean, std, n over the runs, with
    whether the point is a final record and the row's published number (tidy, table order)."""
    pts = curve_points(results)
    lm = LabelInfo(pts)
    pub = published_lookup("main")
    akey = arch_sort_key(results)
    out = []
    for (d, ipc, lab, arch, it), g in pts.groupby(["dataset", "ipc", "label", "eval_arch", "point"], sort=True):
        s = summarise(g["accuracy"])
        p = None
        if str(lab) in lm.plain and str(arch).lower() == PUBLISHED_ARCH:
            p = find_published(pub, str(d), int(ipc), lm[str(lab)])
        out.append({
            "dataset": str(d), "ipc": int(ipc), "method": str(lab), "eval_arch": str(arch), "iterations": int(it),
            "mean": s.mean, "std": s.std, "n": s.n, "final": bool(g["final"].all()),
            "published_mean": p.mean if p else np.nan,
            "published_std": (p.std if p and p.std is not None else np.nan),
            "published_confirmed": p.confirmed if p else "",
            "_display": lm.display[str(lab)], "_method": lm[str(lab)], "_plain": str(lab) in lm.plain,
            "_sort": (results.dataset_key(str(d)), int(ipc), lm.order_key(str(lab)), akey(str(arch)), int(it)),
        })
    df = pd.DataFrame(out).sort_values("_sort", kind="stable").reset_index(drop=True)
    return df


def curve_table(results: Results) -> Table:
    """Accuracy at each kept iteration of a run, and at its budget (module doc)."""
    df = curve_frame(results)
    iters = sorted(set(int(i) for i in df["iterations"]))
    rows = []
    groups = list(dict.fromkeys(zip(df["dataset"], df["ipc"], df["method"], df["eval_arch"])))
    for d, ipc, lab, arch in groups:
        g = df[(df["dataset"] == d) & (df["ipc"] == ipc) & (df["method"] == lab) & (df["eval_arch"] == arch)]
        by_it = {int(r["iterations"]): r for _, r in g.iterrows()}
        first = g.iloc[0]
        row = [Cell(text=results.dataset_display(d)), Cell(text=str(ipc), verbatim=True),
               Cell(text=first["_display"]), Cell(text=arch)]
        for it in iters:
            r = by_it.get(it)
            row.append(Cell(stat=Stat(r["mean"], r["std"], int(r["n"]))) if r is not None else Cell(text=EMPTY))
        if first["published_confirmed"]:
            std = "" if np.isnan(first["published_std"]) else f" ± {fmt1(first['published_std'])}"
            row.append(Cell(text=f"{fmt1(first['published_mean'])}{std} [{first['published_confirmed']}]", verbatim=True))
        else:
            row.append(Cell(text=EMPTY))
        rows.append(row)
    header = ["Dataset", "IPC", "Method", "Evaluated on", *[f"it {i}" for i in iters], "Published"]
    data = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    data["ipc"] = data["ipc"].astype("Int64")
    finals = sorted({int(i) for i in df.loc[df["final"], "iterations"]})
    notes = [
        "Test accuracy (%) of the set a run held after each number of iterations (its kept checkpoints, "
        "evaluated like the final set): mean ± std (n runs) over the cells' seeds × networks; "
        f"{STD_NOTE}. The budget column{'s' if len(finals) > 1 else ''} "
        f"({', '.join(f'it {i}' for i in finals) or 'none'}) "
        f"{'are' if len(finals) > 1 else 'is'} the cells' final records. {EMPTY}: no point. Published: the "
        "paper's number at its own budget [C confirmed, R official README only, U unconfirmed recollection]."
    ]
    return Table(
        name="curve",
        caption="Learning curves: accuracy vs condensation iterations",
        header=header,
        rows=rows,
        data=data,
        align="lrll" + "r" * len(iters) + "r",
        notes=notes,
    )


def random_baseline(results: Results, dataset: str, ipc: int, eval_arch: str, plans: set[str]) -> Optional[Stat]:
    """The same-protocol random-selection accuracy of (dataset, IPC, eval architecture): the
    random records whose stored plan (:func:`analysis.plans.protocol_key`, learned lr matched with
    any fixed lr) is one of ``plans``; None when there is none."""
    from analysis.plans import plan_of, protocol_key

    runs = results.runs
    if runs.empty:
        return None
    r = runs[(runs["method"] == "random") & (runs["dataset"] == dataset) & (runs["ipc"] == ipc)
             & (runs["eval_arch"].astype(str).str.lower() == str(eval_arch).lower()) & runs["plain"]]
    if r.empty:
        return None
    keys = [protocol_key(plan_of(p), lab, drop=("lr", "lr_source")) for p, lab in zip(r["eval_plan"], r["labels"])]
    r = r[[k in plans for k in keys]]
    return summarise(r["accuracy"]) if not r.empty else None


def curve_plans(results: Results, dataset: str, ipc: int, eval_arch: str) -> set[str]:
    """The protocol keys (learning rate dropped) of the curve points of (dataset, IPC, arch)."""
    from analysis.plans import plan_of, protocol_key

    pts = curve_points(results)
    g = pts[(pts["dataset"] == dataset) & (pts["ipc"] == ipc) & (pts["eval_arch"] == eval_arch)]
    return {protocol_key(plan_of(p), lab, drop=("lr", "lr_source")) for p, lab in zip(g["eval_plan"], g["labels"])}


__all__ = [
    "PUBLISHED_ARCH", "curve_frame", "curve_plans", "curve_points", "curve_table", "fidelity_frame",
    "fidelity_table", "find_published", "has_fidelity", "random_baseline",
]
