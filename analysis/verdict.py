"""Did a cell reproduce its paper? The budget it ran at, and the verdict against the paper.

**Budget** (:func:`paper_budget`), read from the store, never typed by hand. A cell runs *at the
paper's budget* when all of these hold:

* its ``cells.json`` entry exists (else the budget is unknown);
* the record has no ``variant_overrides`` (config overrides beyond its registry entry, the
  network field excluded: the method as published, :attr:`benchmarks.record.Record.plain`);
* the cell's ``iterations`` is null (the method's default), or equals the method's default
  iteration count where the store shows it (the ``method_config["iterations"]`` of a cell of the
  same method that ran with ``iterations`` null). Only a method whose recorded config has an
  ``iterations`` field counts iterations (coresets and the whole dataset have none);
* the cell's ``eval_epochs`` is null and its ``eval`` plan overrides are empty (the method's own
  evaluation protocol);
* it is not a learning-curve point (``status: curve``, an intermediate checkpoint).

A whole-dataset cell has no condensation budget: it is at budget without an ``eval_epochs``
or ``eval`` override. Otherwise the budget *differs* and :attr:`Budget.reason` says how in a few
words (``10 of 1000 iterations``, ``feature_epochs=1``, ``eval epochs 100``).

**Verdict** (:func:`verdict`) of our accuracies against a published ``mean ± std``:

    SE_combined = sqrt(s² / n + p²)

with ``s`` our population std over the ``n`` evaluation accuracies of the cell(s) pooled (seeds
× networks) and ``p`` the published std (0 when the paper gives none). The cell is
*reproduced* when ``|published mean − our mean| <= 2 · SE_combined`` (the published mean lies
within our mean ± 2 SE_combined), else *above* (ours higher) or *below* (ours lower). A cell
whose budget differs gets *budget differs* instead: an unequal-budget comparison says nothing
about fidelity (issue 15).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import pandas as pd

from analysis.load import WHOLE, Results
from analysis.plans import plan_of
from analysis.published import Published
from analysis.render import Stat

REPRODUCED = "reproduced"
ABOVE = "above"
BELOW = "below"
BUDGET_DIFFERS = "budget differs"
VERDICTS = (REPRODUCED, ABOVE, BELOW, BUDGET_DIFFERS)
SE_FACTOR = 2.0
"""The published mean must lie within our mean ± SE_FACTOR · SE_combined."""

VERDICT_NOTE = (
    "Verdict: reproduced when the published mean lies within ours ± 2·SE, "
    "SE = sqrt(std²/n + published std²) (n = our evaluation runs); else above/below; "
    "budget differs when the run's budget is not the paper's (the reason is read from the store)."
)


@dataclass(frozen=True)
class Budget:
    """Whether a cell ran at the paper's budget, and if not, why (a short phrase)."""

    at_paper: bool
    reason: str = ""

    @staticmethod
    def combine(budgets: "list[Budget]") -> "Budget":
        """The budget of pooled cells: at the paper's only when every cell is; the distinct
        reasons joined with ``; `` in first-seen order."""
        reasons = list(dict.fromkeys(b.reason for b in budgets if not b.at_paper))
        return Budget(not reasons and bool(budgets), "; ".join(reasons) if budgets else "no cell")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def paper_budget(
    cell: Optional[Mapping[str, Any]],
    *,
    variant_overrides: Mapping[str, Any] | str = "",
    method_config: Mapping[str, Any] | str = "",
    default_iterations: Optional[int] = None,
    curve_iteration: Optional[int] = None,
) -> Budget:
    """The budget of one cell (module doc): ``cell`` its ``cells.json`` entry (None: not in
    the store's plan), ``variant_overrides`` and ``method_config`` its record's (mappings or the
    JSON strings of the loaded frames), ``default_iterations`` the method's default iteration
    count when the store shows it, ``curve_iteration`` the iteration of a curve point."""
    reasons: list[str] = []
    if curve_iteration is not None:
        reasons.append(f"curve point at iteration {curve_iteration}")
    if cell is None:
        return Budget(False, "; ".join([*reasons, "cell not in cells.json (budget unknown)"]))
    whole = str(cell.get("method")) == WHOLE
    variant = plan_of(variant_overrides)
    if variant and not whole:
        reasons.append(", ".join(f"{k}={_show(variant[k])}" for k in sorted(variant)))
    config = plan_of(method_config)
    its = cell.get("iterations")
    if its is not None and not whole and "iterations" in config:
        if default_iterations is None:
            reasons.append(f"{its} iterations (the store shows no default-budget cell of this method)")
        elif int(its) != int(default_iterations):
            reasons.append(f"{its} of {default_iterations} iterations")
    epochs = cell.get("eval_epochs")
    if epochs is not None:
        reasons.append(f"eval epochs {epochs}")
    plan = plan_of(cell.get("eval"))
    if plan:
        reasons.append("eval " + ", ".join(f"{k}={_show(plan[k])}" for k in sorted(plan)))
    return Budget(not reasons, "; ".join(reasons))


