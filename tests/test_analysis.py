"""Tests for ``analysis``: loading a results store, paper tables (golden files), figures, CLI.

The fixture store below is written with the suite's own writer: every record is a
:class:`benchmarks.record.Record` whose registry metadata comes from the method registry
(:func:`benchmarks.record.method_fields`), written by :meth:`benchmarks.store.Store.write_record`,
and ``cells.json`` holds :func:`benchmarks.record.enrich_cell` dicts -- only the accuracies and
costs are made up. ``tests/test_records_e2e.py`` runs a real sweep instead. The
golden files under ``tests/golden/`` are the expected renderings of its main table; to
regenerate them deliberately after a format change run
``CONDBENCH_REGEN_GOLDEN=1 pytest -q tests/test_analysis.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.ablation import ablation_table
from analysis.cli import main as cli_main
from analysis.load import load_results
from analysis.render import summarise, tex_escape
from analysis.tables import cost_table, cross_table, main_table
from benchmarks.record import RECORD_SCHEMA_VERSION, Record, dataset_fields, enrich_cell, method_fields
from benchmarks.store import Store

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("CONDBENCH_REGEN_GOLDEN") == "1"

CAFE_CONFIG = {  # as methods.cafe.CAFEConfig.to_dict() writes it (subset)
    "model": "ConvNet",
    "layer_weights": None,
    "embedding_weight": 1.0,
    "discrimination_weight": 0.01,
    "dynamic_bilevel": True,
    "probe_carryover": True,
    "window": 10,
    "lambda_outer": 0.04,
    "lambda_inner": 0.03,
    "init": "noise",
    "dsa": False,
}

# (label, method, overrides) -> {(dataset, ipc): [accuracies for seed 0 (2 nets), seed 1 (2 nets)]}
ACC = {
    ("random", "random", ()): {
        ("mnist", 1): [0.640, 0.660, 0.650, 0.650],
        ("mnist", 10): [0.950, 0.952, 0.948, 0.950],
        ("cifar10", 1): [0.140, 0.150, 0.145, 0.145],
        ("cifar10", 10): [0.260, 0.262, None, None],  # seed 1: corrupt record
    },
    ("dc", "dc", ()): {
        ("mnist", 1): [0.900, 0.920, 0.910, 0.910],  # ties with cafe at 91.0
        ("mnist", 10): [0.974, 0.972, 0.976, 0.974],
        ("cifar10", 1): [0.283, 0.280, 0.286, 0.283],
        ("cifar10", 10): [0.449, 0.445, None, None],  # seed 1: missing (not run)
    },
    ("dsa", "dsa", ()): {
        ("mnist", 1): [0.887, 0.880, 0.894, 0.887],
        ("mnist", 10): [0.978, 0.977, 0.979, 0.978],
        ("cifar10", 1): [0.288, 0.281, 0.295, 0.288],
        ("cifar10", 10): [0.521, 0.516, 0.526, 0.521],
    },
    ("cafe", "cafe", ()): {
        ("mnist", 1): [0.905, 0.915, 0.910, 0.910],
        ("mnist", 10): [0.972, 0.970, None, None],  # seed 1: failed
        ("cifar10", 1): [0.303, 0.292, 0.314, 0.303],
        ("cifar10", 10): [0.463, 0.457, 0.469, 0.463],
    },
    ("cafe_dsa", "cafe", (("dsa", True),)): {  # the registry resolves cafe + dsa to cafe_dsa
        ("cifar10", 1): [0.316, 0.308, 0.324, 0.316],
        ("cifar10", 10): [0.509, 0.504, 0.514, 0.509],
    },
    ("w/o discrimination", "cafe", (("discrimination_weight", 0.0),)): {
        ("cifar10", 10): [0.441, 0.435, 0.447, 0.441],
    },
    ("w/o dynamic bi-level", "cafe", (("dynamic_bilevel", False),)): {
        ("cifar10", 10): [0.450, 0.446, 0.454, 0.450],
    },
}
WHOLE_ACC = {"mnist": [0.995, 0.997, 0.996, 0.996], "cifar10": [0.848, 0.847, 0.849, 0.848]}
# cross-architecture evaluations (seed 0 only) for dc and cafe on cifar10 IPC 10
CROSS = {("dc", "ResNet18"): [0.208, 0.210], ("cafe", "ResNet18"): [0.253, 0.251], ("random", "MLP"): [0.200, 0.220]}
NO_NETWORK = ("random", "whole")  # condensed without a network: the runner writes train_arch null


def _cell_id(label: str, dataset: str, ipc, seed: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    return f"{dataset}-ipc{ipc if ipc is not None else 'all'}-{slug}-s{seed}"


def _config(method: str, overrides: dict) -> dict:
    if method == "cafe":
        cfg = dict(CAFE_CONFIG)
    elif method in ("dc", "dsa"):
        cfg = {"iterations": 1000, "dsa": method == "dsa", "outer_loop": 10, "inner_loop": 50}
    else:
        cfg = {}
    cfg.update(overrides)
    return cfg


def build_store(root: Path, *, synsets: bool = False) -> Path:
    """A small results store: 2 datasets, IPC 1/10, 7 labels, a whole row, one missing cell,
    one corrupt record, one failed cell, one partial record, cross-architecture records."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "records").mkdir()
    (root / "failures").mkdir()
    (root / "spec.yaml").write_text("name: fixture\n", encoding="utf-8")
    store = Store(root)
    cells = []

    def write_record(cell: dict, arch: str, accs: list, cost_scale: float) -> None:
        whole = cell["method"] == "whole"
        config = _config(cell["method"], cell["overrides"])
        store.write_record(Record(
            cell_id=cell["cell_id"], sweep="fixture", dataset=cell["dataset"], ipc=cell["ipc"],
            method=cell["method"], label=cell["label"], overrides=cell["overrides"], method_config=config,
            seed=cell["seed"], train_arch=cell["train_arch"], eval_arch=arch, num_eval=len(accs),
            eval_epochs=300, eval_augmentation=None, eval_plan={"epochs": 300, "augmentation": None},
            labels="hard", accuracies=tuple(accs),
            cost={
                "condense_wall_time_s": None if whole else 10.0 * cost_scale,
                "condense_peak_memory_mb": None if whole else 100.0 * cost_scale,
                "eval_wall_time_s": 4.0 * len(accs),
                "eval_peak_memory_mb": 50.0,
                "iterations": 10,
            },
            synset_path=None if whole else f"synsets/{cell['cell_id']}.pt",
            code_version="abc1234", host="node01", device="cpu", created="2026-11-21T08:00:00Z",
            **method_fields(cell["method"], cell["overrides"], None if whole else config),
            **dataset_fields(cell["dataset"]),
        ))

    for k, ((label, method, ov), table) in enumerate(ACC.items()):
        for (dataset, ipc), accs in table.items():
            for seed in (0, 1):
                cell = {
                    "cell_id": _cell_id(label, dataset, ipc, seed),
                    "dataset": dataset, "ipc": ipc, "method": method, "label": label,
                    "overrides": dict(ov), "seed": seed, "eval_archs": ["ConvNet"], "num_eval": 2,
                    "eval_epochs": 300, "iterations": 10,
                    "train_arch": None if method in NO_NETWORK else "ConvNet",
                }
                cross = [arch for (lab, arch) in CROSS if lab == label and dataset == "cifar10" and ipc == 10 and seed == 0]
                cell["eval_archs"] += cross
                cells.append(cell)
                part = accs[2 * seed : 2 * seed + 2]
                if part[0] is None:
                    continue
                write_record(cell, "ConvNet", part, cost_scale=(k + 1) * ipc)
                for arch in cross:
                    write_record(cell, arch, CROSS[(label, arch)], cost_scale=(k + 1) * ipc)
    for dataset, accs in WHOLE_ACC.items():
        for seed in (0, 1, 2):  # seed 2: planned, never run (a missing cell with ipc null)
            cell = {
                "cell_id": _cell_id("whole", dataset, None, seed), "dataset": dataset, "ipc": None,
                "method": "whole", "label": "whole", "overrides": {}, "seed": seed,
                "eval_archs": ["ConvNet"], "num_eval": 2, "eval_epochs": None, "iterations": None,
                "train_arch": None,
            }
            cells.append(cell)
            if seed < 2:
                write_record(cell, "ConvNet", accs[2 * seed : 2 * seed + 2], cost_scale=1)
    # corrupt record (truncated JSON) for random cifar10 IPC 10 seed 1
    (root / "records" / f"{_cell_id('random', 'cifar10', 10, 1)}__ConvNet.json").write_text('{"schema": "condensation-bench/rec', encoding="utf-8")
    # failed cell: cafe mnist IPC 10 seed 1
    fid = _cell_id("cafe", "mnist", 10, 1)
    (root / "failures" / f"{fid}.json").write_text(
        json.dumps({"cell_id": fid, "error": "CUDA out of memory", "traceback": "Traceback ...", "log_path": "logs/123_0_log.err", "job_id": "123_0", "created": "2026-11-21T08:00:00Z"}),
        encoding="utf-8",
    )
    enriched = [enrich_cell(c) for c in cells]
    (root / "cells.json").write_text(json.dumps({"sweep": "fixture", "cells": enriched}, indent=1), encoding="utf-8")
    if synsets:
        _write_synsets(root)
    return root


