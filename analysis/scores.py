"""Scores beyond accuracy: gain over the same-protocol random baseline and DD-Ranking's
label- and augmentation-robust scores, from the records.

Definitions (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation",
arXiv 2505.13300, §3; transcribed from the ``ddranking`` package, version 0.2.0,
``ddranking/metrics/soft_label.py`` lines 561-564 and ``ddranking/metrics/aug_robust.py``
lines 578-580; its ``compute_metrics`` trains the networks itself, so it cannot be called on
recorded accuracies and the formulas are transcribed, not imported). Accuracies ``A`` are
fractions of the test set; every score is computed per seed and reported as mean ± std over
seeds (population std, as the package does with ``np.std``), in percentage points:

* **IOR** (improvement over random) = ``A(set) - A(random)``, both evaluated under the *same*
  plan -- the set's own (labels, loss, lr, augmentation, epochs, ZCA, ...). The random record is
  the one whose stored effective plan matches (:mod:`analysis.plans`); a learned learning rate
  (``lr_source: learned``) is matched with any fixed lr, and a set's own soft labels with
  teacher labels (the sweep's same-protocol baseline, :mod:`benchmarks.sweep`).
* **HLR** (hard-label recovery) = ``A(whole dataset, hard labels) - A(set, hard labels)``: the
  gap a set leaves to training on everything, lower is better.
* **LRS** (label-robust score) = ``(exp(a) - exp(-1)) / (exp(1) - exp(-1))`` with
  ``a = lambda * IOR - (1 - lambda) * HLR``, ``lambda = 0.5`` (the package's ``lrs_lambda``
  default); IOR is the row's (its label type), HLR always the hard-label one.
* **ARS** (augmentation-robust score) = ``(exp(b) - exp(-1)) / (exp(1) - exp(-1))`` with
  ``b = lambda * IOR_aug + (1 - lambda) * IOR_no_aug``, ``lambda = 0.5`` (``ars_lambda``):
  the gain over random with the training augmentation and without it (``augmentation: none``).

LRS and ARS are printed x 100. The package feeds its percentages (0-100) into ``exp``; this
module uses fractions, as the paper's definition does (scores in [0, 1]), so numbers are
comparable with the paper's tables, not with a raw package log line.

One row per set configuration (method, config overrides, training architecture) and label type
(hard / soft / teacher): its records evaluated under other plans supply HLR (hard labels)
and ARS (with and without augmentation). A score whose inputs are missing prints ``–`` and
the table's notes name the cells to run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from analysis.load import WHOLE, AnalysisError, Results
from analysis.plans import plan_of, protocol, protocol_key
from analysis.render import EMPTY, Cell, Stat, Table
from analysis.tables import LabelInfo, select_main_runs

RANDOM = "random"
LRS_LAMBDA = 0.5
"""``lrs_lambda`` default of ``ddranking`` 0.2.0 (``SoftLabelEvaluator.compute_metrics``)."""
ARS_LAMBDA = 0.5
"""``ars_lambda`` default of ``ddranking`` 0.2.0 (``AugmentationRobustnessEvaluator.compute_metrics``)."""
SCORES = ("IOR", "HLR", "LRS", "ARS")
LABEL_ORDER = {"hard": 0, "soft": 1, "teacher": 2}

_E, _EINV = math.e, math.exp(-1.0)


def label_robust_score(ior: float, hlr: float, lam: float = LRS_LAMBDA) -> float:
    """DD-Ranking's LRS in [0, 1] from IOR and HLR as fractions (module doc)."""
    return (math.exp(lam * ior - (1.0 - lam) * hlr) - _EINV) / (_E - _EINV)


def augmentation_robust_score(with_aug: float, without_aug: float, lam: float = ARS_LAMBDA) -> float:
    """DD-Ranking's ARS in [0, 1] from the gains over random with and without augmentation
    (fractions; module doc)."""
    return (math.exp(lam * with_aug + (1.0 - lam) * without_aug) - _EINV) / (_E - _EINV)


def spread(values: dict[int, float]) -> Optional[Stat]:
    """mean ± population std over seeds (``n`` = seeds) of per-seed values; None when empty."""
    if not values:
        return None
    arr = np.asarray(list(values.values()), dtype=float)
    return Stat(float(arr.mean()), float(arr.std()), int(arr.size))


# ----------------------------------------------------------------------------------------
# per-seed accuracies
# ----------------------------------------------------------------------------------------