def default_iterations(results: Results) -> dict[str, int]:
    """Registry method -> its default iteration count as the store shows it: the
    ``method_config["iterations"]`` of a record whose cell ran with ``iterations`` null (the
    most common value when several disagree, the smallest on a tie)."""
    rec = results.records
    if rec.empty:
        return {}
    seen: dict[str, dict[int, int]] = {}
    for store, cid, method, cfg in zip(rec["store"], rec["cell_id"], rec["method"], rec["method_config"]):
        spec = results.cell_specs.get((str(store), str(cid)))
        if spec is None or spec.get("iterations") is not None:
            continue
        value = plan_of(cfg).get("iterations")
        if isinstance(value, int) and not isinstance(value, bool):
            counts = seen.setdefault(str(method), {})
            counts[value] = counts.get(value, 0) + 1
    return {m: sorted(c, key=lambda v: (-c[v], v))[0] for m, c in seen.items()}


def record_budgets(results: Results, frame: Optional[pd.DataFrame] = None, *, curve: bool = False) -> dict[tuple[str, str, Any], Budget]:
    """``(store, cell_id, iterations) -> Budget`` for every record of ``frame`` (default the
    records; ``curve=True`` for rows of :attr:`Results.curves`, whose ``iterations`` is the
    curve point's)."""
    frame = results.records if frame is None else frame
    out: dict[tuple[str, str, Any], Budget] = {}
    if frame.empty:
        return out
    defaults = default_iterations(results)
    for store, cid, method, variant, cfg, its in zip(
        frame["store"], frame["cell_id"], frame["method"], frame["variant_overrides"], frame["method_config"],
        frame["iterations"],
    ):
        key = (str(store), str(cid), None if its is None or pd.isna(its) else int(its))
        if key in out:
            continue
        out[key] = paper_budget(
            results.cell_specs.get((str(store), str(cid))), variant_overrides=variant, method_config=cfg,
            default_iterations=defaults.get(str(method)), curve_iteration=key[2] if curve else None,
        )
    return out


def group_budget(results: Results, runs: pd.DataFrame, budgets: Optional[dict] = None) -> Budget:
    """The pooled budget of the records behind ``runs`` (rows of :attr:`Results.runs`)."""
    budgets = record_budgets(results) if budgets is None else budgets
    keys = dict.fromkeys(
        (str(s), str(c), None if i is None or pd.isna(i) else int(i))
        for s, c, i in zip(runs["store"], runs["cell_id"], runs["iterations"])
    )
    return Budget.combine([budgets.get(k, Budget(False, "record not loaded")) for k in keys])


def combined_se(ours: Stat, published: Published) -> float:
    """``sqrt(std² / n + published_std²)`` (published std 0 when the paper gives none)."""
    p = 0.0 if published.std is None or math.isnan(published.std) else float(published.std)
    return math.sqrt(ours.std ** 2 / ours.n + p ** 2)


def verdict(ours: Stat, published: Published, budget: Budget = Budget(True)) -> str:
    """One of :data:`VERDICTS` (module doc)."""
    if not budget.at_paper:
        return BUDGET_DIFFERS
    if abs(published.mean - ours.mean) <= SE_FACTOR * combined_se(ours, published):
        return REPRODUCED
    return ABOVE if ours.mean > published.mean else BELOW


__all__ = [
    "ABOVE", "BELOW", "BUDGET_DIFFERS", "Budget", "REPRODUCED", "SE_FACTOR", "VERDICTS", "VERDICT_NOTE",
    "combined_se", "default_iterations", "group_budget", "paper_budget", "record_budgets", "verdict",
]
