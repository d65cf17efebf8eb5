"""Load one or several results stores into one tidy :class:`pandas.DataFrame`.

Why ~550 lines: it is the one reader of the store's formats (records, curves, cells, failures)
and the place that turns them into the frames every table uses; splitting the readers would
split the schema checks they share.

A results store is the folder written by the sweep runner (``benchmarks``)::

    <out>/spec.yaml                         the sweep spec as run
    <out>/cells.json                        {"sweep": name, "cells": [...]} every planned cell
    <out>/records/<cell_id>__<arch>.json    one per finished (cell, evaluation architecture)
    <out>/synsets/<cell_id>.pt              the synthetic set (not needed for tables)
    <out>/failures/<cell_id>.json           one per failed cell
    <out>/curves/<cell_id>__<arch>__it<N:06d>.json
                                            a learning-curve point: the set a cell's run held after
                                            N iterations, evaluated (status ``curve``)

Records are read with :meth:`benchmarks.record.Record.from_json`, the reader of the one record
schema the writer uses. Everything tables print about a method comes from the records and
``cells.json`` themselves (the registry metadata the suite wrote): the row's registry name,
display name, family and order (``method_info``), the ablation switches (``components``) and
whether the row is the method as published (no ``variant_overrides``). This package holds no
method list. A version-1 record (written before that metadata existed) falls back to its raw
method name, shown verbatim and sorted after the registered methods.

Nothing here imports torch: tables only need the JSON records. A record that cannot be used
(bad JSON, missing key, wrong schema or version, a status other than ``done``, accuracies that
are not a list of fractions) is reported in :attr:`Results.problems` with the file and the
reason and skipped; it never stops the load. Cells of ``cells.json`` without a usable record
are listed in :attr:`Results.missing` (with why: not run, failed, corrupt record).

Curve records (``curves/``) have the record schema with ``status: curve`` and ``iterations``
the iteration of the kept checkpoint. They are read into :attr:`Results.curves` only: no table
other than the learning-curve ones (:mod:`analysis.fidelity`) sees them, and they never count
as a cell's record or as missing. :attr:`Results.cell_specs` keeps every ``cells.json`` entry
as written, so the budget a cell ran at (:mod:`analysis.verdict`) is read from the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pandas as pd

from benchmarks.record import (
    COST_KEYS,
    RECORD_SCHEMA,
    RECORD_SCHEMA_VERSION,
    UNKNOWN_ORDER,
    WHOLE,
    Record,
    RecordError,
    fallback_info,
)

__all__ = [
    "AnalysisError", "COST_KEYS", "Problem", "RECORD_SCHEMA", "RECORD_SCHEMA_VERSION", "Results",
    "WHOLE", "arch_key", "label_display", "load_results", "load_store", "main_arch",
]


class AnalysisError(Exception):
    """A user-causable problem (missing folder, no records): printed as one line by the CLI."""


@dataclass(frozen=True)
class Problem:
    """A file that was skipped, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Results:
    """Everything read from one or several results stores.

    ``runs``: one row per evaluation run (one trained network): ``accuracy`` in percent.
    ``records``: one row per record (cell x evaluation architecture), cost figures included.
    ``cells``: every planned (cell, evaluation architecture) from ``cells.json``.
    ``missing``: planned (cell, evaluation architecture) pairs without a usable record, with
    ``status`` one of ``not run``, ``failed``, ``corrupt record``.
    ``failures``: the failure files (``error``, ``log_path`` ...).
    ``problems``: skipped files with the reason.
    ``datasets``: dataset name -> (table order, display name), as the records and cells say.
    ``curves``: one row per evaluation run of a curve record (the columns of ``runs``;
    ``iterations`` is the iteration the set was kept at).
    ``cell_specs``: ``(store, cell_id) -> the cells.json entry`` as written (budgets included).

    Method columns of ``runs``/``records``: ``method`` (the registry entry the row belongs
    to), ``method_display``, ``family``, ``family_display``, ``method_order``, ``variant_of``,
    ``components`` (JSON), ``variant_overrides`` (JSON), ``plain`` (no variant overrides) and
    ``label_display`` (the label as tables print it).
    """

    runs: pd.DataFrame
    records: pd.DataFrame
    cells: pd.DataFrame
    missing: pd.DataFrame
    failures: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)
    datasets: dict[str, tuple[int, str]] = field(default_factory=dict)
    curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=RUN_COLUMNS))
    cell_specs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def hardware(self) -> list[str]:
        """Distinct ``host (device)`` strings of the records, sorted."""
        if self.records.empty:
            return []
        pairs = {
            (str(h) if h else "unknown host", str(d) if d else "unknown device")
            for h, d in zip(self.records["host"], self.records["device"])
        }
        return [f"{h} ({d})" for h, d in sorted(pairs)]

    def dataset_key(self, name: str) -> tuple[int, str]:
        """Sort key of a dataset: the order the suite recorded, then the name."""
        n = str(name)
        return (self.datasets.get(n, (UNKNOWN_ORDER, n))[0], n)

    def dataset_display(self, name: str) -> str:
        """How tables name a dataset (the recorded display name, else the name itself)."""
        n = str(name)
        return self.datasets.get(n, (UNKNOWN_ORDER, n))[1]


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def arch_key(name: str, home: Optional[str] = None) -> tuple[int, str]:
    """Sort key of an architecture name: ``home`` (the main training architecture) first, then
    alphabetical (case-insensitive)."""
    n = str(name).lower()
    return (0 if home is not None and n == str(home).lower() else 1, n)