@dataclass
class Evaluated:
    """The per-seed mean accuracies (fractions) of one set configuration under one plan."""

    label: str
    plan: dict[str, Any]
    protocol: dict[str, Any]
    by_seed: dict[int, float]

    @property
    def kind(self) -> str:
        return str(self.protocol.get("labels") or "hard")

    @property
    def augmented(self) -> bool:
        return str(self.protocol.get("augmentation") or "none") != "none"

    def overall(self) -> float:
        return float(np.mean(list(self.by_seed.values())))


def _evaluated(runs: pd.DataFrame) -> list[Evaluated]:
    """Per (label, protocol): the per-seed mean accuracies. Grouped by the protocol, not the
    stored plan, whose teacher fields (seed, measured accuracy) differ from seed to seed."""
    if runs.empty:
        return []
    runs = runs.assign(_pkey=[protocol_key(plan_of(p), str(k)) for p, k in zip(runs["eval_plan"], runs["labels"])])
    out = []
    for (label, _key), g in runs.groupby(["label", "_pkey"], sort=True, dropna=False):
        plan = plan_of(g["eval_plan"].iloc[0])
        kind = str(g["labels"].iloc[0])
        by_seed = {int(s): float(gs["accuracy"].mean()) / 100.0 for s, gs in g.groupby("seed")}
        out.append(Evaluated(str(label), plan, protocol(plan, kind), by_seed))
    return out


def _match(target: Evaluated, randoms: list[Evaluated]) -> tuple[Optional[Evaluated], Optional[Evaluated]]:
    """(the random evaluation under ``target``'s plan or None, the closest one for the hint)."""
    learned_lr = target.protocol.get("lr_source") == "learned"
    soft = target.kind == "soft"

    def norm(p: dict[str, Any], own: bool) -> dict[str, Any]:
        p = dict(p)
        if learned_lr:
            p.pop("lr", None)
            p.pop("lr_source", None)
        if soft:
            for k in ("teacher_arch", "teacher_epochs", "teacher_per_view"):
                p.pop(k, None)
            if own:
                p["labels"] = "teacher"
        return p

    want = norm(target.protocol, True)
    best, best_diff = None, None
    for r in randoms:
        have = norm(r.protocol, False)
        diff = {k for k in set(want) | set(have) if want.get(k) != have.get(k)}
        if not diff:
            return r, r
        if best_diff is None or len(diff) < len(best_diff):
            best, best_diff = r, diff
    return None, best


def _hint(target: Evaluated, closest: Optional[Evaluated]) -> str:
    """The ``eval:`` overrides of the random cell that would match ``target``."""
    want = dict(target.protocol)
    if want.get("lr_source") == "learned":
        want.pop("lr_source")
        want.pop("lr", None)
    if want.get("labels") == "soft":
        want["labels"] = "teacher"
    base = closest.protocol if closest is not None else {}
    fields = {k: v for k, v in want.items() if base.get(k) != v} if closest is not None else want
    return "{" + ", ".join(f"{k}: {json.dumps(v) if isinstance(v, str) and ':' in v else v}" for k, v in sorted(fields.items())) + "}"


def _diff_by_seed(a: Evaluated, b: Evaluated) -> dict[int, float]:
    """Per seed of ``a``: ``a - b`` (``b``'s same seed, else ``b``'s mean over its seeds)."""
    fallback = b.overall()
    return {s: v - b.by_seed.get(s, fallback) for s, v in a.by_seed.items()}


def _primary(evals: list[Evaluated]) -> Optional[Evaluated]:
    """The evaluation that names a row: the shortest label (the entry without evaluation
    overrides), then the most seeds."""
    if not evals:
        return None
    return sorted(evals, key=lambda e: (len(e.label), -len(e.by_seed), e.label))[0]


# ----------------------------------------------------------------------------------------
# the scores frame
# ----------------------------------------------------------------------------------------


