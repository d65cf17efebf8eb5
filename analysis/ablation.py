"""The ablation table: a method's variants side by side, with the components each one switches
on or off and the accuracy difference against the method as published.

Generic over methods: a method takes part when its records carry ablation switches
(``components``, written by the suite from the method's own
:meth:`methods.base.Method.components`, typically the components its paper ablates). Rows are
grouped by (dataset, IPC, base method: the entry itself or the method it is a variant of); a
group needs at least two labels. Overrides every row of a group shares (a reduced budget such as a loop cap)
are the group's common settings, stated in a note, not a difference between rows. In a group,
the reference row is the base method without other overrides (registry entry; the label that
equals its registry name first), then the registered variants without other overrides
(registry order), then every other label (alphabetical). Columns: one ✓/✗ column per component
(– when a method has no such component), the overrides that make the row a variant, the
accuracy and Δ = row − reference.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import AnalysisError, Results
from analysis.render import EMPTY, STD_NOTE, Cell, Stat, Table, summarise
from analysis.tables import same_arch


def ablation_runs(results: Results) -> pd.DataFrame:
    """Runs on their own architecture of methods that record components, with a ``base``
    column (the base method's registry name)."""
    runs = results.runs
    if runs.empty:
        return runs
    r = runs[(runs["components"] != "{}") & same_arch(runs)].copy()
    r["base"] = [v if isinstance(v, str) and v else m for v, m in zip(r["variant_of"], r["method"])]
    return r


def ablation_groups(results: Results) -> list[tuple[str, int, str, pd.DataFrame]]:
    """(dataset, IPC, base method, runs) for every group with at least two labels, in table
    order (dataset order, IPC, base method's registry order)."""
    runs = ablation_runs(results)
    if runs.empty:
        return []
    out = []
    for (d, ipc, base), g in runs.groupby(["dataset", "ipc", "base"], sort=True):
        if g["label"].nunique() >= 2:
            out.append((str(d), int(ipc), str(base), g))
    order = {b: int(g["method_order"].min()) for _, _, b, g in out}
    out.sort(key=lambda t: (results.dataset_key(t[0]), t[1], order[t[2]], t[2]))
    return out


def has_ablation(results: Results) -> bool:
    return bool(ablation_groups(results))


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_short(x) for x in v) + "]"
    return str(v)


def overrides_text(overrides: dict) -> str:
    """``key=value, ...`` of a row's variant overrides (sorted), or "" for none."""
    return ", ".join(f"{k}={_short(v)}" for k, v in sorted(overrides.items()))


def group_rows(base: str, g: pd.DataFrame) -> tuple[list[dict], Any, dict]:
    """One entry per label of a group (stat, components, own overrides, display ...) in row
    order, the reference label (None when the base method without own overrides is absent) and
    the overrides every row shares."""
    info = {}
    for lab, gg in g.groupby("label", sort=True):
        first = gg.sort_values(["seed", "cell_id"], kind="stable").iloc[0]
        info[str(lab)] = {
            "label": str(lab),
            "display": str(first["label_display"]),
            "stat": summarise(gg["accuracy"]),
            "method": str(first["method"]),
            "order": int(first["method_order"]),
            "components": json.loads(first["components"]),
            "overrides": json.loads(first["variant_overrides"]),
        }
    canon = {lab: {k: json.dumps(x, sort_keys=True) for k, x in v["overrides"].items()} for lab, v in info.items()}
    shared_keys = set.intersection(*(set(c.items()) for c in canon.values())) if canon else set()
    shared = {k: next(iter(info.values()))["overrides"][k] for k, _ in sorted(shared_keys)}
    for v in info.values():
        v["overrides"] = {k: x for k, x in v["overrides"].items() if k not in shared}
        v["plain"] = not v["overrides"]
    refs = sorted((lab for lab, v in info.items() if v["method"] == base and v["plain"]),
                  key=lambda lab: (lab != base, lab))
    ref = refs[0] if refs else None

    def order(lab: str) -> tuple:
        v = info[lab]
        if lab == ref:
            return (0, 0, "")
        if v["plain"]:
            return (1, v["order"], lab)
        return (2, 0, lab)

    return [info[lab] for lab in sorted(info, key=order)], ref, shared


