"""Fair comparison: the sweep's same-protocol random baselines, the scores (IOR, HLR, LRS, ARS)
computed from records, and the protocol audit of tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis.load import AnalysisError, load_results
from analysis.scores import augmentation_robust_score, label_robust_score, score_frame, scores_table
from analysis.tables import main_table
from benchmarks.record import Record, dataset_fields, enrich_cell, method_fields
from benchmarks.store import Store
from benchmarks.sweep import build_sweep

E, EINV = math.e, math.exp(-1)


# ----------------------------------------------------------------------------------------
# formulas (DD-Ranking, ddranking 0.2.0 metrics/soft_label.py and metrics/aug_robust.py)
# ----------------------------------------------------------------------------------------


def test_lrs_and_ars_follow_the_published_formulas():
    assert label_robust_score(0.2, 0.1) == pytest.approx((math.exp(0.5 * 0.2 - 0.5 * 0.1) - EINV) / (E - EINV))
    assert augmentation_robust_score(0.3, 0.1) == pytest.approx((math.exp(0.5 * 0.3 + 0.5 * 0.1) - EINV) / (E - EINV))
    assert label_robust_score(0.0, 0.0) == pytest.approx((1 - EINV) / (E - EINV))
    assert label_robust_score(0.1, 0.0, lam=1.0) == pytest.approx((math.exp(0.1) - EINV) / (E - EINV))


# ----------------------------------------------------------------------------------------
# sweep: the same-protocol random baseline
# ----------------------------------------------------------------------------------------


def _sweep(tmp_path, **spec):
    base = {"datasets": ["digits"], "ipcs": [1, 10], "seeds": [0, 1], "output": str(tmp_path / "out"),
            "methods": ["dm", "dsa", "dc"], "budgets": {"eval_epochs": 5}}
    base.update(spec)
    return build_sweep(base, check_data=False, check_output=False)


def test_every_method_gets_a_random_cell_under_its_plan_once(tmp_path):
    sw = _sweep(tmp_path)
    randoms = [c for c in sw.cells if c.method == "random"]
    # dm and dsa share one plan (DSA; the epochs are fixed), dc evaluates like random: 2 plans x 2 IPCs x 2 seeds
    assert len(randoms) == 8
    assert {c.label for c in randoms} == {"random", "random (plan of dm, dsa)"}
    dsa = [c for c in randoms if c.eval]
    assert all(c.eval == {"dsa": True, "dsa_strategy": "color_crop_cutout_scale_rotate"} for c in dsa)
    assert all(c.eval_epochs == 5 and c.num_eval == sw.cells[0].num_eval for c in randoms)
    assert {(c.ipc, c.seed) for c in dsa} == {(1, 0), (1, 1), (10, 0), (10, 1)}
    off = _sweep(tmp_path, random_baseline=False)
    assert not [c for c in off.cells if c.method == "random"]


def test_an_explicit_random_entry_is_the_baseline_and_not_doubled(tmp_path):
    sw = _sweep(tmp_path, methods=["random", "dc"])
    assert sorted(c.label for c in sw.cells if c.method == "random") == ["random"] * 4


def test_learned_lr_and_own_soft_labels_translate_for_random(tmp_path):
    from benchmarks.sweep import baseline_overrides
    from methods.protocol import EvalPlan

    own = EvalPlan()
    learned = EvalPlan(lr_source="learned", lr=0.02, labels="soft", loss="soft_ce", temperature=2.0)
    out = baseline_overrides(learned, {}, own, {})
    assert out == {"labels": "teacher", "loss": "soft_ce", "lr": 0.02, "temperature": 2.0}
    teacher = baseline_overrides(EvalPlan(), {"labels": "teacher", "teacher_epochs": 3}, own, {})
    assert teacher == {"labels": "teacher", "teacher_epochs": 3}
    sw = _sweep(tmp_path, methods=[{"method": "dc", "eval": {"labels": "teacher", "temperature": 4.0}}])
    randoms = [c for c in sw.cells if c.method == "random"]
    assert len(randoms) == 4 and all(c.eval == {"labels": "teacher", "temperature": 4.0} for c in randoms)


def test_bad_teacher_keys_in_a_spec_are_named(tmp_path):
    from benchmarks.sweep import SpecError

    with pytest.raises(SpecError, match="only apply with labels=teacher"):
        _sweep(tmp_path, eval={"teacher_epochs": 3})
    with pytest.raises(SpecError, match="random_baseline: must be true or false"):
        _sweep(tmp_path, random_baseline="yes")


# ----------------------------------------------------------------------------------------
# scores from records
# ----------------------------------------------------------------------------------------

AUG = "dsa:color_crop_cutout_scale_rotate"


def _plan(augmentation="none", labels="hard", **kw):
    plan = {"labels": labels, "loss": "ce" if labels == "hard" else "kl", "temperature": 4.0, "lr": 0.01,
            "lr_source": "fixed", "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 256,
            "schedule": "reference_step", "epochs": 20, "augmentation": augmentation, "zca": False,
            "selection": "final", "val_fraction": 0.1, "dsa": augmentation != "none"}
    if labels == "teacher":
        plan.update(teacher_arch="ConvNet", teacher_epochs=20, teacher_per_view=False, teacher_test_accuracy=0.9)
    plan.update(kw)
    return plan


def _store(root: Path, entries) -> Path:
    """``entries``: (label, method, plan, {seed: [accs]}) for digits IPC 10 (whole: ipc None)."""
    (root / "records").mkdir(parents=True)
    store = Store(root)
    cells = []
    for k, (label, method, plan, accs) in enumerate(entries):
        for seed, values in accs.items():
            plan_s = plan(seed) if callable(plan) else plan
            cid = f"c{k}s{seed}"
            whole = method == "whole"
            cell = {"cell_id": cid, "dataset": "digits", "ipc": None if whole else 10, "method": method,
                    "label": label, "overrides": {}, "seed": seed, "eval_archs": ["ConvNet"], "num_eval": len(values),
                    "eval_epochs": 20, "iterations": None, "train_arch": None if method in ("random", "whole") else "ConvNet"}
            cells.append(cell)
            store.write_record(Record(
                cell_id=cid, sweep="t", dataset="digits", ipc=cell["ipc"], method=method, label=label, overrides={},
                method_config={}, seed=seed, train_arch=cell["train_arch"], eval_arch="ConvNet", num_eval=len(values),
                eval_epochs=20, eval_augmentation=plan_s["augmentation"], eval_plan=plan_s, labels=plan_s["labels"],
                accuracies=tuple(values), cost={"condense_wall_time_s": 1.0, "eval_wall_time_s": 1.0},
                **method_fields(method, {}, None), **dataset_fields("digits"),
            ))
    (root / "cells.json").write_text(json.dumps({"sweep": "t", "cells": [enrich_cell(c) for c in cells]}), encoding="utf-8")
    return root


def test_ior_uses_the_random_record_of_the_same_plan_per_seed(tmp_path):
    root = _store(tmp_path / "s", [
        ("random", "random", _plan(), {0: [0.50, 0.50], 1: [0.52, 0.52]}),
        ("random (plan of dm)", "random", _plan(AUG), {0: [0.60, 0.60], 1: [0.64, 0.64]}),
        ("dm", "dm", _plan(AUG), {0: [0.80, 0.80], 1: [0.82, 0.82]}),
        ("dm [no aug]", "dm", _plan(), {0: [0.70, 0.70], 1: [0.74, 0.74]}),
        ("whole", "whole", _plan(), {0: [0.95, 0.95], 1: [0.97, 0.97]}),
    ])
    df = score_frame(load_results([root]))
    (row,) = df[df["method"] == "dm"].to_dict("records")
    assert row["IOR_mean"] == pytest.approx(19.0)  # seeds: 80-60, 82-64 (not random without DSA)
    assert row["IOR_std"] == pytest.approx(1.0) and row["IOR_n"] == 2
    # HLR: the hard-label row of the set under its own plan, against the whole dataset per seed
    assert row["HLR_mean"] == pytest.approx(15.0)
    lrs = [100 * label_robust_score(0.20, 0.15), 100 * label_robust_score(0.18, 0.15)]
    assert row["LRS_mean"] == pytest.approx(sum(lrs) / 2)
    ars = [100 * augmentation_robust_score(0.20, 0.20), 100 * augmentation_robust_score(0.18, 0.22)]
    assert row["ARS_mean"] == pytest.approx(sum(ars) / 2)
    assert row["missing"] == ""


def test_teacher_labels_are_their_own_row_and_missing_inputs_say_what_to_run(tmp_path):
    root = _store(tmp_path / "s", [
        ("random", "random", _plan(), {0: [0.50, 0.50]}),
        ("dm", "dm", _plan(AUG), {0: [0.80, 0.80]}),
        # one teacher per seed: its seed and measured accuracy differ, the protocol does not
        ("dm [teacher]", "dm", lambda seed: _plan(AUG, labels="teacher", teacher_seed=seed,
                                                  teacher_test_accuracy=0.9 + seed / 100),
         {0: [0.85, 0.85], 1: [0.87, 0.87]}),
        ("random [teacher]", "random", lambda seed: _plan(AUG, labels="teacher", teacher_seed=seed),
         {0: [0.70], 1: [0.71]}),
    ])
    results = load_results([root])
    df = score_frame(results)
    assert set(zip(df["method"], df["labels"], df["evaluated_as"])) == {("dm", "hard", "dm"),
                                                                        ("dm", "teacher", "dm [teacher]")}
    teacher = df[df["labels"] == "teacher"].iloc[0]
    assert teacher["IOR_n"] == 2 and teacher["IOR_mean"] == pytest.approx(15.5)  # (85-70 + 87-71) / 2
    table = scores_table(results)
    text = table.to_markdown()
    assert "run `random` with eval: {augmentation: \"dsa:color_crop_cutout_scale_rotate\"" in text
    assert "add `whole` to the sweep" in text
    assert "| DM | teacher |" in text
    audit = main_table(results).notes
    assert any("Protocol audit" in n and "augmentation (dsa:color_crop_cutout_scale_rotate / none)" in n
               and "labels (hard / teacher)" in n for n in audit)


def test_scores_without_any_random_record_name_what_to_run(tmp_path):
    root = _store(tmp_path / "s", [("dm", "dm", _plan(AUG), {0: [0.80, 0.80]})])
    with pytest.raises(AnalysisError, match="no random-selection records .* random_baseline: true"):
        scores_table(load_results([root]))
