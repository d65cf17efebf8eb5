"""The published numbers the tables can show next to ours (``analysis/data/published.csv``).

The CSV is data, not code: one row per (table, dataset, IPC, method, training architecture,
evaluation architecture) with the paper's mean and std, a confirmation grade (``C`` confirmed
in a cited source, ``R`` the official README only, ``U`` an unconfirmed recollection) and the
source. ``method`` is the registry name of the method the number belongs to; a table looks a row
up by the registry name its records carry (``method_info.name``), so only the method as
published (no variant overrides) is compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Optional

import pandas as pd


@dataclass(frozen=True)
class Published:
    """One published accuracy (percent): mean, std (None when the paper gives none), the
    confirmation grade and the source."""

    mean: float
    std: Optional[float]
    confirmed: str
    source: str


def load_published() -> pd.DataFrame:
    """Every published number shipped with the package, as a DataFrame."""
    with resources.files("analysis").joinpath("data/published.csv").open("r", encoding="utf-8") as fh:
        df = pd.read_csv(fh, dtype={"confirmed": str, "source": str})
    df["ipc"] = df["ipc"].astype("Int64")
    return df


def published_lookup(table: str) -> dict[tuple, Published]:
    """``(dataset, ipc, method, train_arch, eval_arch) -> Published`` for one table kind
    (``main`` or ``cross``); architectures lower-case, ``ipc`` None for the whole dataset."""
    df = load_published()
    df = df[df["table"] == table]
    out = {}
    for _, r in df.iterrows():
        ipc = None if pd.isna(r["ipc"]) else int(r["ipc"])
        key = (str(r["dataset"]), ipc, str(r["method"]), str(r["train_arch"]).lower(), str(r["eval_arch"]).lower())
        std = None if pd.isna(r["std"]) else float(r["std"])
        out[key] = Published(float(r["mean"]), std, str(r["confirmed"]), str(r["source"]))
    return out