def known_images(n_classes: int, ipc: int, channel: int, size: int, seed: int = 0) -> np.ndarray:
    """Images in [0, 1] whose class is visible as a colour/brightness pattern."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0.1, 0.9, n_classes)
    x = np.empty((n_classes * ipc, channel, size, size))
    for c in range(n_classes):
        for i in range(ipc):
            grad = np.linspace(0, 1, size)[None, :] * np.ones((size, 1))
            for ch in range(channel):
                x[c * ipc + i, ch] = np.clip(0.5 * base[(c + ch * 3) % n_classes] + 0.4 * grad * ((i + ch) % 2) + 0.1 * rng.random((size, size)), 0, 1)
    return x


MEAN3, STD3 = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _write_synsets(root: Path) -> None:
    import torch

    from methods.synset import SyntheticSet

    for label, method in (("random", "random"), ("dc", "dc"), ("cafe", "cafe")):
        for ipc in (1, 10):
            x = known_images(10, ipc, 3, 8, seed=ipc)
            m = np.asarray(MEAN3).reshape(1, 3, 1, 1)
            s = np.asarray(STD3).reshape(1, 3, 1, 1)
            syn = SyntheticSet(
                images=torch.tensor((x - m) / s, dtype=torch.float32),
                labels=torch.arange(10).repeat_interleave(ipc),
                method=method, config={}, seed=0, ipc=ipc, num_classes=10, dataset="cifar10",
                mean=MEAN3, std=STD3,
            )
            syn.save(root / "synsets" / f"{_cell_id(label, 'cifar10', ipc, 0)}.pt")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("results") / "fixture")


@pytest.fixture(scope="module")
def results(store):
    return load_results([store])


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"missing golden file {path}; run with CONDBENCH_REGEN_GOLDEN=1 once"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from the golden file"


# ----------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------


def test_load_tidy_frame(results):
    runs = results.runs
    # one row per evaluation run; accuracy in percent
    assert {"dataset", "ipc", "method", "label", "method_config", "overrides", "eval_arch", "train_arch",
            "seed", "run", "accuracy", "cost_condense_wall_time_s", "cell_id", "store"} <= set(runs.columns)
    dc = runs[(runs["label"] == "dc") & (runs["dataset"] == "mnist") & (runs["ipc"] == 1)]
    assert sorted(dc["accuracy"].round(6)) == [90.0, 91.0, 91.0, 92.0]
    assert list(dc["run"]) == [0, 1, 0, 1]
    # {method: cafe, dsa: true} is the registry's cafe_dsa; {method: dc, dsa: true} is dsa
    assert set(runs.loc[runs["label"] == "cafe_dsa", "method"]) == {"cafe_dsa"}
    assert set(runs.loc[runs["label"] == "dsa", "method"]) == {"dsa"}
    assert runs.loc[runs["method"] == "whole", "ipc"].isna().all()
    cfg = json.loads(runs.loc[runs["label"] == "w/o discrimination", "method_config"].iloc[0])
    assert cfg["discrimination_weight"] == 0.0
    assert results.hardware() == ["node01 (cpu)"]


def test_corrupt_record_reported_and_skipped(results):
    bad = [p for p in results.problems if p.path.endswith("cifar10-ipc10-random-s1__ConvNet.json")]
    assert len(bad) == 1 and "bad JSON" in bad[0].reason
    assert results.runs[results.runs["cell_id"] == "cifar10-ipc10-random-s1"].empty


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda r: r.update(schema="something/else"), "schema is"),
        (lambda r: r.update(schema_version=RECORD_SCHEMA_VERSION + 1), "newer"),
        (lambda r: r.pop("method_info"), "missing key(s): method_info"),
        (lambda r: r.update(method_info={"name": "dc", "display": "DC", "family": "gradient_matching"}),
         "method_info.order"),
        (lambda r: r.update(components={"Layer-wise": "yes"}), "not true/false"),
        (lambda r: r.update(labels="fuzzy"), "labels is 'fuzzy'"),
        (lambda r: r.update(status="running"), "partial"),
        (lambda r: r.pop("accuracies"), "missing key(s): accuracies"),
        (lambda r: r.update(accuracies="0.5"), "expected a list"),
        (lambda r: r.update(accuracies=[0.5, 50.0]), "fractions"),
        (lambda r: r.update(ipc=0), "positive integer"),
        (lambda r: r.update(cost=[1, 2]), "cost is a list"),
    ],
)
def test_partial_or_wrong_records_skipped(tmp_path, mutate, reason):
    root = build_store(tmp_path / "s")
    path = root / "records" / "mnist-ipc1-dc-s0__ConvNet.json"
    rec = json.loads(path.read_text())
    mutate(rec)
    path.write_text(json.dumps(rec))
    res = load_results([root])
    probs = [p for p in res.problems if p.path == str(path)]
    assert len(probs) == 1 and reason in probs[0].reason, probs
    assert res.runs[res.runs["cell_id"] == "mnist-ipc1-dc-s0"].empty
    miss = res.missing.set_index(["cell_id", "eval_arch"])
    assert miss.loc[("mnist-ipc1-dc-s0", "ConvNet"), "status"] == "corrupt record"


def test_missing_and_failed_cells_listed(results):
    miss = results.missing.set_index(["cell_id", "eval_arch"])["status"].to_dict()
    assert miss == {
        ("cifar10-ipc10-dc-s1", "ConvNet"): "not run",
        ("cifar10-ipc10-random-s1", "ConvNet"): "corrupt record",
        ("mnist-ipc10-cafe-s1", "ConvNet"): "failed",
        ("mnist-ipcall-whole-s2", "ConvNet"): "not run",
        ("cifar10-ipcall-whole-s2", "ConvNet"): "not run",
    }
    f = results.failures.iloc[0]
    assert (f["cell_id"], f["error"], f["log_path"]) == ("mnist-ipc10-cafe-s1", "CUDA out of memory", "logs/123_0_log.err")


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------


def test_mean_std_match_numpy_population_std(results):
    table = main_table(results)
    d = table.data.set_index(["method", "dataset", "ipc"])
    for (label, _, _), accs_by in ACC.items():
        for (dataset, ipc), accs in accs_by.items():
            vals = np.array([100 * a for a in accs if a is not None])
            row = d.loc[(label, dataset, ipc)]
            assert row["n"] == vals.size
            assert row["mean"] == pytest.approx(np.mean(vals), abs=1e-9)
            assert row["std"] == pytest.approx(np.std(vals), abs=1e-9)  # ddof=0, like np.std
    s = summarise([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.std, s.n) == (2.5, pytest.approx(np.sqrt(1.25)), 4)
    assert s.std != pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_bolding_best_per_column_with_ties_and_no_whole(results):
    d = main_table(results).data
    best = d[d["best"]].set_index(["dataset", "ipc"])["method"].groupby(level=[0, 1]).apply(sorted).to_dict()
    assert best == {
        ("cifar10", 1): ["cafe_dsa"],
        ("cifar10", 10): ["dsa"],
        ("mnist", 1): ["cafe", "dc"],  # tie at 91.0: both bold
        ("mnist", 10): ["dsa"],
    }
    assert not d.loc[d["method"] == "whole", "best"].any()  # whole row never competes
    md = main_table(results).to_markdown()
    assert md.count("**91.0**") == 2 and "**99.6**" not in md


def test_row_order_and_cross_records_excluded(results):
    t = main_table(results)
    assert [r[0].text for r in t.rows] == [
        "Random", "DC", "DSA", "CAFE", "CAFE+DSA", "w/o discrimination", "w/o dynamic bi-level", "Whole dataset",
    ]
    # the ResNet18 evaluations belong to the cross-architecture table, not the main one
    d = t.data.set_index(["method", "dataset", "ipc"])
    assert d.loc[("cafe", "cifar10", 10), "n"] == 4


def test_golden_main_tables(results):
    t = main_table(results)
    _golden("main.md", t.to_markdown())
    _golden("main.tex", t.to_latex())
    _golden("main.csv", t.to_csv())
    _golden("main_published.md", main_table(results, published=True).to_markdown())


def test_published_numbers_and_difference(results):
    d = main_table(results, published=True).data.set_index(["method", "dataset", "ipc"])
    row = d.loc[("cafe", "cifar10", 10)]
    assert (row["published_mean"], row["published_std"], row["published_confirmed"]) == (46.3, 0.6, "C")
    assert row["diff"] == pytest.approx(46.3 - 46.3, abs=1e-9)
    assert d.loc[("dsa", "mnist", 1), "published_mean"] == 88.7
    # ablation variants are not the published method
    assert d.loc[("w/o discrimination", "cifar10", 10), "published_confirmed"] == ""


def test_published_csv_covers_section_4():
    from analysis.published import load_published

    pub = load_published()
    assert set(pub["confirmed"]) == {"C", "R", "U"}
    assert pub["source"].str.len().min() > 10
    main = pub[pub["table"] == "main"]
    shipped = {"random", "herding", "kcenter", "forgetting", "dc", "dsa", "dm", "cafe", "cafe_dsa", "mtt", "datm"}
    assert set(main["method"]) == shipped | {"whole"}
    from methods.registry import METHODS

    assert all(name in METHODS for name in shipped)  # every row names a registered method
    assert set(main["dataset"]) == {"mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "tinyimagenet"}
    assert not main.duplicated(["dataset", "ipc", "method"]).any()
    look = main.set_index(["dataset", "ipc", "method"])
    assert look.loc[("cifar10", 50, "cafe_dsa"), ["mean", "std"]].tolist() == [62.3, 0.4]
    assert look.loc[("svhn", 1, "cafe"), "confirmed"] == "U"


def test_latex_escaping_and_compile_safety(tmp_path):
    root = build_store(tmp_path / "s")
    nasty = r"a&b 50% $x$ #1 my_var {y} ~z ^w \cmd"
    for path in (root / "records").glob("*-w-o-discrimination-*"):
        rec = json.loads(path.read_text())
        rec["label"] = nasty
        path.write_text(json.dumps(rec))
    cells = json.loads((root / "cells.json").read_text())
    for c in cells["cells"]:
        if c["label"] == "w/o discrimination":
            c["label"] = nasty  # the spec's label is the one tables show
    (root / "cells.json").write_text(json.dumps(cells))
    res = load_results([root])
    for t in (main_table(res), ablation_table(res), cost_table(res), cross_table(res)):
        tex = t.to_latex()
        assert tex_escape(nasty) in tex or t.name == "cross"
        for bad in (r"a&b", "50% ", "$x$", " #1", "my_var", "{y}", "~z", "^w", r" \cmd"):
            assert bad not in tex, (t.name, bad)
        body = re.sub(r"\\[{}]", "", tex)  # escaped braces are literal characters
        depth = 0
        for ch in body:
            depth += ch == "{"
            depth -= ch == "}"
            assert depth >= 0
        assert depth == 0
        assert tex.count("$") % 2 == 0 or r"\$" in tex
        for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
            assert rule in tex
        ncols = len(t.header)
        for line in tex.splitlines():
            if line.endswith(r"\\") and "multicolumn" not in line:
                assert len(re.split(r"(?<!\\)&", line)) == ncols, line
    assert tex_escape(nasty) == (
        r"a\&b 50\% \$x\$ \#1 my\_var \{y\} \textasciitilde{}z \textasciicircum{}w \textbackslash{}cmd"
    )


def test_ablation_switches_and_delta(results):
    t = ablation_table(results)
    assert list(t.data.loc[t.data["ipc"] == 1, "variant"]) == ["cafe", "cafe_dsa"]
    d = t.data[t.data["ipc"] == 10].set_index("variant")
    assert list(d.index) == ["cafe", "cafe_dsa", "w/o discrimination", "w/o dynamic bi-level"]
    assert bool(d.loc["cafe", "reference"]) and d.loc["cafe", "delta"] == pytest.approx(0.0)
    assert not d.loc["w/o discrimination", "discrimination"]
    assert d.loc["w/o discrimination", "dynamic_bi_level"]
    assert not d.loc["w/o dynamic bi-level", "dynamic_bi_level"]
    assert d.loc["cafe_dsa", "dsa"] and not d.loc["cafe", "dsa"]
    assert d.loc["w/o discrimination", "delta"] == pytest.approx(44.1 - 46.3)
    assert d.loc["w/o discrimination", "overrides"] == "discrimination_weight=0"
    assert d.loc["cafe_dsa", "overrides"] == ""  # the registered variant as published
    md = t.to_markdown()
    assert "| CIFAR10 | 10 | w/o discrimination | ✓ | ✓ | ✗ | ✓ | ✗ | discrimination\\_weight=0 |" in md
    # the component columns are the method's own (methods.cafe.CAFE.components), in its order
    assert t.header[3:8] == ["Layer-wise", "Embedding", "Discrimination", "Dynamic bi-level", "DSA"]
    assert t.caption.startswith("CAFE ablation")  # the registry's display name


def test_mutated_method_default_changes_the_ablation_switches(tmp_path, monkeypatch):
    """The switches come from the method (its config defaults and its components()), not from a
    copy in analysis: a store written while CAFE's default discrimination weight is 0 shows
    Discrimination off for the plain method."""
    from methods.cafe import CAFEConfig

    def ablation_of_a_fresh_store(root: Path) -> dict:
        store = Store(root)
        for label, overrides in (("cafe", {}), ("no embedding", {"embedding_weight": 0.0})):
            store.write_record(Record(
                cell_id=label.replace(" ", "-"), dataset="mnist", ipc=1, method="cafe", label=label,
                eval_arch="ConvNet", seed=0, accuracies=(0.5,), train_arch="ConvNet", overrides=overrides,
                **method_fields("cafe", overrides), **dataset_fields("mnist"),
            ))
        return ablation_table(load_results([root])).data.set_index("variant")["discrimination"].to_dict()

    assert ablation_of_a_fresh_store(tmp_path / "a") == {"cafe": True, "no embedding": True}
    monkeypatch.setattr(CAFEConfig, "__init__", _with_default(CAFEConfig.__init__, discrimination_weight=0.0))
    fields = method_fields("cafe", {})
    assert fields["components"]["Discrimination"] is False and fields["components"]["Embedding"] is True
    assert ablation_of_a_fresh_store(tmp_path / "b") == {"cafe": False, "no embedding": False}


def _with_default(init, **defaults):
    def patched(self, *args, **kwargs):
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        init(self, *args, **kwargs)

    return patched


def test_version_1_records_still_load_by_their_raw_name(tmp_path):
    """A record written before the registry metadata (schema_version 1) loads: its method is
    shown by its raw name after the registered methods, with hard labels and no components."""
    root = build_store(tmp_path / "s")
    old = {
        "schema": "condensation-bench/record", "schema_version": 1, "status": "done",
        "cell_id": "old-cell", "sweep": "old", "dataset": "mnist", "ipc": 1, "method": "mymethod",
        "label": "mymethod", "overrides": {"model": "ConvNet"}, "method_config": {"model": "ConvNet"},
        "seed": 0, "train_arch": "ConvNet", "eval_arch": "ConvNet", "num_eval": 2, "eval_epochs": 300,
        "eval_augmentation": "dsa", "accuracies": [0.5, 0.7],
        "cost": {"condense_wall_time_s": 1.0, "condense_peak_memory_mb": 1.0, "eval_wall_time_s": 2.0,
                 "eval_peak_memory_mb": 1.0},
        "synset_path": None, "code_version": "x", "host": "node01", "device": "cpu",
        "created": "2026-01-01T00:00:00Z",
    }
    (root / "records" / "old-cell__ConvNet.json").write_text(json.dumps(old))
    res = load_results([root])
    assert not [p for p in res.problems if "old-cell" in p.path]
    row = res.runs[res.runs["cell_id"] == "old-cell"].iloc[0]
    assert (row["method"], row["label_display"], row["labels"], row["components"]) == ("mymethod", "mymethod", "hard", "{}")
    assert bool(row["plain"])  # the network field is not a variant override
    assert json.loads(row["eval_plan"]) == {"epochs": 300, "augmentation": "dsa"}
    rows = [r[0].text for r in main_table(res).rows]
    # after every registered method as published, before the variants and the whole dataset
    assert rows[:6] == ["Random", "DC", "DSA", "CAFE", "CAFE+DSA", "mymethod"]


def test_free_label_for_plain_method_and_arch_override(tmp_path):
    """A sweep labelling plain CAFE "CAFE Full" (with the train-arch override the runner adds)
    still orders it with the registry rows and compares it with the published number."""
    root = build_store(tmp_path / "s")
    for path in (root / "records").glob("*-cafe-s*"):
        rec = json.loads(path.read_text())
        rec["label"], rec["overrides"] = "CAFE Full", {"model": "ConvNet"}
        path.write_text(json.dumps(rec))
    cells = json.loads((root / "cells.json").read_text())
    for c in cells["cells"]:
        if c["cell_id"].endswith(("-cafe-s0", "-cafe-s1")):
            c["label"] = "CAFE Full"
    (root / "cells.json").write_text(json.dumps(cells))
    res = load_results([root])
    t = main_table(res, published=True)
    assert [r[0].text for r in t.rows][3:5] == ["CAFE Full", "CAFE+DSA"]
    d = t.data.set_index(["method", "dataset", "ipc"])
    assert d.loc[("CAFE Full", "cifar10", 10), "published_mean"] == 46.3
    abl = ablation_table(res).data
    assert abl.loc[abl["variant"] == "CAFE Full", "reference"].all()
    assert (abl.loc[abl["variant"].isin(["CAFE Full", "cafe_dsa"]), "overrides"] == "").all()


def test_cost_table_names_hardware(results):
    t = cost_table(results)
    md = t.to_markdown()
    assert "Hardware: node01 (cpu)" in md
    row = t.data.set_index(["method", "dataset", "ipc"]).loc[("dc", "cifar10", 10)]
    assert row["condense_time_s"] == pytest.approx(10.0 * 2 * 10)
    assert row["eval_time_per_net_s"] == pytest.approx(4.0)


def test_cross_table(results):
    t = cross_table(results, published=True)
    d = t.data.set_index(["method", "eval_arch"])
    assert d.loc[("cafe", "ResNet18"), "mean"] == pytest.approx(25.2)
    assert d.loc[("cafe", "ResNet18"), "best"] and not d.loc[("dc", "ResNet18"), "best"]
    assert t.header[4:] == ["ConvNet", "MLP", "ResNet18"]
    # random has no training network: its ConvNet runs are the main-table ones, MLP is cross
    assert d.loc[("random", "MLP"), "mean"] == pytest.approx(21.0)
    assert t.rows[0][3].text == "–"
    main = main_table(results).data.set_index(["method", "dataset", "ipc"])
    assert main.loc[("random", "cifar10", 10), "mean"] == pytest.approx(26.1)


def test_output_deterministic(store):
    a = main_table(load_results([store])).to_latex()
    b = main_table(load_results([store])).to_latex()
    assert a == b


# ----------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_with_synsets(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("results") / "withsyn", synsets=True)


def _assert_real_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 1000
    img = mpimg.imread(path)
    rgb = img[..., :3] if img.ndim == 3 else img[..., None]
    assert (rgb != rgb[0, 0]).any(), "image is all one colour"
    grey = np.round(rgb.mean(axis=-1) * 255).astype(np.uint8)
    assert len(np.unique(grey)) > 10, "image is nearly blank"
    assert (grey < 128).mean() > 0.002, "no dark pixels: nothing drawn"


@pytest.mark.parametrize("kind", ["accuracy-vs-ipc", "cross-heatmap", "image-grid", "ablation", "cost-scatter"])
def test_every_figure_command_writes_a_real_png(store_with_synsets, tmp_path, kind, capsys):
    out = tmp_path / f"{kind}.png"
    assert cli_main(["figure", kind, str(store_with_synsets), "--out", str(out)]) == 0
    _assert_real_png(out)


def test_image_grid_denormalises_known_image(store_with_synsets):
    from analysis.image_grid import denormalise, image_grid, image_grid_array

    x = known_images(10, 10, 3, 8, seed=10)
    m, s = np.asarray(MEAN3).reshape(1, 3, 1, 1), np.asarray(STD3).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(denormalise((x - m) / s, MEAN3, STD3), x, atol=1e-12)
    # out-of-range values are clamped
    assert denormalise(np.full((1, 1, 2, 2), 10.0), (0.5,), (0.5,)).max() == 1.0
    # the figure shows exactly x: class c in row c, image i of the class in column i
    fig = image_grid(load_results([store_with_synsets]), dataset="cifar10", ipc=10, labels=["dc"])
    shown = fig.axes[0].get_images()[0].get_array()
    mosaic, rows = image_grid_array((x - m) / s, np.arange(10).repeat(10), 10, MEAN3, STD3)
    assert rows == list(range(10))
    for c in (0, 3, 9):
        for i in (0, 7):
            tile = np.asarray(shown)[c * 9 : c * 9 + 8, i * 9 : i * 9 + 8, :]
            np.testing.assert_allclose(tile, x[c * 10 + i].transpose(1, 2, 0), atol=1e-6)  # float32 storage
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][:3] == ["airplane", "automobile", "bird"]


def test_report_writes_everything(store_with_synsets, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["report", str(store_with_synsets), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# Sweep report: fixture")
    for name in ("main", "main_published", "cross", "ablation", "cost"):
        for ext in ("md", "tex", "csv"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "figures/accuracy_vs_ipc.png" in links and "figures/image_grid_cifar10_ipc10.png" in links
    for link in links:
        _assert_real_png(out / link)
        assert (out / link).with_suffix(".pdf").stat().st_size > 0
    assert "CUDA out of memory" in text and "logs/123_0_log.err" in text
    assert "cifar10-ipc10-dc-s1" in text and "not run" in text
    assert "| `mnist-ipcall-whole-s2` | ConvNet | MNIST | – | Whole dataset | 2 | not run | – |" in text
    assert "bad JSON" in text
    assert "node01 (cpu)" in text


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def test_cli_table_stdout_and_warnings(store, capsys):
    assert cli_main(["table", "main", str(store), "--format", "md"]) == 0
    cap = capsys.readouterr()
    assert cap.out == (GOLDEN / "main.md").read_text()
    assert "warning: skipped" in cap.err and "cifar10-ipc10-random-s1__ConvNet.json" in cap.err
    assert cli_main(["table", "main", str(store), "--format", "csv"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "main.csv").read_text()


@pytest.mark.parametrize(
    "argv_fn, message",
    [
        (lambda tmp, store: ["table", "main", str(tmp / "nope")], "does not exist"),
        (lambda tmp, store: ["table", "main", str(tmp / "empty")], "no usable records"),
        (lambda tmp, store: ["report", str(store), "--out", str(tmp / "file.txt" / "sub")], "cannot write"),
        (lambda tmp, store: ["table", "ablation", str(tmp / "empty")], "no usable records"),
    ],
)
def test_cli_user_errors_exit_2_one_line(tmp_path, store, capsys, argv_fn, message):
    (tmp_path / "empty" / "records").mkdir(parents=True)
    (tmp_path / "file.txt").write_text("x")
    assert cli_main(argv_fn(tmp_path, store)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("condbench-analysis: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_python_m_analysis_help():
    proc = subprocess.run([sys.executable, "-m", "analysis", "--help"], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0 and "examples:" in proc.stdout and "report" in proc.stdout


def test_tables_do_not_need_torch(store):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from analysis.load import load_results; from analysis.tables import build_table\n"
        f"res = load_results([{str(store)!r}])\n"
        "print(''.join(build_table(k, res).to_markdown()[:1] for k in ('main', 'cross', 'ablation', 'cost')))\n"
        "import analysis.report, analysis.cli\n"
        "assert 'methods' not in sys.modules, 'analysis imported the methods package'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import sys, analysis.load, benchmarks, benchmarks.record; "
                           "print(sorted(m for m in ('torch', 'methods') if m in sys.modules))"],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_cli_summary_lists_missing_and_failed(store, capsys):
    assert cli_main(["summary", str(store)]) == 0
    out = capsys.readouterr().out
    assert "records: 44 usable, 88 evaluation runs, 1 file(s) skipped" in out
    assert "missing cifar10-ipc10-dc-s1 cifar10 ipc=10 dc seed=1 [ConvNet]: not run" in out
    assert "missing mnist-ipcall-whole-s2 mnist whole whole seed=2 [ConvNet]: not run" in out
    assert "mnist-ipc10-cafe-s1" in out and "failed (CUDA out of memory (log: logs/123_0_log.err))" in out
    assert "corrupt record (bad JSON" in out


def test_relabelling_the_spec_relabels_finished_records(tmp_path):
    """Labels are presentation: the label in cells.json (the spec as last run) wins over the
    label stored in a record, so editing a spec's labels and re-running relabels tables."""
    root = build_store(tmp_path / "s")
    cells = json.loads((root / "cells.json").read_text())
    for c in cells["cells"]:
        if c["label"] == "w/o discrimination":
            c["label"] = "no disc."
    (root / "cells.json").write_text(json.dumps(cells))
    labels = set(load_results([root]).runs["label"])
    assert "no disc." in labels and "w/o discrimination" not in labels