def _column_name(component: str) -> str:
    return component.lower().replace(" ", "_").replace("-", "_")


def ablation_table(results: Results) -> Table:
    """One row per variant label, component switches as ✓/✗, Δ against the method as
    published (see the module doc)."""
    if results.runs.empty:
        raise AnalysisError("no usable records in " + ", ".join(results.stores))
    groups = ablation_groups(results)
    if not groups:
        raise AnalysisError(
            "no ablation in the records: need at least two variants (labels) of one method with "
            "ablation components on one dataset/IPC, e.g. {method: NAME, <config key>: <value>, "
            "label: 'w/o ...'} next to the plain method"
        )
    entries = []
    components: list[str] = []
    shared_notes = []
    for d, ipc, base, g in groups:
        rows, ref, shared = group_rows(base, g)
        entries.append((d, ipc, base, rows, ref))
        if shared:
            shared_notes.append(f"{results.dataset_display(d)} IPC {ipc}: {overrides_text(shared)}")
        for row in rows:
            components.extend(k for k in row["components"] if k not in components)
    bases = list(dict.fromkeys(base for _, _, base, _, _ in entries))
    base_display = {}
    for _, _, base, rows, _ in entries:
        plain = [r for r in rows if r["method"] == base]
        base_display.setdefault(base, plain[0]["display"] if plain else base)
    rows_out, records, midrule = [], [], set()
    for d, ipc, base, rows, ref in entries:
        if rows_out:
            midrule.add(len(rows_out))
        ref_stat = next((r["stat"] for r in rows if r["label"] == ref), None)
        for v in rows:
            s: Stat = v["stat"]
            delta = None if ref_stat is None else s.mean - ref_stat.mean
            row = [Cell(text=results.dataset_display(d)), Cell(text=str(ipc), verbatim=True), Cell(text=v["display"])]
            row += [Cell(switch=v["components"][k]) if k in v["components"] else Cell(text=EMPTY) for k in components]
            other = overrides_text(v["overrides"])
            row.append(Cell(text=other or EMPTY))
            row.append(Cell(stat=s))
            row.append(Cell(delta=delta) if delta is not None else Cell(text=EMPTY))
            rec = {"dataset": d, "ipc": ipc, "method": base, "variant": v["label"], "reference": v["label"] == ref}
            rec.update({_column_name(k): v["components"].get(k, np.nan) for k in components})
            rec.update({"overrides": other, "mean": s.mean, "std": s.std, "n": s.n,
                        "delta": delta if delta is not None else np.nan})
            records.append(rec)
            rows_out.append(row)
    names = " / ".join(base_display[b] for b in bases)
    header = ["Dataset", "IPC", "Variant", *components, "Overrides", "Accuracy", "Δ"]
    notes = [
        f"{names} variants: ✓/✗ = component on/off, as the method reads it from each record's "
        f"config ({EMPTY}: the method has no such component). Overrides: the config values that "
        f"make the row a variant. Accuracy: mean ± std (n runs) on the training architecture; "
        f"{STD_NOTE}. Δ = variant − the method without other overrides on the same "
        f"dataset/IPC; {EMPTY} when that row is absent."
    ]
    if shared_notes:
        notes.append("Settings every row of a group shares: " + "; ".join(shared_notes) + ".")
    return Table(
        name="ablation",
        caption=f"{names} ablation: components and test accuracy (%)",
        header=header,
        rows=rows_out,
        data=pd.DataFrame(records),
        align="lrl" + "c" * len(components) + "lrr",
        midrule_before=midrule,
        notes=notes,
        needs_amssymb=True,
    )