def score_frame(results: Results, eval_arch: Optional[str] = None) -> pd.DataFrame:
    """One row per (set configuration, label type, dataset, IPC) -- ``method`` names the
    configuration (its label evaluated without overrides), ``evaluated_as`` the label whose
    records give the row's IOR -- with the scores' per-seed
    statistics (``<score>_mean``, ``_std``, ``_n``, percentage points; LRS/ARS x 100) and
    ``missing``: what to run for the scores that could not be computed.

    Raises :class:`AnalysisError` when the records hold no random-selection evaluation at all
    (nothing to measure a gain against)."""
    runs = select_main_runs(results, eval_arch).copy()
    is_random = (runs["method"] == RANDOM) & runs["plain"].astype(bool)
    if not is_random.any():
        raise AnalysisError(
            "no random-selection records to measure gains against in " + ", ".join(results.stores)
            + ": run the sweep with random_baseline: true (the default) or add `random` to its methods"
        )
    # a set configuration: the method, the cell's config overrides and the training network (the
    # recorded full config is not used: it may hold the iteration budget or not, see the report)
    runs["setkey"] = runs["method"].astype(str) + "|" + runs["overrides"].astype(str) + "|" + \
        runs["train_arch"].astype(str)
    lm = LabelInfo(runs)
    rows = []
    for (d, ipc), g in runs[runs["ipc"].notna()].groupby(["dataset", "ipc"], sort=True):
        ipc = int(ipc)
        archs = {str(a) for a in g["eval_arch"]}
        randoms = _evaluated(g[(g["method"] == RANDOM) & g["plain"].astype(bool)])
        whole_runs = runs[(runs["method"] == WHOLE) & (runs["dataset"] == d)
                          & runs["eval_arch"].astype(str).isin(archs)]
        whole_hard = whole_runs[whole_runs["labels"] == "hard"]
        whole = _evaluated(whole_hard.assign(label=WHOLE, eval_plan="{}")) if not whole_hard.empty else []
        learned = g[~((g["method"] == RANDOM) & g["plain"].astype(bool)) & (g["method"] != WHOLE)]
        for _setkey, gs in learned.groupby("setkey", sort=True):
            evals = _evaluated(gs)
            name = _primary(evals).label
            hard = _primary([e for e in evals if e.kind == "hard"])
            for kind in sorted({e.kind for e in evals}, key=lambda k: LABEL_ORDER.get(k, 9)):
                mine = [e for e in evals if e.kind == kind]
                primary = _primary(mine)
                rows.append(_row(lm, name, d, ipc, kind, primary, mine, hard, randoms, whole))
    if not rows:
        raise AnalysisError("no condensed sets besides random selection in the records: nothing to score")
    df = pd.DataFrame(rows)
    df["ipc"] = df["ipc"].astype("Int64")
    return df


def _row(lm: LabelInfo, name: str, d: str, ipc: int, kind: str, primary: Evaluated, mine: list[Evaluated],
         hard: Optional[Evaluated], randoms: list[Evaluated], whole: list[Evaluated]) -> dict[str, Any]:
    display = lm.display.get(name, name) + ("" if kind == "hard" else f" [{kind} labels]")
    at = f"{d} IPC {ipc}"
    missing: list[tuple[str, str, str, str]] = []  # (score, row, dataset/IPC, what to run)
    scores: dict[str, dict[int, float]] = {}

    def gain(e: Evaluated, what: str) -> Optional[dict[int, float]]:
        r, closest = _match(e, randoms)
        if r is None:
            missing.append((what, display, at, f"no random record under the plan of '{e.label}': run `random` "
                            f"with eval: {_hint(e, closest)} (random_baseline: true plans it)"))
            return None
        return _diff_by_seed(e, r)

    ior = gain(primary, "IOR")
    if ior is not None:
        scores["IOR"] = ior
    hlr = None
    if hard is None:
        missing.append(("HLR", display, at, f"no hard-label evaluation of this set: run '{primary.label}' "
                        "with eval: {labels: hard}"))
    elif not whole:
        missing.append(("HLR", display, at, f"no whole-dataset record for {d}: add `whole` to the sweep"))
    else:
        w = whole[0]
        hlr = {s: w.by_seed.get(s, w.overall()) - v for s, v in hard.by_seed.items()}
        scores["HLR"] = hlr
    if ior is not None and hlr is not None:
        seeds = sorted(set(ior) & set(hlr))
        scores["LRS"] = {s: 100.0 * label_robust_score(ior[s], hlr[s]) for s in seeds}
    with_aug = _primary([e for e in mine if e.augmented])
    no_aug = _primary([e for e in mine if not e.augmented])
    if with_aug is None or no_aug is None:
        need = "augmentation: none" if no_aug is None else "augmentation: dsa"
        missing.append(("ARS", display, at, f"needs the set with and without augmentation: run "
                        f"'{primary.label}' also with eval: {{{need}}} (its random baseline is planned with it)"))
    else:
        wa, na = gain(with_aug, "ARS"), gain(no_aug, "ARS")
        if wa is not None and na is not None:
            seeds = sorted(set(wa) & set(na))
            scores["ARS"] = {s: 100.0 * augmentation_robust_score(wa[s], na[s]) for s in seeds}
    out: dict[str, Any] = {
        "method": name, "labels": kind, "evaluated_as": primary.label, "dataset": d, "ipc": ipc,
        "_display": lm.display.get(name, name), "_order": lm.order_key(name),
        "accuracy": 100.0 * primary.overall(),
    }
    for name in SCORES:
        values = scores.get(name)
        if values is not None and name in ("IOR", "HLR"):
            values = {s: 100.0 * v for s, v in values.items()}
        stat = spread(values or {})
        out[f"{name}_mean"] = stat.mean if stat else np.nan
        out[f"{name}_std"] = stat.std if stat else np.nan
        out[f"{name}_n"] = stat.n if stat else 0
    out["missing"] = " | ".join(f"{score} of {row} ({where}): {what}" for score, row, where, what in missing)
    out["_missing"] = missing
    return out


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------