def label_display(label: str, info: Mapping[str, Any], method: Optional[str] = None) -> str:
    """How a row label prints: a label that just names the method (the registry name, the
    name the spec used, or the display name in any case) prints as the entry's display name;
    a free label prints verbatim."""
    text = str(label)
    names = {str(info.get("name", "")).lower(), str(info.get("display", "")).lower()}
    if method:
        names.add(str(method).lower())
    return str(info.get("display") or text) if text.lower() in names else text


def _json(value: Any) -> str:
    return json.dumps(value if value is not None else {}, sort_keys=True, separators=(",", ":"))


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def _info_of(item: Mapping[str, Any]) -> dict[str, Any]:
    """The registry entry a record or cell carries, else the raw-name fallback."""
    info = item.get("method_info")
    if isinstance(info, dict) and isinstance(info.get("name"), str) and info.get("name"):
        out = fallback_info(info["name"])
        out.update(info)
        if not isinstance(out.get("order"), int) or isinstance(out.get("order"), bool):
            out["order"] = UNKNOWN_ORDER
        return out
    return fallback_info(str(item.get("method") or ""))


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------

RUN_COLUMNS = [
    "dataset", "ipc", "method", "label", "label_display", "method_display", "family", "family_display",
    "method_order", "variant_of", "raw_method", "eval_arch", "train_arch", "seed", "run", "accuracy",
    "method_config", "overrides", "variant_overrides", "components", "plain", "labels", "num_eval",
    "eval_epochs", "eval_augmentation", "eval_plan", "iterations",
    *[f"cost_{k}" for k in COST_KEYS],
    "host", "device", "code_version", "cell_id", "sweep", "store", "record_path", "synset_path",
]
CELL_COLUMNS = ["cell_id", "eval_arch", "dataset", "ipc", "method", "label", "label_display", "method_order",
                "plain", "seed", "train_arch", "sweep", "store"]


def main_arch(records: pd.DataFrame) -> str:
    """The store's main training architecture: the most common ``train_arch`` (ties:
    alphabetical), or ConvNet when no record names one.

    Sets condensed without a network (random selection, the whole dataset) have no
    ``train_arch``; their evaluations on this architecture are the ones that go into the main
    table (the papers evaluate every row on ConvNet), the others are cross-architecture."""
    ta = records["train_arch"].dropna().astype(str) if "train_arch" in records else pd.Series(dtype=str)
    if ta.empty:
        return "ConvNet"
    counts = ta.value_counts()
    best = [a for a, c in counts.items() if c == counts.max()]
    return sorted(best, key=arch_key)[0]


def _read_cells(store: Path, problems: list[Problem]) -> tuple[str, list[dict]]:
    path = store / "cells.json"
    if not path.is_file():
        problems.append(Problem(str(path), "missing: missing cells cannot be listed"))
        return store.name, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(Problem(str(path), f"unreadable ({exc}); missing cells cannot be listed"))
        return store.name, []
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        problems.append(Problem(str(path), "has no 'cells' list; missing cells cannot be listed"))
        return store.name, []
    sweep = str(data.get("sweep") or store.name)
    cells = [c for c in data["cells"] if isinstance(c, dict) and isinstance(c.get("cell_id"), str)]
    if len(cells) != len(data["cells"]):
        problems.append(Problem(str(path), f"{len(data['cells']) - len(cells)} cell(s) without a cell_id ignored"))
    return sweep, cells


