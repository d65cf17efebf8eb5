"""Sweep specs, cell ids, validation and the results store (no cluster needed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from benchmarks import executors, sweep_cli, worker
from benchmarks import store as store_module
from benchmarks.cells import Cell, cell_id
from benchmarks.store import Store
from benchmarks.sweep import SpecError, build_sweep, load_sweep, SWEEP_DIR


def spec(tmp_path: Path, **changes) -> dict:
    base = {
        "name": "t",
        "datasets": ["digits"],
        "ipcs": [1, 10],
        "methods": ["random", {"method": "dm", "label": "DM"}, "whole"],
        "eval_archs": ["ConvNet"],
        "seeds": [0, 1],
        "num_eval": 1,
        "budgets": {"iterations": 3, "eval_epochs": 2},
        "output": str(tmp_path / "out"),
        # these tests count and id the cells the spec names; the same-protocol random baselines
        # a sweep adds by default are tested in tests/test_scores.py
        "random_baseline": False,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def ids(sw) -> list[str]:
    return [c.cell_id for c in sw.cells]


# -- expansion and ids -----------------------------------------------------------------------


def test_expansion_is_the_product_plus_one_whole_cell_per_dataset_and_seed(tmp_path):
    sw = build_sweep(spec(tmp_path))
    # 2 ipcs x 2 methods x 2 seeds + whole x 2 seeds
    assert len(sw.cells) == 2 * 2 * 2 + 2
    whole = [c for c in sw.cells if c.method == "whole"]
    assert [c.ipc for c in whole] == [None, None] and {c.seed for c in whole} == {0, 1}
    assert all(c.iterations is None and c.train_arch is None for c in whole)
    dm = [c for c in sw.cells if c.method == "dm"]
    assert {(c.ipc, c.seed) for c in dm} == {(1, 0), (1, 1), (10, 0), (10, 1)}
    assert all(c.label == "DM" and c.iterations == 3 and c.train_arch == "ConvNet" for c in dm)
    assert len(set(ids(sw))) == len(sw.cells)
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids(sw))


def test_a_whole_only_sweep_needs_no_ipcs_but_others_do(tmp_path):
    sw = build_sweep(spec(tmp_path, ipcs=None, methods=["whole"]))
    assert [(c.method, c.ipc, c.seed) for c in sw.cells] == [("whole", None, 0), ("whole", None, 1)]
    with pytest.raises(SpecError, match="ipcs: required.*only a sweep of 'whole' alone"):
        build_sweep(spec(tmp_path, ipcs=None, methods=["whole", "random"]))


def test_ids_are_stable_and_ignore_label_output_profile_and_eval_archs(tmp_path):
    a = build_sweep(spec(tmp_path))
    b = build_sweep(spec(tmp_path))
    assert ids(a) == ids(b)
    c = build_sweep(spec(tmp_path, output=str(tmp_path / "elsewhere"), profile="cpu",
                         methods=["random", {"method": "dm", "label": "other"}, "whole"],
                         eval_archs=["ConvNet", "MLP"]))
    assert ids(a) == ids(c)


@pytest.mark.parametrize(
    "change",
    [
        {"seeds": [5, 1]},
        {"budgets": {"iterations": 4, "eval_epochs": 2}},
        {"budgets": {"iterations": 3, "eval_epochs": 3}},
        {"num_eval": 2},
        {"methods": ["random", {"method": "dm", "label": "DM", "lr_img": 0.5}, "whole"]},
        {"train_arch": "ConvNetW32"},
    ],
)
def test_ids_change_with_every_result_affecting_field(tmp_path, change):
    a = {c.cell_id: c for c in build_sweep(spec(tmp_path)).cells}
    b = {c.cell_id: c for c in build_sweep(spec(tmp_path, **change)).cells}
    changed = set(a) - set(b)
    assert changed, f"{change} did not change any cell id"


def test_ids_change_with_dataset_and_ipc():
    base = dict(dataset="digits", ipc=1, method="dm", overrides={}, seed=0, iterations=3,
                num_eval=1, eval_epochs=2, train_arch="ConvNet")
    assert cell_id(**base) == cell_id(**dict(base))
    assert cell_id(**base) != cell_id(**{**base, "ipc": 2})
    assert cell_id(**base) != cell_id(**{**base, "dataset": "mnist"})
    assert cell_id(**base) != cell_id(**{**base, "method": "dc"})


def test_override_values_are_canonicalised_through_the_typed_config(tmp_path):
    a = build_sweep(spec(tmp_path, methods=[{"method": "dm", "lr_img": 1}]))
    b = build_sweep(spec(tmp_path, methods=[{"method": "dm", "lr_img": 1.0}]))
    assert ids(a) == ids(b)
    assert a.cells[0].overrides == {"lr_img": 1.0}


def test_coreset_ids_do_not_depend_on_the_iteration_budget(tmp_path):
    a = build_sweep(spec(tmp_path, methods=["random"]))
    b = build_sweep(spec(tmp_path, methods=["random"], budgets={"iterations": 99, "eval_epochs": 2}))
    assert ids(a) == ids(b)
    assert all(c.iterations is None for c in a.cells)


def test_per_method_budgets_and_train_arch_override(tmp_path):
    sw = build_sweep(spec(tmp_path, ipcs=[1], seeds=[0], train_arch="convnetw32", methods=[
        {"method": "dm", "budgets": {"iterations": 7}}, {"method": "dm", "model": "ConvNet", "label": "cn"}]))
    first, second = sw.cells
    assert first.iterations == 7 and first.train_arch == "ConvNetW32" and first.eval_epochs == 2
    assert second.iterations == 3 and second.train_arch == "ConvNet"


def test_shipped_sweeps_validate(tmp_path):
    names = sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))
    assert {"quick", "paper_main", "cross_arch", "cafe_ablation", "example_commented"} <= set(names)
    for name in names:
        sw = load_sweep(name, output=tmp_path / name, check_data=False)
        assert sw.cells, name
    paper = load_sweep("paper_main", output=tmp_path / "p", check_data=False)
    assert {c.dataset for c in paper.cells} == {"mnist", "fashionmnist", "svhn", "cifar10", "cifar100"}
    assert {c.ipc for c in paper.cells} == {1, 10, 50, None}
    # the papers average 5 synthetic sets x 20 networks: one cell per seed, 5 seeds
    assert {c.seed for c in paper.cells} == {0, 1, 2, 3, 4} and {c.num_eval for c in paper.cells} == {20}
    named = [c for c in paper.cells if not c.eval]  # the cells the spec names ...
    baselines = [c for c in paper.cells if c.eval]  # ... and the same-protocol random cells it adds
    assert len(named) == (5 * 3 * 11 + 5) * 5
    assert baselines and {c.method for c in baselines} == {"random"}
    assert len({c.cell_id for c in paper.cells}) == len(paper.cells)
    for name in ("cross_arch", "cafe_ablation"):
        assert {c.seed for c in load_sweep(name, output=tmp_path / name, check_data=False).cells} == {0, 1, 2, 3, 4}
    ablation = load_sweep("cafe_ablation", output=tmp_path / "a", check_data=False)
    labels = {c.label: c for c in ablation.cells}
    assert labels["w/o discrimination"].overrides["discrimination_weight"] == 0.0
    assert labels["w/o dynamic bi-level"].overrides["dynamic_bilevel"] is False


# -- validation: every problem at once, nothing submitted --------------------------------------

BAD_SPECS = [
    ("unknown dataset", {"datasets": ["digitz"]}, "datasets[0]", "unknown dataset 'digitz'"),
    ("unknown method", {"methods": ["random", "dcc"]}, "methods[1].method", "unknown method 'dcc'"),
    ("unknown override key", {"methods": [{"method": "cafe", "discrimination_wieght": 0}]},
     "methods[0].discrimination_wieght", "unknown config key"),
    ("wrong override type", {"methods": [{"method": "dm", "lr_img": "fast"}]}, "methods[0].lr_img", "must be a number"),
    ("unknown eval architecture", {"eval_archs": ["ConvNet", "ResNet9000"]}, "eval_archs[1]", "unknown architecture"),
    ("unknown train architecture", {"train_arch": "Transformer"}, "train_arch", "unknown architecture"),
    ("impossible ipc", {"ipcs": [1, 500]}, "ipcs[1]", "IPC 500 is impossible"),
    ("non-integer ipc", {"ipcs": [1, "ten"]}, "ipcs[1]", "positive integer"),
    ("missing data", {"datasets": ["mnist"], "data_root": "/nonexistent-data"}, "datasets[0]", "MNIST raw files not found"),
    ("missing tensor file", {"datasets": ["tensor:/nonexistent/x.pt"]}, "datasets[0]", "does not exist"),
    ("missing profile", {"profile": "no-such-profile"}, "profile", "does not exist"),
    ("unwritable output", {"output": "/proc/version/out"}, "output", "not a folder"),
    ("output on a read-only pseudo file system", {"output": "/proc/condbench-results"}, "output", "not writable"),
    ("unknown top-level key", {"ipc": [1]}, "ipc", "unknown key"),
    ("bad seed", {"seeds": [0, -3]}, "seeds[1]", "non-negative integer"),
    ("bad num_eval", {"num_eval": 0}, "num_eval", "integer >= 1"),
    ("bad budget", {"budgets": {"iterations": 2.5}}, "budgets.iterations", "positive integer"),
    ("unknown budget", {"budgets": {"epochs": 3}}, "budgets.epochs", "unknown budget"),
    ("bad device", {"device": "gpu0"}, "device", "auto, cpu, cuda"),
    ("overrides on whole", {"methods": [{"method": "whole", "lr_img": 1}]}, "methods[0].lr_img", "no config overrides"),
    ("duplicate method line", {"methods": ["random", {"method": "random", "label": "again"}]}, "methods[1]",
     "same cells as methods[0]"),
    ("missing required", {"datasets": None}, "datasets", "required"),
    ("unknown eval plan key", {"eval": {"lrr": 0.1}}, "eval.lrr", "unknown eval plan key 'lrr'"),
    ("bad eval plan value", {"methods": ["random", {"method": "dm", "eval": {"momentum": 1.5}}]},
     "methods[1].eval.momentum", "momentum must be in [0, 1)"),
    ("eval plan not a mapping", {"eval": ["lr", 0.1]}, "eval", "must be a mapping"),
    ("eval epochs and the epoch budget", {"eval": {"epochs": 5}}, "eval.epochs", "budgets.eval_epochs=2"),
]


@pytest.mark.parametrize("name,change,path,fragment", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_rejected_with_its_path_before_submission(tmp_path, monkeypatch, name, change, path, fragment):
    data = spec(tmp_path)
    for k, v in change.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump(data))

    def no_submit(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("submitted despite a bad spec")

    monkeypatch.setattr(executors.SlurmExecutor, "submit", no_submit)
    monkeypatch.setattr(executors.LocalExecutor, "submit", no_submit)
    monkeypatch.setattr(worker, "run_cell", no_submit)
    with pytest.raises(SpecError) as err:
        load_sweep(spec_file)
    assert any(p.startswith(path + ":") and fragment in p for p in err.value.problems), err.value.problems
    rc = sweep_cli.main(["run", str(spec_file), "--executor", "slurm"])
    assert rc == 2
    assert not (tmp_path / "out").exists()


def test_all_problems_are_reported_at_once(tmp_path, capsys):
    bad = spec(tmp_path, datasets=["digitz"], methods=["nope", {"method": "dm", "bogus": 1}],
               eval_archs=["Foo"], seeds=[-1], profile="missing-profile")
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(bad))
    assert sweep_cli.main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    for path in ("datasets[0]:", "methods[0].method:", "methods[1].bogus:", "eval_archs[0]:", "seeds[0]:", "profile:"):
        assert path in err, err
    assert "nothing was submitted" in err


def test_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("datasets: [digits\nipcs: 1\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_sweep(f)
    with pytest.raises(SpecError, match="does not exist"):
        load_sweep(tmp_path / "absent.yaml")
    f.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_sweep(f)


def test_bad_profile_keys_are_reported(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_text("partition: gpu\ngpus: 2\ntimeout_min: soon\n")
    with pytest.raises(SpecError) as err:
        build_sweep(spec(tmp_path, profile=str(prof)))
    text = "\n".join(err.value.problems)
    assert "profile.gpus: unknown profile key" in text and "profile.timeout_min: must be int" in text


def test_dry_run_prints_cells_and_sbatch_lines(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec(tmp_path, profile="gpu")))
    assert sweep_cli.main(["run", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "10 cells" in out and "#SBATCH --gpus-per-node=1" in out and "nothing submitted" in out
    assert not (tmp_path / "out").exists()


# -- store ----------------------------------------------------------------------------------------


def test_atomic_record_write_leaves_no_partial_file_on_a_crash(tmp_path, monkeypatch):
    store = Store(tmp_path / "s")
    rec = {"cell_id": "abc", "eval_arch": "ConvNet", "accuracies": [0.5]}
    store.write_record(rec)
    before = store.record_path("abc", "ConvNet").read_text()

    def crash(fd):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write_record({**rec, "accuracies": [0.9]})
    with pytest.raises(KeyboardInterrupt):
        store.write_record({"cell_id": "new", "eval_arch": "ConvNet", "accuracies": [0.1]})
    monkeypatch.undo()
    assert store.record_path("abc", "ConvNet").read_text() == before  # old record intact
    assert not store.record_path("new", "ConvNet").exists()  # no partial new record
    assert sorted(p.name for p in store.records_dir.iterdir()) == ["abc__ConvNet.json"]  # no temp left
    assert [r["accuracies"] for r in store.iter_records()] == [[0.5]]
    rec_json = json.loads(store.record_path("abc", "ConvNet").read_text())
    assert rec_json["schema"] == store_module.RECORD_SCHEMA
    assert rec_json["schema_version"] == store_module.RECORD_SCHEMA_VERSION


def test_readers_ignore_leftover_temp_files_and_garbage(tmp_path):
    store = Store(tmp_path / "s")
    store.records_dir.mkdir(parents=True)
    (store.records_dir / ".abc__ConvNet.json.123.tmp").write_text('{"cell_id": "abc", "stat')
    (store.records_dir / "xyz__ConvNet.json").write_text("not json")
    assert list(store.iter_records()) == []
    assert not store.has_record("abc", "ConvNet") and not store.has_record("xyz", "ConvNet")


def test_job_tracking_keeps_history(tmp_path):
    store = Store(tmp_path / "s")
    store.write_job("c1", job_id="10_0", executor="slurm", archs=["ConvNet"])
    store.write_job("c1", job_id="11_3", executor="slurm", archs=["ConvNet"])
    info = store.read_job("c1")
    assert info["job_id"] == "11_3" and [h["job_id"] for h in info["history"]] == ["10_0"]


# -- evaluation-plan overrides (eval:) --------------------------------------------------------------

# The ids of spec()'s cells before the eval key existed: a sweep without eval keeps them.
IDS_BEFORE_EVAL_KEY = ['c893ad63dbfd', '1f14ed449758', 'dffb67114fb5', 'd3fc4d3b6a15', '6e5b4794157c',
                       'cc31f1367f57', 'b8f3095ea98d', '34ba33c93fc5', '57de6f522010', '611138bde337']


def test_a_sweep_without_eval_keeps_its_cell_ids(tmp_path):
    sw = build_sweep(spec(tmp_path))
    assert ids(sw) == IDS_BEFORE_EVAL_KEY
    assert all(c.eval == {} for c in sw.cells)
    assert ids(build_sweep(spec(tmp_path, eval={}))) == IDS_BEFORE_EVAL_KEY
    old = sw.cells[0].to_json()
    assert old["eval"] == {}
    del old["eval"]  # a cells.json written before the key existed
    assert Cell.from_json(old) == sw.cells[0]


def test_eval_overrides_are_validated_merged_per_entry_and_stored_in_cells(tmp_path):
    data = spec(tmp_path, ipcs=[1], seeds=[0], eval={"lr": 1, "selection": "best_val"},
                methods=["random", {"method": "dm", "eval": {"lr": 0.05, "weight_decay": 0}}, "whole"],
                budgets={"iterations": 3})
    sw = build_sweep(data)
    by_method = {c.method: c for c in sw.cells}
    assert by_method["random"].eval == {"lr": 1.0, "selection": "best_val"}  # canonical: 1 -> 1.0
    assert by_method["dm"].eval == {"lr": 0.05, "selection": "best_val", "weight_decay": 0.0}  # the entry wins
    assert by_method["whole"].eval == {"lr": 1.0, "selection": "best_val"}
    assert by_method["dm"].label == "dm [eval: lr=0.05, weight_decay=0.0]" and by_method["random"].label == "random"
    # in cells.json and back
    store = Store(sw.output)
    store.init(sw.name, sw.spec_text, [c.to_json() for c in sw.cells])
    _, raw = store.read_cells()
    assert [Cell.from_json(c) for c in raw] == sw.cells
    # the overrides enter the ids (and only they differ here)
    plain = build_sweep({**data, "eval": None, "methods": ["random", "dm", "whole"]})
    assert not set(ids(sw)) & set(ids(plain))
    assert ids(build_sweep({**data, "eval": {"selection": "best_val", "lr": 1.0}})) == ids(sw)  # order, 1 vs 1.0
    # two entries differing only in their evaluation are two lines
    two = build_sweep({**data, "eval": None, "methods": ["dm", {"method": "dm", "eval": {"selection": "best_val"}}]})
    assert len({c.cell_id for c in two.cells}) == 2 and len({c.label for c in two.cells}) == 2


def test_every_eval_problem_is_reported_with_its_path(tmp_path):
    bad = spec(tmp_path, eval={"optimizer": "rmsprop"},
               methods=["random", {"method": "dm", "eval": {"bogus": 1}}, {"method": "dc", "eval": 3}])
    with pytest.raises(SpecError) as err:
        build_sweep(bad)
    paths = [p.split(":")[0] for p in err.value.problems]
    assert paths == ["eval.optimizer", "methods[1].eval.bogus", "methods[2].eval"], err.value.problems


# -- per-entry ipcs / seeds / num_eval, compile ----------------------------------------------


def test_a_method_entry_can_narrow_ipcs_seeds_and_num_eval(tmp_path):
    sw = build_sweep(spec(tmp_path, methods=["random", {"method": "dm", "ipcs": [1], "seeds": [1], "num_eval": 3},
                                             {"method": "whole", "seeds": [0]}]))
    dm = [c for c in sw.cells if c.method == "dm"]
    assert [(c.ipc, c.seed, c.num_eval) for c in dm] == [(1, 1, 3)]
    assert {(c.ipc, c.seed, c.num_eval) for c in sw.cells if c.method == "random"} == {
        (1, 0, 1), (1, 1, 1), (10, 0, 1), (10, 1, 1)}
    assert [(c.seed, c.num_eval) for c in sw.cells if c.method == "whole"] == [(0, 1)]
    # the same cell as one the sweep-wide lists would make: narrowing does not change ids
    plain = build_sweep(spec(tmp_path, methods=[{"method": "dm"}], ipcs=[1], seeds=[1], num_eval=3))
    assert ids(plain) == [dm[0].cell_id]


def test_lines_of_one_configuration_share_a_label_and_others_may_not(tmp_path):
    # the same method split over two lines with their own lists (5 draws at IPC 1/10, 2 at 50)
    sw = build_sweep(spec(tmp_path, ipcs=[1, 10, 50], methods=[
        {"method": "random", "ipcs": [1, 10], "seeds": [0, 1, 2], "num_eval": 2},
        {"method": "random", "ipcs": [50], "seeds": [0]}]))
    assert sorted((c.ipc, c.seed, c.label) for c in sw.cells) == [
        (1, 0, "random"), (1, 1, "random"), (1, 2, "random"), (10, 0, "random"), (10, 1, "random"),
        (10, 2, "random"), (50, 0, "random")]
    # a line that makes other sets cannot take a label in use: it would merge two rows
    with pytest.raises(SpecError, match=r"methods\[1\]\.label: label 'DM' is already used by methods\[0\], "
                                        r"which makes other sets"):
        build_sweep(spec(tmp_path, methods=[{"method": "dm", "label": "DM", "ipcs": [1]},
                                            {"method": "dm", "label": "DM", "ipcs": [10], "lr_img": 2.0}]))


def test_same_protocol_baselines_follow_an_entrys_own_ipcs_and_seeds(tmp_path):
    sw = build_sweep(spec(tmp_path, methods=[{"method": "dsa", "ipcs": [1], "seeds": [0]}], random_baseline=True))
    base = [c for c in sw.cells if c.method == "random"]
    assert [(c.ipc, c.seed) for c in base] == [(1, 0)]


@pytest.mark.parametrize("entry, message", [
    ({"method": "dm", "ipcs": [0]}, r"methods\[0\]\.ipcs\[0\]: must be a positive integer"),
    ({"method": "dm", "ipcs": [1, 1]}, r"methods\[0\]\.ipcs\[1\]: duplicate IPC 1"),
    ({"method": "dm", "ipcs": [100000]}, r"methods\[0\]\.ipcs\[0\]: IPC 100000 is impossible"),
    ({"method": "dm", "seeds": []}, r"methods\[0\]\.seeds: must list at least one value"),
    ({"method": "dm", "seeds": [-1]}, r"methods\[0\]\.seeds\[0\]: must be a non-negative integer"),
    ({"method": "dm", "num_eval": 0}, r"methods\[0\]\.num_eval: must be an integer >= 1"),
    ({"method": "whole", "ipcs": [1]}, r"methods\[0\]\.ipcs: the whole-dataset baseline has no IPC"),
])
def test_bad_per_entry_lists_are_named(tmp_path, entry, message):
    with pytest.raises(SpecError, match=message):
        build_sweep(spec(tmp_path, methods=[entry]))


def test_compile_key_reaches_the_cell_jobs(tmp_path):
    from benchmarks.run_options import RunOptions

    sw = build_sweep(spec(tmp_path, compile="on"))
    assert sw.compile == "on"
    options = RunOptions.from_sweep(sw, executor="debug")
    job = executors.make_job(Store(tmp_path / "out"), sw.name, sw.cells[0], ["ConvNet"], options)
    assert job.compile == "on"
    assert RunOptions.from_sweep(build_sweep(spec(tmp_path)), executor="debug").compile == "auto"
    with pytest.raises(SpecError, match="compile: must be auto, on or off"):
        build_sweep(spec(tmp_path, compile="fast"))