def scores_table(results: Results, eval_arch: Optional[str] = None) -> Table:
    """Rows = set configuration x label type; per dataset/IPC the columns IOR, HLR, LRS, ARS
    (mean ± std (seeds)); notes name what to run for every missing score."""
    df = score_frame(results, eval_arch)
    columns = sorted({(d, int(i)) for d, i in zip(df["dataset"], df["ipc"])},
                     key=lambda c: (results.dataset_key(c[0]), c[1]))
    keys = sorted({(o, m, LABEL_ORDER.get(k, 9), k) for o, m, k in zip(df["_order"], df["method"], df["labels"])})
    rows, midrule, prev = [], set(), None
    for order, method, _lo, kind in keys:
        if prev is not None and prev != method:
            midrule.add(len(rows))
        prev = method
        sub = df[(df["method"] == method) & (df["labels"] == kind)]
        display = str(sub["_display"].iloc[0])
        row = [Cell(text=display), Cell(text=kind)]
        for d, ipc in columns:
            r = sub[(sub["dataset"] == d) & (sub["ipc"] == ipc)]
            for name in SCORES:
                if r.empty or not r.iloc[0][f"{name}_n"]:
                    row.append(Cell(text=EMPTY))
                else:
                    x = r.iloc[0]
                    row.append(Cell(stat=Stat(float(x[f"{name}_mean"]), float(x[f"{name}_std"]), int(x[f"{name}_n"]))))
        rows.append(row)
    header = ["Method", "Labels"]
    subheader = ["Method", "Labels"]
    groups: list[tuple[str, int]] = [("", 1), ("", 1)]
    for d, ipc in columns:
        groups.append((f"{results.dataset_display(d)} IPC {ipc}", len(SCORES)))
        for name in SCORES:
            header.append(f"{results.dataset_display(d)} IPC {ipc} {name}")
            subheader.append(name)
    notes = [
        "IOR: accuracy gain over random selection evaluated under the same plan (labels, loss, lr, "
        "augmentation, epochs, ZCA); HLR: whole dataset (hard labels) minus the set with hard labels "
        "(lower is better); LRS, ARS: DD-Ranking's label- and augmentation-robust scores (arXiv "
        "2505.13300; ddranking 0.2.0 formulas, lambda = 0.5), x 100. Percentage points, mean ± std "
        f"(n seeds). Labels: the label type of the row's IOR (hard = class ids, soft = the set's own, "
        f"teacher = a teacher network's). {EMPTY}: inputs missing (below)."
    ]
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for entries in df["_missing"]:
        for score, row, where, what in entries:
            grouped.setdefault((score, row, what), []).append(where)
    if grouped:
        notes.append("To fill the missing scores: " + "; ".join(
            f"{score} of {row} ({', '.join(wheres)}): {what}" for (score, row, what), wheres in grouped.items()) + ".")
    data = df.drop(columns=[c for c in df.columns if c.startswith("_")])
    return Table(name="scores", caption="Gain over same-protocol random selection and DD-Ranking scores",
                 header=header, rows=rows, data=data, align="ll" + "r" * (len(header) - 2), groups=groups,
                 subheader=subheader, midrule_before=midrule, notes=notes)


def has_scores(results: Results) -> bool:
    """Whether the records hold a random-selection evaluation and another set to compare."""
    runs = results.runs
    if runs.empty:
        return False
    rnd = (runs["method"] == RANDOM) & runs["plain"].astype(bool)
    return bool(rnd.any() and (~rnd & (runs["method"] != WHOLE)).any())