def _read_failures(store: Path, problems: list[Problem]) -> list[dict]:
    out = []
    folder = store / "failures"
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem(str(path), f"unreadable failure file ({exc})"))
            data = {}
        out.append(
            {
                "cell_id": str(data.get("cell_id") or path.stem),
                "error": str(data.get("error") or "unknown error"),
                "log_path": data.get("log_path"),
                "job_id": data.get("job_id"),
                "created": data.get("created"),
                "store": str(store),
                "failure_path": str(path),
            }
        )
    return out


def load_store(path: str | Path) -> Results:
    """Load a single results store (see :func:`load_results`)."""
    return load_results([path])


def _note_dataset(datasets: dict, name: str, order: Any, display: Any) -> None:
    """Remember a dataset's recorded order and display name (the first one that has them)."""
    known = datasets.get(name)
    has_order = isinstance(order, int) and not isinstance(order, bool)
    if known is None or (known[0] == UNKNOWN_ORDER and has_order):
        datasets[name] = (order if has_order else UNKNOWN_ORDER, str(display or name))


def load_results(paths: Iterable[str | Path]) -> Results:
    """Read every record of the given results folders.

    Raises :class:`AnalysisError` when a folder does not exist or is not a results store
    (no ``records/`` and no ``cells.json``). Unusable files are reported, not fatal.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise AnalysisError("no results folder given")
    problems: list[Problem] = []
    run_rows: list[dict] = []
    record_rows: list[dict] = []
    cell_rows: list[dict] = []
    failure_rows: list[dict] = []
    corrupt_files: dict[tuple[str, str, str], str] = {}
    stores: list[str] = []
    sweeps: list[str] = []
    datasets: dict[str, tuple[int, str]] = {}
    curve_rows: list[dict] = []
    cell_specs: dict[tuple[str, str], dict[str, Any]] = {}
    for store in paths:
        if not store.exists():
            raise AnalysisError(f"results folder {store} does not exist")
        if not store.is_dir():
            raise AnalysisError(f"{store} is not a folder (give the results folder of a sweep)")
        if not (store / "records").is_dir() and not (store / "cells.json").is_file():
            raise AnalysisError(
                f"{store} is not a results store (no records/ folder and no cells.json); "
                "give the --out folder of a sweep"
            )
        stores.append(str(store))
        sweep, cells = _read_cells(store, problems)
        sweeps.append(sweep)
        # Labels are presentation: the spec as last run (cells.json) names a cell, so a sweep can
        # be relabelled by editing its spec and re-running it (finished cells are skipped).
        spec_labels = {c["cell_id"]: c["label"] for c in cells if c.get("label")}
        for c in cells:
            cell_specs[(str(store), c["cell_id"])] = dict(c)
            info = _info_of(c)
            dataset = str(c.get("dataset"))
            _note_dataset(datasets, dataset, c.get("dataset_order"), c.get("dataset_display"))
            label = str(c.get("label") or info["name"])
            variant = c.get("variant_overrides")
            archs = c.get("eval_archs") or []
            if not isinstance(archs, list):
                archs = [archs]
            for arch in archs:
                cell_rows.append(
                    {
                        "cell_id": c["cell_id"],
                        "eval_arch": str(arch),
                        "dataset": dataset,
                        "ipc": c.get("ipc"),
                        "method": info["name"],
                        "label": label,
                        "label_display": label_display(label, info, c.get("method")),
                        "method_order": info["order"],
                        "plain": not variant if isinstance(variant, dict) else True,
                        "seed": c.get("seed"),
                        "train_arch": c.get("train_arch"),
                        "sweep": sweep,
                        "store": str(store),
                    }
                )
        failure_rows.extend(_read_failures(store, problems))
        rec_dir = store / "records"
        for rpath in sorted(rec_dir.glob("*.json")) if rec_dir.is_dir() else []:
            record = None
            try:
                data = json.loads(rpath.read_text(encoding="utf-8"))
                record = Record.from_json(data)
                reason = None
            except (OSError, UnicodeDecodeError) as exc:
                reason = f"unreadable ({exc})"
            except json.JSONDecodeError as exc:
                reason = f"bad JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            except RecordError as exc:
                reason = str(exc)
            if record is None:
                problems.append(Problem(str(rpath), str(reason)))
                stem = rpath.stem
                if "__" in stem:
                    cid, arch = stem.rsplit("__", 1)
                    corrupt_files[(str(store), cid, arch)] = str(reason)
                continue
            _note_dataset(datasets, record.dataset, record.dataset_order, record.dataset_display)
            label = spec_labels.get(record.cell_id, record.label)
            _append_record(record, label, store, rpath, sweep, run_rows, record_rows)
        for cpath, record in _read_curves(store, problems):
            _note_dataset(datasets, record.dataset, record.dataset_order, record.dataset_display)
            label = spec_labels.get(record.cell_id, record.label)
            _append_record(record, label, store, cpath, sweep, curve_rows, [])

    runs = pd.DataFrame(run_rows, columns=RUN_COLUMNS) if run_rows else pd.DataFrame(columns=RUN_COLUMNS)
    records = pd.DataFrame(record_rows)
    if not records.empty:
        # Other numeric cost counters (method-specific) as extra cost_* columns on runs too.
        extra = sorted(c for c in records.columns if c.startswith("cost_") and c not in runs.columns)
        if extra:
            runs = runs.merge(records[["record_path", *extra]], on="record_path", how="left")
    home = main_arch(records) if not records.empty else "ConvNet"
    for df in (runs, records):
        if not df.empty:
            df["ipc"] = df["ipc"].astype("Int64")
            df["home_arch"] = df["train_arch"].where(df["train_arch"].notna(), home)
    if runs.empty:
        runs["home_arch"] = pd.Series(dtype=object)
    curves = pd.DataFrame(curve_rows, columns=RUN_COLUMNS) if curve_rows else pd.DataFrame(columns=RUN_COLUMNS)
    if not curves.empty:
        curves["ipc"] = curves["ipc"].astype("Int64")
        curves["home_arch"] = curves["train_arch"].where(curves["train_arch"].notna(), home)
    else:
        curves["home_arch"] = pd.Series(dtype=object)
    cells_df = pd.DataFrame(cell_rows, columns=CELL_COLUMNS)
    failures = pd.DataFrame(
        failure_rows,
        columns=["cell_id", "error", "log_path", "job_id", "created", "store", "failure_path"],
    )
    results = Results(
        runs=runs.reset_index(drop=True),
        records=records,
        cells=cells_df,
        missing=pd.DataFrame(),
        failures=failures,
        problems=problems,
        stores=stores,
        sweeps=sweeps,
        datasets=datasets,
        curves=curves.reset_index(drop=True),
        cell_specs=cell_specs,
    )
    results.missing = _missing(results, corrupt_files)
    return results


CURVE_STATUS = "curve"
"""The ``status`` of a learning-curve record (``<out>/curves/``)."""


def _read_curves(store: Path, problems: list[Problem]) -> list[tuple[Path, Record]]:
    """The usable curve records of ``store`` (``curves/*.json``): the record schema with
    ``status: curve`` and an ``iterations`` count; anything else is a :class:`Problem`."""
    folder = store / "curves"
    out: list[tuple[Path, Record]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), f"unreadable curve record ({exc})"))
            continue
        except json.JSONDecodeError as exc:
            problems.append(Problem(str(path), f"bad JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"))
            continue
        if not isinstance(data, dict) or data.get("status") != CURVE_STATUS:
            status = data.get("status") if isinstance(data, dict) else None
            problems.append(Problem(str(path), f"status is {status!r}, not {CURVE_STATUS!r} (not a curve record)"))
            continue
        its = data.get("iterations")
        if not isinstance(its, int) or isinstance(its, bool) or its <= 0:
            problems.append(Problem(str(path), f"iterations is {its!r}, expected a positive integer (curve record)"))
            continue
        try:
            # the record checker knows finished records only; a curve point is one in every other way
            record = Record.from_json({**data, "status": "done"})
        except RecordError as exc:
            problems.append(Problem(str(path), str(exc)))
            continue
        out.append((path, record))
    return out


def _append_record(record: Record, label: str, store: Path, rpath: Path, sweep: str, run_rows: list,
                   record_rows: list) -> None:
    info = _info_of({"method_info": record.method_info, "method": record.method})
    cost = record.cost
    synset = record.synset_path
    synset_abs = str((store / synset).resolve()) if isinstance(synset, str) and synset else None
    base = {
        "dataset": record.dataset,
        "ipc": record.ipc,
        "method": info["name"],
        "label": str(label),
        "label_display": label_display(label, info, record.method),
        "method_display": str(info["display"]),
        "family": str(info["family"]),
        "family_display": str(info.get("family_display") or info["family"]),
        "method_order": int(info["order"]),
        "variant_of": info.get("variant_of"),
        "raw_method": record.method,
        "eval_arch": record.eval_arch,
        "train_arch": record.train_arch,
        "seed": int(record.seed),
        "method_config": _json(record.method_config),
        "overrides": _json(record.overrides),
        "variant_overrides": _json(record.variant_overrides),
        "components": json.dumps(dict(record.components), separators=(",", ":")),  # the method's order
        # plain = the registry entry as published (no overrides beyond the entry's own and the
        # network it was condensed on): ordered with the registry rows, compared with the papers
        "plain": record.plain,
        "labels": record.labels,
        "num_eval": record.num_eval,
        "eval_epochs": record.eval_epochs,
        "eval_augmentation": None if record.eval_augmentation is None else str(record.eval_augmentation),
        "eval_plan": _json(record.eval_plan),
        "iterations": record.iterations,
        "host": record.host or None,
        "device": record.device or None,
        "code_version": record.code_version or None,
        "cell_id": record.cell_id,
        "sweep": record.sweep or sweep,
        "store": str(store),
        "record_path": str(rpath),
        "synset_path": synset_abs,
    }
    for key in COST_KEYS:
        base[f"cost_{key}"] = _num(cost.get(key))
    accs = [100.0 * float(a) for a in record.accuracies]
    rec = dict(base)
    for key, value in sorted(cost.items()):
        if key not in COST_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
            rec[f"cost_{key}"] = float(value)
    if isinstance(cost.get("set_reused_from"), str):  # the cell whose set this one copied
        rec["cost_set_reused_from"] = cost["set_reused_from"]
    rec["runs"] = len(accs)
    rec["accuracy_mean"] = sum(accs) / len(accs)
    record_rows.append(rec)
    for i, acc in enumerate(accs):
        row = dict(base)
        row["run"] = i
        row["accuracy"] = acc
        run_rows.append(row)


def _missing(results: Results, corrupt: dict) -> pd.DataFrame:
    cells, records, failures = results.cells, results.records, results.failures
    cols = ["cell_id", "eval_arch", "dataset", "ipc", "label", "label_display", "seed", "status", "detail", "store"]
    if cells.empty:
        return pd.DataFrame(columns=cols)
    done = set()
    if not records.empty:
        done = set(zip(records["store"], records["cell_id"], records["eval_arch"]))
    failed = {}
    for _, f in failures.iterrows():
        failed[(f["store"], f["cell_id"])] = f"{f['error']} (log: {f['log_path']})"
    rows = []
    for _, c in cells.iterrows():
        key = (c["store"], c["cell_id"], c["eval_arch"])
        if key in done:
            continue
        if key in corrupt:
            status, detail = "corrupt record", corrupt[key]
        elif (c["store"], c["cell_id"]) in failed:
            status, detail = "failed", failed[(c["store"], c["cell_id"])]
        else:
            status, detail = "not run", ""
        rows.append(
            {
                "cell_id": c["cell_id"], "eval_arch": c["eval_arch"], "dataset": c["dataset"],
                "ipc": c["ipc"], "label": c["label"], "label_display": c["label_display"], "seed": c["seed"],
                "status": status, "detail": detail, "store": c["store"],
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    out["ipc"] = out["ipc"].astype("Int64")
    if out.empty:
        return out
    order = sorted(
        range(len(out)),
        key=lambda i: (
            out.at[i, "store"], results.dataset_key(str(out.at[i, "dataset"])),
            10**9 if pd.isna(out.at[i, "ipc"]) else int(out.at[i, "ipc"]), str(out.at[i, "label"]),
            str(out.at[i, "seed"]), out.at[i, "cell_id"], out.at[i, "eval_arch"],
        ),
    )
    return out.iloc[order].reset_index(drop=True)
