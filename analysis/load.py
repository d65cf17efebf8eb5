"""Load one or several results stores into one tidy :class:`pandas.DataFrame`.

A results store is the folder written by the sweep runner (``benchmarks``)::

    <out>/spec.yaml                         the sweep spec as run
    <out>/cells.json                        {"sweep": name, "cells": [...]} every planned cell
    <out>/records/<cell_id>__<arch>.json    one per finished (cell, evaluation architecture)
    <out>/synsets/<cell_id>.pt              the synthetic set (not needed for tables)
    <out>/failures/<cell_id>.json           one per failed cell

Nothing here imports torch: tables only need the JSON records. A record that cannot be used
(bad JSON, missing key, wrong schema or version, a status other than ``done``, accuracies that
are not a list of fractions) is reported in :attr:`Results.problems` with the file and the
reason and skipped; it never stops the load. Cells of ``cells.json`` without a usable record
are listed in :attr:`Results.missing` (with why: not run, failed, corrupt record).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

RECORD_SCHEMA = "condensation-bench/record"
RECORD_SCHEMA_VERSION = 1

#: Row order of the papers' tables: coresets, then the synthesis methods, then anything else.
METHOD_ORDER = ("random", "herding", "kcenter", "dc", "dsa", "dm", "cafe", "cafe_dsa")
WHOLE = "whole"

#: How method names are printed in tables and figure legends.
METHOD_DISPLAY = {
    "random": "Random",
    "herding": "Herding",
    "kcenter": "K-Center",
    "dc": "DC",
    "dsa": "DSA",
    "dm": "DM",
    "cafe": "CAFE",
    "cafe_dsa": "CAFE+DSA",
    "whole": "Whole dataset",
}

DATASET_ORDER = ("mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "tinyimagenet")
DATASET_DISPLAY = {
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
    "svhn": "SVHN",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "tinyimagenet": "TinyImageNet",
    "digits": "Digits",
}

#: Evaluation-architecture column order (the papers' cross-architecture tables start with the
#: training network ConvNet); unknown names follow alphabetically.
ARCH_ORDER = (
    "convnet", "convnetbn", "mlp", "lenet", "alexnet", "alexnetbn", "vgg11", "vgg11bn",
    "resnet18", "resnet18bn",
)

#: Cost keys every record carries; other numeric keys of ``cost`` become ``cost_<key>`` too.
COST_KEYS = (
    "condense_wall_time_s",
    "condense_peak_memory_mb",
    "eval_wall_time_s",
    "eval_peak_memory_mb",
)

#: Override keys that do not make a variant: the DSA switch names the registry variant
#: (cafe_dsa, dsa) and the architecture fields say where a set was condensed (own column).
NON_VARIANT_KEYS = frozenset({"dsa", "dsa_strategy", "model", "feature_net", "net", "arch"})

_REQUIRED = ("cell_id", "dataset", "method", "eval_arch", "accuracies", "seed")


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
    """

    runs: pd.DataFrame
    records: pd.DataFrame
    cells: pd.DataFrame
    missing: pd.DataFrame
    failures: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)

    def hardware(self) -> list[str]:
        """Distinct ``host (device)`` strings of the records, sorted."""
        if self.records.empty:
            return []
        pairs = {
            (str(h) if h else "unknown host", str(d) if d else "unknown device")
            for h, d in zip(self.records["host"], self.records["device"])
        }
        return [f"{h} ({d})" for h, d in sorted(pairs)]


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def canonical_method(method: str, config: Optional[dict] = None, overrides: Optional[dict] = None) -> str:
    """The registry name a record's row belongs to.

    A sweep may write CAFE+DSA as ``{method: cafe, dsa: true}`` and DSA as
    ``{method: dc, dsa: true}``; both are mapped to the registry names ``cafe_dsa`` / ``dsa``.
    """
    m = str(method).lower()
    flags = {}
    for source in (config or {}, overrides or {}):
        if isinstance(source, dict) and "dsa" in source:
            flags["dsa"] = source["dsa"]
    if m == "cafe" and flags.get("dsa") is True:
        return "cafe_dsa"
    if m == "dc" and flags.get("dsa") is True:
        return "dsa"
    return m


def method_rank(name: str) -> int:
    """Sort rank of a registry name (unknown methods after the known ones, whole last)."""
    if name == WHOLE:
        return 1000
    if name in METHOD_ORDER:
        return METHOD_ORDER.index(name)
    return len(METHOD_ORDER)


