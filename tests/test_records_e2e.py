"""Producer to consumer: a real (tiny) debug sweep writes a results store, and every table and
the report are built from what it wrote -- no hand-written records.

The sweep runs on the bundled ``digits`` dataset with tiny budgets (IPC 1, one evaluation
network, ``eval_epochs`` 1, one condensation iteration, CAFE's loops capped at two passes):
random selection, DC, CAFE and two CAFE variants (the registered ``cafe_dsa`` written as
``{method: cafe, dsa: true}``, and a free-label ablation), the whole dataset, evaluated on
ConvNet and MLP (for the cross-architecture table), plus the same-protocol random baseline the
sweep plans for CAFE+DSA (random selection evaluated with DSA; every other method here
evaluates like random at one epoch), which the scores table pairs with it. It checks that the registry metadata
travels through ``cells.json`` and the records into the tables: renaming a method's display
name in the registry before the sweep renames its table row.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from analysis.ablation import ablation_table
from analysis.load import load_results
from analysis.report import write_report
from analysis.scores import scores_table
from analysis.tables import build_table, cost_table, cross_table, main_table
from benchmarks import sweep_cli
from benchmarks.record import RECORD_SCHEMA_VERSION, WHOLE_INFO, Record

CAFE_FAST = {"max_loop_steps": 2, "budgets": {"iterations": 1}}


def _spec(tmp_path: Path) -> Path:
    spec = {
        "name": "e2e",
        "datasets": ["digits"],
        "ipcs": [1],
        "methods": [
            "random",
            {"method": "dc", "budgets": {"iterations": 1}},
            {"method": "cafe", "label": "cafe", **CAFE_FAST},
            {"method": "cafe", "dsa": True, "label": "cafe_dsa", **CAFE_FAST},
            {"method": "cafe", "discrimination_weight": 0.0, "label": "w/o discrimination", **CAFE_FAST},
            "whole",
        ],
        "eval_archs": ["ConvNet", "MLP"],
        "seeds": [0],
        "num_eval": 1,
        "budgets": {"eval_epochs": 1},
        "output": str(tmp_path / "out"),
        "random_baseline": True,
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _run(tmp_path: Path) -> Path:
    assert sweep_cli.main(["run", str(_spec(tmp_path)), "--executor", "debug"]) == 0
    return tmp_path / "out"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("e2e"))


def test_records_carry_the_registry_metadata(store):
    recs = [Record.from_json(json.loads(p.read_text())) for p in sorted((store / "records").glob("*.json"))]
    assert len(recs) == 7 * 2 and {r.schema_version for r in recs} == {RECORD_SCHEMA_VERSION}
    by_label = {(r.label, r.eval_arch): r for r in recs}
    dsa = by_label[("cafe_dsa", "ConvNet")]
    assert dsa.method == "cafe" and dsa.method_info["name"] == "cafe_dsa"  # resolved by the registry
    assert dsa.method_info["display"] == "CAFE+DSA" and dsa.components["DSA"] is True
    assert by_label[("w/o discrimination", "ConvNet")].components["Discrimination"] is False
    assert by_label[("w/o discrimination", "ConvNet")].variant_overrides == {"discrimination_weight": 0.0,
                                                                              "max_loop_steps": 2}
    assert by_label[("random", "ConvNet")].method_info["family"] == "coreset"
    baseline = by_label[("random (plan of cafe_dsa)", "ConvNet")]
    assert baseline.method == "random" and baseline.eval_plan["augmentation"].startswith("dsa:")
    assert baseline.eval_plan["augmentation"] == dsa.eval_plan["augmentation"]
    assert by_label[("random", "ConvNet")].eval_plan["augmentation"] == "none"
    whole = by_label[("whole dataset", "ConvNet")]
    assert whole.method_info == WHOLE_INFO and whole.labels == "hard"
    for r in recs:
        assert r.eval_plan and r.eval_plan.get("epochs") == r.eval_epochs
        assert r.labels == "hard" and r.dataset_display
    cells = json.loads((store / "cells.json").read_text())["cells"]
    assert {c["method_info"]["name"] for c in cells} == {"random", "dc", "cafe", "cafe_dsa", "whole"}
    assert all(isinstance(c["components"], dict) and "dataset_display" in c for c in cells)


def test_every_table_and_the_report_from_the_sweeps_store(store, tmp_path):
    res = load_results([store])
    assert not res.problems and res.missing.empty
    main = main_table(res)
    # registry order: the methods as published (coreset, then gradient matching), then the
    # variants (every CAFE row here caps its loops: an override) by registry order, whole last
    assert [r[0].text for r in main.rows] == ["Random", "random (plan of cafe_dsa)", "DC", "CAFE",
                                              "w/o discrimination", "CAFE+DSA", "Whole dataset"]
    assert main.data["n"].tolist() == [1] * 7
    assert any(n.startswith("Protocol audit") and "augmentation" in n for n in main.notes)
    scores = scores_table(res)
    d = scores.data.set_index("method")
    # CAFE+DSA against random with DSA, the others against plain random: both records exist
    assert (d["IOR_n"] == 1).all() and (d["HLR_n"] == 1).all() and (d["LRS_n"] == 1).all()
    cafe_dsa = d.loc["cafe_dsa"]
    by = {(r["label"]): r["accuracy_mean"] for _, r in res.records[res.records["eval_arch"] == "ConvNet"].iterrows()}
    assert cafe_dsa["IOR_mean"] == pytest.approx(by["cafe_dsa"] - by["random (plan of cafe_dsa)"])
    cross = cross_table(res)
    assert cross.header[4:] == ["ConvNet", "MLP"]
    assert [r[2].text for r in cross.rows] == ["Random", "random (plan of cafe_dsa)", "DC", "CAFE",
                                               "w/o discrimination", "CAFE+DSA"]
    abl = ablation_table(res)
    assert abl.caption.startswith("CAFE ablation")
    d = abl.data.set_index("variant")
    assert list(d.index) == ["cafe", "cafe_dsa", "w/o discrimination"]
    assert bool(d.loc["cafe", "reference"]) and d.loc["cafe", "delta"] == 0.0
    assert d.loc["w/o discrimination", "overrides"] == "discrimination_weight=0"  # max_loop_steps is shared
    assert not d.loc["w/o discrimination", "discrimination"] and d.loc["cafe_dsa", "dsa"]
    assert "max_loop_steps=2" in abl.notes[-1]
    cost = cost_table(res)
    assert list(cost.data["method"]) == ["random", "random (plan of cafe_dsa)", "dc", "cafe", "w/o discrimination",
                                         "cafe_dsa", "whole dataset"]
    for kind in ("main", "cross", "ablation", "cost", "scores"):
        for fmt in ("md", "latex", "csv"):
            assert build_table(kind, res).render(fmt).strip()
    summary = write_report([store], tmp_path / "report", results=res)
    text = summary.report.read_text()
    for section in ("## Main table", "## Scores", "## Cross-architecture", "## CAFE ablation", "## Cost"):
        assert section in text
    # digits has no published numbers (so no published column and no fidelity table); every
    # other table was written
    assert [s for s in summary.skipped if s.startswith(("table", "ablation", "cross"))] == [
        "table main_published: no published number matches these datasets/IPCs/methods",
        "table fidelity: no cell ran at the paper's budget with a published number "
        "(`table fidelity --all` lists the others with the reason)"]
    for name in ("main", "scores", "cross", "ablation", "cost"):
        assert (tmp_path / "report" / "tables" / f"{name}.tex").stat().st_size > 0
    assert (tmp_path / "report" / "figures" / "gain_over_random.png").stat().st_size > 0


def test_renaming_a_display_name_in_the_registry_renames_the_table_row(tmp_path, monkeypatch):
    from methods import registry

    renamed = dataclasses.replace(registry.method_info("dc"), display="Gradient Matching")
    original_get = registry.METHODS.get
    monkeypatch.setattr(registry.METHODS, "get", lambda name: renamed if str(name).lower() == "dc" else original_get(name))
    spec = yaml.safe_load(_spec(tmp_path).read_text())
    spec["methods"] = ["random", {"method": "dc", "budgets": {"iterations": 1}}]
    spec["eval_archs"] = ["ConvNet"]
    (tmp_path / "e2e.yaml").write_text(yaml.safe_dump(spec))
    assert sweep_cli.main(["run", str(tmp_path / "e2e.yaml"), "--executor", "debug"]) == 0
    res = load_results([tmp_path / "out"])
    assert [r[0].text for r in main_table(res).rows] == ["Random", "Gradient Matching"]
    cells = json.loads((tmp_path / "out" / "cells.json").read_text())["cells"]
    assert {c["method_info"]["display"] for c in cells} == {"Random", "Gradient Matching"}


def _v1_record(cell_id: str, method: str, overrides: dict, config: dict) -> dict:
    return {
        "schema": "condensation-bench/record", "schema_version": 1, "status": "done", "cell_id": cell_id,
        "sweep": "old", "dataset": "mnist", "ipc": 1, "method": method, "label": method,
        "overrides": overrides, "method_config": config, "seed": 0, "train_arch": "ConvNet",
        "eval_arch": "ConvNet", "num_eval": 1, "eval_epochs": 300, "eval_augmentation": "dsa",
        "accuracies": [0.5], "cost": {}, "synset_path": None, "code_version": "x", "host": "h",
        "device": "cpu", "created": "2026-01-01T00:00:00+00:00",
    }


def test_a_store_of_version_1_records_is_upgraded_with_the_registry_metadata(tmp_path):
    """Launching a sweep into an old store (Store.init) upgrades its version-1 records: the
    registry decides their row (cafe + dsa is cafe_dsa), name and components; a method that is
    no longer registered keeps its record as it was."""
    from benchmarks.store import Store

    store = Store(tmp_path / "old")
    old = {
        "a": _v1_record("a", "cafe", {"dsa": True, "model": "ConvNet"}, {"dsa": True, "model": "ConvNet"}),
        "b": dict(_v1_record("b", "cafe", {"discrimination_weight": 0.0}, {"discrimination_weight": 0.0}),
                  label="w/o disc"),
        "c": _v1_record("c", "gone_method", {}, {}),
    }
    store.records_dir.mkdir(parents=True)
    for cid, rec in old.items():
        store.record_path(cid, "ConvNet").write_text(json.dumps(rec))
    store.init("old", "name: old\n", [])
    recs = {p.name.split("__")[0]: json.loads(p.read_text()) for p in store.records_dir.glob("*.json")}
    assert recs["c"] == old["c"]  # unknown method: untouched, read by its raw name
    for cid in ("a", "b"):
        assert recs[cid]["schema_version"] == RECORD_SCHEMA_VERSION
        assert {k: recs[cid][k] for k in old[cid]} == {**old[cid], "schema_version": RECORD_SCHEMA_VERSION}
    a, b = Record.from_json(recs["a"]), Record.from_json(recs["b"])
    assert a.entry == "cafe_dsa" and a.plain and a.components["DSA"] is True
    assert a.dataset_display == "MNIST" and a.eval_plan == {"epochs": 300, "augmentation": "dsa"}
    assert b.entry == "cafe" and b.variant_overrides == {"discrimination_weight": 0.0}
    assert b.components["Discrimination"] is False
    rows = [r[0].text for r in main_table(load_results([tmp_path / "old"])).rows]
    assert rows == ["CAFE+DSA", "gone_method", "w/o disc"]  # registered as published, unknown, variant