def test_a_dataset_run_at_one_ipc_is_drawn_as_bars_per_set(results):
    """accuracy vs IPC has no axis for one IPC: the panel becomes one bar per set (table order,
    whole dataset as a dashed line named in the axis label) and the figure needs no legend."""
    import copy

    from analysis import figures as F

    one = copy.copy(results)
    keep = results.runs["ipc"].isna() | (results.runs["ipc"] == 1)
    one.runs = results.runs[keep & (results.runs["dataset"] == "cifar10")]
    fig = F.accuracy_vs_ipc(one)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    sets = one.runs[one.runs["method"] != "whole"]
    assert len(ax.patches) == len(labels) == sets["label"].nunique()
    assert ax.get_title().endswith("IPC 1") and "dashed: whole dataset" in ax.get_xlabel()
    assert not fig.legends
    # bar lengths are the mean accuracies, the first label on top
    means = {lab: g["accuracy"].mean() for lab, g in sets.groupby("label")}
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == sorted(round(v, 6) for v in means.values())


def test_one_image_per_class_is_drawn_as_one_row_per_set(store_with_synsets):
    """IPC 1: one row per set (method named left), the classes across, class names above the
    first row only; each row shows exactly the set's images, class c at column c."""
    from analysis.image_grid import image_grid

    fig = image_grid(load_results([store_with_synsets]), dataset="cifar10", ipc=1)
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["Random", "DC", "CAFE"]
    assert [t.get_text() for t in axes[0].get_xticklabels()][:2] == ["airplane", "automobile"]
    assert all(not ax.get_xticks().size for ax in axes[1:])
    x = known_images(10, 1, 3, 8, seed=1)  # the sets' images (seed = ipc in _write_synsets)
    strip = np.asarray(axes[1].get_images()[0].get_array())
    assert strip.shape == (8, 10 * 9 - 1, 3)
    for c in (0, 4, 9):
        np.testing.assert_allclose(strip[:, c * 9: c * 9 + 8, :], x[c].transpose(1, 2, 0), atol=1e-6)
    w, h = fig.get_size_inches()
    assert w > 2 * h  # a wide strip per set, not a column of single tiles
