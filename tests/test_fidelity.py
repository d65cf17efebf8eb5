"""Tests for the verdicts, the fidelity table and the learning curves (``analysis.verdict``,
``analysis.fidelity``, ``analysis.figures.curve_figure``).

The store is written as JSON files directly (records through :class:`benchmarks.record.Record`,
no torch): FashionMNIST cells at the papers' budgets (random and DC at IPC 1, the whole
dataset) beside cells whose budget differs in each way the store can say (fewer iterations, a
config override, an eval-epochs override, an evaluation-plan override), and curve records of
the DC run at 10 and 100 iterations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis.cli import main as cli_main
from analysis.fidelity import curve_frame, curve_table, fidelity_frame, fidelity_table
from analysis.load import load_results
from analysis.published import Published
from analysis.render import Stat
from analysis.tables import main_table
from analysis.verdict import (
    ABOVE,
    BELOW,
    BUDGET_DIFFERS,
    REPRODUCED,
    Budget,
    combined_se,
    paper_budget,
    verdict,
)
from benchmarks.record import Record

PLAN = {"labels": "hard", "loss": "ce", "lr": 0.01, "lr_source": "fixed", "optimizer": "sgd", "momentum": 0.9,
        "weight_decay": 0.0005, "batch_size": 256, "schedule": "reference_step", "epochs": 300,
        "augmentation": "none", "zca": False, "selection": "final", "val_fraction": 0.1}
DSA_PLAN = {**PLAN, "epochs": 1000, "augmentation": "dsa"}

INFO = {
    "random": ("Random", "coreset", 10, False),
    "herding": ("Herding", "coreset", 20, False),
    "kcenter": ("K-Center", "coreset", 30, False),
    "dc": ("DC", "gradient_matching", 100, True),
    "dsa": ("DSA", "gradient_matching", 110, True),
    "whole": ("Whole dataset", "whole", 10**6, False),
}


def _info(method: str) -> dict:
    display, family, order, learned = INFO[method]
    return {"name": method, "display": display, "family": family, "family_display": family, "order": order,
            "variant_of": None, "overrides": {}, "description": display, "learned": learned}


def _cell(cid: str, method: str, ipc, seed: int, *, iterations=None, eval_epochs=None, eval=None,
          overrides=None) -> dict:
    return {
        "cell_id": cid, "dataset": "fashionmnist", "dataset_display": "FashionMNIST", "dataset_order": 1,
        "ipc": ipc, "method": method, "label": method, "overrides": dict(overrides or {}), "seed": seed,
        "eval_archs": ["ConvNet"], "num_eval": 2, "eval_epochs": eval_epochs, "iterations": iterations,
        "train_arch": None if method in ("random", "whole") else "ConvNet", "eval": dict(eval or {}),
        "method_info": _info(method), "components": {}, "variant_overrides": dict(overrides or {}),
    }


def _record(cell: dict, accs, *, config: dict, plan: dict = PLAN, iterations=None, status: str = "done",
            condense_s: float = 100.0, eval_s: float = 20.0) -> dict:
    rec = Record(
        cell_id=cell["cell_id"], dataset="fashionmnist", ipc=cell["ipc"], method=cell["method"],
        label=cell["label"], eval_arch="ConvNet", seed=cell["seed"], accuracies=tuple(accs), sweep="fid",
        overrides=cell["overrides"], method_config=config, method_info=cell["method_info"],
        variant_overrides=cell["variant_overrides"], dataset_display="FashionMNIST", dataset_order=1,
        iterations=iterations if iterations is not None else cell["iterations"], train_arch=cell["train_arch"],
        num_eval=len(accs), eval_epochs=plan["epochs"], eval_augmentation=plan["augmentation"], eval_plan=plan,
        cost={"condense_wall_time_s": None if cell["method"] == "whole" else condense_s, "eval_wall_time_s": eval_s},
        host="vm", device="cpu", created="2026-12-04T00:00:00Z",
    ).to_json()
    rec["status"] = status
    return rec


def build_store(root: Path) -> Path:
    (root / "records").mkdir(parents=True)
    (root / "curves").mkdir()
    cells, files = [], {}

    def add(cell, accs, **kw):
        cells.append(cell)
        files[f"records/{cell['cell_id']}__ConvNet.json"] = _record(cell, accs, **kw)

    dc_cfg = {"iterations": 1000, "outer_loop": 1, "inner_loop": 1}
    for seed, accs in ((0, [0.510, 0.520]), (1, [0.505, 0.525])):  # mean 51.5 vs published 51.4 ± 3.8
        add(_cell(f"rand1-s{seed}", "random", 1, seed), accs, config={})
    for seed, accs in ((0, [0.700, 0.710]), (1, [0.705, 0.705])):  # mean 70.5 vs 70.5 ± 0.6
        add(_cell(f"dc1-s{seed}", "dc", 1, seed), accs, config=dc_cfg, condense_s=5000.0, eval_s=60.0)
        c = cells[-1]
        for it, curve_accs in ((10, [0.60, 0.62]), (100, [0.66, 0.66])):
            files[f"curves/{c['cell_id']}__ConvNet__it{it:06d}.json"] = _record(
                c, [a + 0.002 * seed for a in curve_accs], config=dc_cfg, iterations=it, status="curve")
    add(_cell("dc10-s0", "dc", 10, 0, iterations=10), [0.60, 0.61], config={**dc_cfg, "iterations": 10})
    add(_cell("herd1-s0", "herding", 1, 0, overrides={"feature_epochs": 1}), [0.60, 0.60], config={"feature_epochs": 1})
    add(_cell("dsa1-s0", "dsa", 1, 0, eval_epochs=100), [0.69, 0.69], config=dc_cfg, plan={**DSA_PLAN, "epochs": 100})
    add(_cell("kc1-s0", "kcenter", 1, 0, eval={"epochs": 50}), [0.50, 0.52], config={}, plan={**PLAN, "epochs": 50})
    add(_cell("whole-s0", "whole", None, 0), [0.930, 0.932], config={})  # 93.1 vs 93.5 ± 0.1: below
    for rel, data in files.items():
        (root / rel).write_text(json.dumps(data), encoding="utf-8")
    (root / "cells.json").write_text(json.dumps({"sweep": "fid", "cells": cells}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("fid") / "store")


@pytest.fixture(scope="module")
def results(store):
    return load_results([store])


# ----------------------------------------------------------------------------------------
# verdict
# ----------------------------------------------------------------------------------------


def test_combined_se_formula():
    assert combined_se(Stat(70.0, 2.0, 4), Published(70.0, 0.5, "C", "")) == pytest.approx(math.sqrt(1.0 + 0.25))
    assert combined_se(Stat(70.0, 2.0, 4), Published(70.0, None, "U", "")) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "ours, pub, expected",
    [
        (Stat(70.0, 1.0, 4), Published(71.0, 0.0, "C", ""), REPRODUCED),  # |diff| = 2 SE exactly
        (Stat(70.0, 1.0, 4), Published(71.0 + 1e-6, 0.0, "C", ""), BELOW),  # just outside, ours lower
        (Stat(70.0, 1.0, 4), Published(69.0 - 1e-6, 0.0, "C", ""), ABOVE),  # just outside, ours higher
        (Stat(70.0, 1.0, 4), Published(69.0 + 1e-6, None, "U", ""), REPRODUCED),  # just inside, no paper std
        (Stat(70.0, 0.0, 1), Published(70.9, 0.5, "C", ""), REPRODUCED),  # the paper's std alone: 2 * 0.5
        (Stat(70.0, 0.0, 1), Published(71.0 + 1e-6, 0.5, "C", ""), BELOW),
        (Stat(70.0, 3.0, 100), Published(70.7, 0.1, "C", ""), BELOW),  # many runs: a small SE
    ],
)
def test_verdict_boundaries(ours, pub, expected):
    assert verdict(ours, pub) == expected


def test_verdict_budget_differs_wins():
    assert verdict(Stat(70.0, 1.0, 4), Published(70.0, 0.5, "C", ""), Budget(False, "x")) == BUDGET_DIFFERS


# ----------------------------------------------------------------------------------------
# budget
# ----------------------------------------------------------------------------------------


def test_paper_budget_reads_each_difference():
    base = _cell("c", "dc", 1, 0)
    cfg = {"iterations": 1000}
    assert paper_budget(base, method_config=cfg, default_iterations=1000) == Budget(True, "")
    assert paper_budget(_cell("c", "dc", 1, 0, iterations=10), method_config={"iterations": 10},
                        default_iterations=1000) == Budget(False, "10 of 1000 iterations")
    # iterations given explicitly and equal to the default: at the paper's budget
    assert paper_budget(_cell("c", "dc", 1, 0, iterations=1000), method_config=cfg,
                        default_iterations=1000).at_paper
    unknown = paper_budget(_cell("c", "dc", 1, 0, iterations=10), method_config=cfg)
    assert not unknown.at_paper and unknown.reason.startswith("10 iterations")
    assert paper_budget(base, variant_overrides={"feature_epochs": 1, "lr_img": 0.1}).reason == "feature_epochs=1, lr_img=0.1"
    assert paper_budget(base, variant_overrides='{"dsa": true}').reason == "dsa=true"  # the frames' JSON strings
    assert paper_budget(_cell("c", "dc", 1, 0, eval_epochs=100)).reason == "eval epochs 100"
    assert paper_budget(_cell("c", "dc", 1, 0, eval={"epochs": 50, "zca": True})).reason == "eval epochs=50, zca=true"
    both = paper_budget(_cell("c", "dc", 1, 0, iterations=10, eval_epochs=100), method_config=cfg, default_iterations=1000)
    assert both.reason == "10 of 1000 iterations; eval epochs 100"
    assert paper_budget(None) == Budget(False, "cell not in cells.json (budget unknown)")
    curve = paper_budget(base, method_config=cfg, default_iterations=1000, curve_iteration=50)
    assert curve == Budget(False, "curve point at iteration 50")


def test_paper_budget_ignores_iterations_of_methods_without_them():
    # a coreset has no iterations field: a sweep-wide iterations budget does not change its result
    assert paper_budget(_cell("c", "random", 1, 0, iterations=10), method_config={}).at_paper
    whole = _cell("w", "whole", None, 0, iterations=10)
    assert paper_budget(whole, method_config={}).at_paper
    assert paper_budget(_cell("w", "whole", None, 0, eval_epochs=20)).reason == "eval epochs 20"


def test_budget_combine():
    assert Budget.combine([Budget(True), Budget(True)]) == Budget(True, "")
    assert Budget.combine([Budget(True), Budget(False, "a"), Budget(False, "a"), Budget(False, "b")]) == Budget(False, "a; b")


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------


def test_curve_records_are_not_records(results):
    assert len(results.records) == 9 and set(results.records["cell_id"]) == {
        "rand1-s0", "rand1-s1", "dc1-s0", "dc1-s1", "dc10-s0", "herd1-s0", "dsa1-s0", "kc1-s0", "whole-s0"}
    assert results.missing.empty and not results.problems
    assert sorted(set(results.curves["iterations"])) == [10, 100] and len(results.curves) == 8
    # the main table pools the final records only
    d = main_table(results).data.set_index(["method", "ipc"])
    assert d.loc[("dc", 1), "n"] == 4 and d.loc[("dc", 1), "mean"] == pytest.approx(70.5)


def test_main_table_verdicts(results):
    t = main_table(results, published=True)
    d = t.data.set_index(["method", "ipc"])
    assert d.loc[("random", 1), "verdict"] == REPRODUCED
    assert d.loc[("dc", 1), "verdict"] == REPRODUCED and d.loc[("dc", 1), "budget"] == ""
    assert d.loc[("dc", 10), "verdict"] == BUDGET_DIFFERS and d.loc[("dc", 10), "budget"] == "10 of 1000 iterations"
    assert d.loc[("dsa", 1), "budget"] == "eval epochs 100"
    assert d.loc[("kcenter", 1), "budget"] == "eval epochs=50"
    whole = t.data[t.data["method"] == "whole"].iloc[0]
    assert whole["verdict"] == BELOW
    md = t.to_markdown()
    assert "**70.5** ± 0.4 (4) · 70.5 ± 0.6 [C] · 0.0 · reproduced" in md
    assert "budget differs" in md and "Verdict: reproduced when" in md
    assert r"{\scriptsize reproduced}" in t.to_latex()
    assert "verdict" in t.to_csv().splitlines()[0].split(",")
    assert "verdict" not in main_table(results).to_csv().splitlines()[0]


def test_fidelity_lists_only_cells_at_the_papers_budget(results):
    df = fidelity_frame(results)
    assert list(zip(df["method"], df["ipc"].astype(object).where(df["ipc"].notna(), None))) == [
        ("random", 1), ("dc", 1), ("whole", None)]
    dc = df.set_index("method").loc["dc"]
    assert (dc["n_sets"], dc["n_networks"], dc["published_mean"], dc["verdict"]) == (2, 4, 70.5, REPRODUCED)
    assert dc["wall_time_s"] == pytest.approx(2 * 5000.0 + 2 * 60.0)  # condense + eval, summed over the sets
    assert df.set_index("method").loc["whole", "wall_time_s"] == pytest.approx(20.0)  # no condensation
    t = fidelity_table(results)
    assert t.header == ["Dataset", "IPC", "Method", "Ours", "Sets", "Networks", "Published", "Difference",
                        "Verdict", "Wall time"]
    assert "| FashionMNIST | 1 | DC | 70.5 ± 0.4 | 2 | 4 | 70.5 ± 0.6 [C] | 0.0 | reproduced | 2.8 h |" in t.to_markdown()
    cols = t.to_csv().splitlines()[0].split(",")
    assert cols == ["dataset", "ipc", "method", "mean", "std", "n_sets", "n_networks", "published_mean",
                    "published_std", "published_confirmed", "published_source", "diff", "se_combined", "verdict",
                    "condense_time_s", "eval_time_s", "wall_time_s"]
    assert r"\begin{tabular}{lrlrrrrrlr}" in t.to_latex()


def test_fidelity_all_adds_budget_differs_rows_with_reason(results):
    df = fidelity_frame(results, include_all=True).set_index(["method", "ipc"])
    assert df.loc[("dc", 10), "budget"] == "10 of 1000 iterations"
    assert df.loc[("herding", 1), "budget"] == "feature_epochs=1"
    assert df.loc[("dsa", 1), "budget"] == "eval epochs 100"
    assert set(df["verdict"]) == {REPRODUCED, BUDGET_DIFFERS, BELOW}
    t = fidelity_table(results, include_all=True)
    assert t.header[-1] == "Budget" and "budget" in t.to_csv().splitlines()[0].split(",")


def test_fidelity_without_cells_at_budget_says_what_to_do(tmp_path):
    root = tmp_path / "s"
    (root / "records").mkdir(parents=True)
    cell = _cell("dc10", "dc", 10, 0, iterations=10)
    (root / "records" / "dc10__ConvNet.json").write_text(json.dumps(_record(cell, [0.6, 0.6], config={"iterations": 10})))
    (root / "cells.json").write_text(json.dumps({"sweep": "x", "cells": [cell]}))
    res = load_results([root])
    with pytest.raises(Exception, match="--all lists the cells whose budget differs"):
        fidelity_table(res)
    row = fidelity_frame(res, include_all=True).iloc[0]
    assert row["budget"].startswith("10 iterations (the store shows no default-budget cell")


def test_curve_table(results):
    t = curve_table(results)
    assert t.header == ["Dataset", "IPC", "Method", "Evaluated on", "it 10", "it 100", "it 1000", "Published"]
    md = t.to_markdown()
    assert "| FashionMNIST | 1 | DC | ConvNet | 61.1 ± 1.0 (4) | 66.1 ± 0.1 (4) | 70.5 ± 0.4 (4) | 70.5 ± 0.6 [C] |" in md
    df = curve_frame(results)
    assert list(df["iterations"]) == [10, 100, 1000] and list(df["final"]) == [False, False, True]
    cols = t.to_csv().splitlines()[0].split(",")
    assert cols == ["dataset", "ipc", "method", "eval_arch", "iterations", "mean", "std", "n", "final",
                    "published_mean", "published_std", "published_confirmed"]


def test_curve_figure_draws_published_and_random_lines(results):
    from analysis.figures import curve_figure

    fig = curve_figure(results)
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "DC published [C]" in labels and "Random (same protocol)" in labels
    random_line = next(ln for ln in ax.get_lines() if ln.get_label() == "Random (same protocol)")
    assert random_line.get_ydata()[0] == pytest.approx(51.5)
    assert ax.get_xscale() == "log"
    pub = next(ln for ln in ax.get_lines() if ln.get_label() == "DC published [C]")
    assert pub.get_ydata()[0] == pytest.approx(70.5) and pub.get_linestyle() == "--"


def test_bad_curve_file_is_reported_not_loaded(tmp_path):
    root = build_store(tmp_path / "s")
    good = json.loads((root / "curves" / "dc1-s0__ConvNet__it000010.json").read_text())
    (root / "curves" / "dc1-s0__ConvNet__it000020.json").write_text(json.dumps({**good, "status": "done"}))
    (root / "curves" / "dc1-s0__ConvNet__it000030.json").write_text(json.dumps({**good, "iterations": None}))
    res = load_results([root])
    reasons = sorted(p.reason for p in res.problems)
    assert reasons == ["iterations is None, expected a positive integer (curve record)",
                       "status is 'done', not 'curve' (not a curve record)"]
    assert sorted(set(res.curves["iterations"])) == [10, 100] and len(res.records) == 9


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def test_cli_fidelity_curve_and_figure(store, tmp_path, capsys):
    assert cli_main(["table", "fidelity", str(store), "--all", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "10 of 1000 iterations" in out.replace('"', "")
    assert cli_main(["table", "curve", str(store)]) == 0
    assert "it 1000" in capsys.readouterr().out
    figdir = tmp_path / "figs"
    figdir.mkdir()
    assert cli_main(["figure", "curve", str(store), "-o", str(figdir)]) == 0
    assert (figdir / "curve.png").stat().st_size > 0 and (figdir / "curve.pdf").stat().st_size > 0
    assert cli_main(["summary", str(store)]) == 0
    assert "curve records: 4 (learning-curve points of 2 cell(s))" in capsys.readouterr().out


def test_cli_user_errors_are_one_line(store, tmp_path, capsys):
    assert cli_main(["table", "main", str(store), "--all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["condbench-analysis: error: --all applies to the fidelity table only; drop it or use `table fidelity`"]
    root = tmp_path / "nocurves"
    (root / "records").mkdir(parents=True)
    cell = _cell("r", "random", 1, 0)
    (root / "records" / "r__ConvNet.json").write_text(json.dumps(_record(cell, [0.5, 0.5], config={})))
    (root / "cells.json").write_text(json.dumps({"sweep": "x", "cells": [cell]}))
    assert cli_main(["table", "curve", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no curve records" in err[0]


def test_report_has_fidelity_and_curves(store, tmp_path):
    out = tmp_path / "report"
    assert cli_main(["report", str(store), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## Fidelity: cells at the papers' budgets" in text and "## Learning curves" in text
    for name in ("fidelity", "curve", "main_published"):
        for ext in ("md", "tex", "csv"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0
    assert (out / "figures" / "curve.png").stat().st_size > 0 and "figures/curve.png" in text