def dataset_key(name: str) -> tuple[int, str]:
    n = str(name).lower()
    return (DATASET_ORDER.index(n) if n in DATASET_ORDER else len(DATASET_ORDER), n)


def arch_key(name: str) -> tuple[int, str]:
    n = str(name).lower()
    return (ARCH_ORDER.index(n) if n in ARCH_ORDER else len(ARCH_ORDER), n)


def dataset_display(name: str) -> str:
    return DATASET_DISPLAY.get(str(name).lower(), str(name))


def label_display(label: str) -> str:
    """Registry names print as in the papers (``kcenter`` -> ``K-Center``, the sweep's default
    ``whole dataset`` -> ``Whole dataset``); free labels verbatim."""
    if str(label).lower() in ("whole", "whole dataset"):
        return METHOD_DISPLAY[WHOLE]
    return METHOD_DISPLAY.get(label, label)


def _json(value: Any) -> str:
    return json.dumps(value if value is not None else {}, sort_keys=True, separators=(",", ":"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(data: Any) -> Optional[str]:
    """Why ``data`` is not a usable record, or None when it is."""
    if not isinstance(data, dict):
        return f"not a JSON object (got {type(data).__name__})"
    if data.get("schema") != RECORD_SCHEMA:
        return f"schema is {data.get('schema')!r}, expected {RECORD_SCHEMA!r}"
    version = data.get("schema_version")
    if not _is_int(version):
        return f"schema_version is {version!r}, expected an integer"
    if version > RECORD_SCHEMA_VERSION:
        return (
            f"schema_version {version} is newer than this code understands "
            f"({RECORD_SCHEMA_VERSION}); upgrade the suite"
        )
    if version < 1:
        return f"schema_version {version} is not valid"
    if data.get("status") != "done":
        return f"status is {data.get('status')!r}, not 'done' (partial record)"
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        return "missing key(s): " + ", ".join(missing)
    for key in ("cell_id", "dataset", "method", "eval_arch"):
        if not isinstance(data[key], str) or not data[key]:
            return f"{key} is {data[key]!r}, expected a non-empty string"
    accs = data["accuracies"]
    if not isinstance(accs, list):
        return f"accuracies is a {type(accs).__name__}, expected a list"
    if not accs:
        return "accuracies is empty"
    for a in accs:
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not math.isfinite(a):
            return f"accuracies holds {a!r}, expected numbers"
        if not 0.0 <= float(a) <= 1.0:
            return f"accuracies holds {a!r}, expected fractions in [0, 1]"
    ipc = data.get("ipc")
    if data["method"] == WHOLE:
        if ipc is not None:
            return f"method 'whole' must have ipc null, got {ipc!r}"
    elif not _is_int(ipc) or ipc <= 0:
        return f"ipc is {ipc!r}, expected a positive integer"
    if not _is_int(data["seed"]):
        return f"seed is {data['seed']!r}, expected an integer"
    cost = data.get("cost", {})
    if cost is not None and not isinstance(cost, dict):
        return f"cost is a {type(cost).__name__}, expected an object"
    for key in ("overrides", "method_config"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"{key} is a {type(data[key]).__name__}, expected an object"
    return None


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------

RUN_COLUMNS = [
    "dataset", "ipc", "method", "label", "eval_arch", "train_arch", "seed", "run", "accuracy",
    "method_config", "overrides", "plain", "num_eval", "eval_epochs", "eval_augmentation",
    *[f"cost_{k}" for k in COST_KEYS],
    "host", "device", "code_version", "cell_id", "sweep", "store", "record_path", "synset_path",
]


def main_arch(records: pd.DataFrame) -> str:
    """The store's main training architecture: the most common ``train_arch`` (ties: the
    papers' order, ConvNet first), or ConvNet when no record names one.

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
            archs = c.get("eval_archs") or []
            if not isinstance(archs, list):
                archs = [archs]
            for arch in archs:
                cell_rows.append(
                    {
                        "cell_id": c["cell_id"],
                        "eval_arch": str(arch),
                        "dataset": c.get("dataset"),
                        "ipc": c.get("ipc"),
                        "method": c.get("method"),
                        "label": c.get("label") or c.get("method"),
                        "seed": c.get("seed"),
                        "train_arch": c.get("train_arch"),
                        "sweep": sweep,
                        "store": str(store),
                    }
                )
        failure_rows.extend(_read_failures(store, problems))
        rec_dir = store / "records"
        for rpath in sorted(rec_dir.glob("*.json")) if rec_dir.is_dir() else []:
            try:
                data = json.loads(rpath.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                reason = f"unreadable ({exc})"
                data = None
            except json.JSONDecodeError as exc:
                reason = f"bad JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                data = None
            else:
                reason = _check_record(data)
            if reason is not None:
                problems.append(Problem(str(rpath), reason))
                stem = rpath.stem
                if "__" in stem:
                    cid, arch = stem.rsplit("__", 1)
                    corrupt_files[(str(store), cid, arch)] = reason
                continue
            if data.get("cell_id") in spec_labels:
                data = dict(data, label=spec_labels[data["cell_id"]])
            _append_record(data, store, rpath, sweep, run_rows, record_rows)

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
    cells_df = pd.DataFrame(
        cell_rows,
        columns=["cell_id", "eval_arch", "dataset", "ipc", "method", "label", "seed",
                 "train_arch", "sweep", "store"],
    )
    failures = pd.DataFrame(
        failure_rows,
        columns=["cell_id", "error", "log_path", "job_id", "created", "store", "failure_path"],
    )
    missing = _missing(cells_df, records, failures, corrupt_files)
    return Results(
        runs=runs.reset_index(drop=True),
        records=records,
        cells=cells_df,
        missing=missing,
        failures=failures,
        problems=problems,
        stores=stores,
        sweeps=sweeps,
    )


def _append_record(data: dict, store: Path, rpath: Path, sweep: str, run_rows: list, record_rows: list) -> None:
    config = data.get("method_config") or {}
    overrides = data.get("overrides") or {}
    method = canonical_method(data["method"], config, overrides)
    label = data.get("label") or method
    if label == data["method"] and method != data["method"]:
        label = method  # default label of {method: cafe, dsa: true} is the registry name cafe_dsa
    cost = data.get("cost") or {}
    synset = data.get("synset_path")
    synset_abs = str((store / synset).resolve()) if isinstance(synset, str) and synset else None
    ipc = data.get("ipc")
    base = {
        "dataset": str(data["dataset"]).lower(),
        "ipc": ipc,
        "method": method,
        "label": str(label),
        "eval_arch": data["eval_arch"],
        "train_arch": data.get("train_arch"),
        "seed": int(data["seed"]),
        "method_config": _json(config),
        "overrides": _json(overrides),
        # plain = the registry method as published (no overrides other than the dsa switch
        # that names cafe_dsa / dsa): ordered with the registry rows, compared with the papers
        "plain": not (set(overrides) - NON_VARIANT_KEYS),
        "num_eval": data.get("num_eval"),
        "eval_epochs": data.get("eval_epochs"),
        "eval_augmentation": None if data.get("eval_augmentation") is None else str(data.get("eval_augmentation")),
        "host": data.get("host"),
        "device": data.get("device"),
        "code_version": data.get("code_version"),
        "cell_id": data["cell_id"],
        "sweep": data.get("sweep") or sweep,
        "store": str(store),
        "record_path": str(rpath),
        "synset_path": synset_abs,
    }
    for key in COST_KEYS:
        base[f"cost_{key}"] = _num(cost.get(key))
    accs = [100.0 * float(a) for a in data["accuracies"]]
    rec = dict(base)
    for key, value in sorted(cost.items()):
        if key not in COST_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
            rec[f"cost_{key}"] = float(value)
    rec["runs"] = len(accs)
    rec["accuracy_mean"] = sum(accs) / len(accs)
    record_rows.append(rec)
    for i, acc in enumerate(accs):
        row = dict(base)
        row["run"] = i
        row["accuracy"] = acc
        run_rows.append(row)


def _missing(cells: pd.DataFrame, records: pd.DataFrame, failures: pd.DataFrame, corrupt: dict) -> pd.DataFrame:
    cols = ["cell_id", "eval_arch", "dataset", "ipc", "label", "seed", "status", "detail", "store"]
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
                "ipc": c["ipc"], "label": c["label"], "seed": c["seed"], "status": status,
                "detail": detail, "store": c["store"],
            }
        )
    out = pd.DataFrame(rows, columns=cols)
    out["ipc"] = out["ipc"].astype("Int64")
    if out.empty:
        return out
    order = sorted(
        range(len(out)),
        key=lambda i: (
            out.at[i, "store"], dataset_key(str(out.at[i, "dataset"])),
            10**9 if pd.isna(out.at[i, "ipc"]) else int(out.at[i, "ipc"]), str(out.at[i, "label"]),
            str(out.at[i, "seed"]), out.at[i, "cell_id"], out.at[i, "eval_arch"],
        ),
    )
    return out.iloc[order].reset_index(drop=True)
