"""Sweep specs, cell ids, validation and the results store (no cluster needed)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml

from benchmarks import executors, launcher, slurm_client, sweep_cli, worker
from benchmarks import store as store_module
from benchmarks import UserError
from benchmarks.profile import ClusterProfile, IpcScaling, ProfileError, load_profile, resolve_profile_path
from benchmarks.run_options import RunOptions
from benchmarks.store import Store, atomic_write_json
from benchmarks.sweep import Cell, SpecError, build_sweep, cell_id, load_sweep, SWEEP_DIR


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
    assert len(paper.cells) == (5 * 3 * 8 + 5) * 5
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
    ("wrong override type", {"methods": [{"method": "dm", "lr_img": "fast"}]}, "methods[0].lr_img", "must be float"),
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


# -- resources ----------------------------------------------------------------------------------


def test_resources_scale_with_ipc_and_cap():
    prof = {"timeout_min": 100, "mem_gb": 4, "scale_with_ipc": {"reference_ipc": 10, "time_exponent": 1.0,
                                                                "mem_exponent": 0.5, "max_timeout_min": 400,
                                                                "max_mem_gb": 6}}
    profile = ClusterProfile.from_mapping(prof)
    assert profile.resources(1) == (100, 4.0)
    assert profile.resources(10) == (100, 4.0)
    assert profile.resources(20) == (200, round(4 * 2 ** 0.5, 1))
    assert profile.resources(50) == (400, 6.0)  # both capped
    assert profile.resources(None) == (400, 4.0)  # whole dataset: the time cap
    gpu = ClusterProfile.from_mapping({"partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32,
                                       "timeout_min": 240, "qos": "high", "additional_parameters": {"exclude": "n1"}})
    params = gpu.sbatch_parameters(10, job_name="x")
    lines = "\n".join(executors.sbatch_preview(params, Path("/tmp/logs")))
    for expected in ("--gpus-per-node=1", "--partition=gpu", "--cpus-per-task=8", "--mem=32768M",
                     "--time=240", "--qos=high", "--exclude=n1"):
        assert expected in lines, lines


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


class _FakeJob:
    def __init__(self, job_id: str):
        self.job_id = job_id


class _FakeSlurmExecutor:
    """Stands in for submitit.SlurmExecutor: 'sbatch' hands out array task ids 700_<i>."""

    seen_intents: list = []

    def __init__(self, folder):
        self.folder, self.params, self._batch = folder, {}, None

    def update_parameters(self, **params):
        self.params.update(params)

    def submit(self, fn):
        job = _FakeJob("")
        self._batch.append(job)
        return job

    def batch(self):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self._batch = []
            # the submission is on record before sbatch runs
            _FakeSlurmExecutor.seen_intents.append(Store(Path(self.folder).parent).pending_submissions())
            yield
            for i, job in enumerate(self._batch):
                job.job_id = f"700_{i}"
        return ctx()


def _slurm(store: Store) -> "executors.SlurmExecutor":
    return executors.SlurmExecutor(store, RunOptions(executor="slurm", profile=ClusterProfile(timeout_min=5)))


def debug(sw) -> RunOptions:
    return RunOptions.from_sweep(sw, executor="debug")


def _fake_slurm_store(tmp_path, monkeypatch):
    """A two-cell sweep's store, with sbatch replaced by :class:`_FakeSlurmExecutor`."""
    sw = build_sweep(spec(tmp_path, ipcs=[1], seeds=[0, 1], methods=["random"]))
    store = Store(sw.output)
    store.init(sw.name, sw.spec_text, [c.to_json() for c in sw.cells])
    monkeypatch.setattr(executors.submitit, "SlurmExecutor", _FakeSlurmExecutor)
    _FakeSlurmExecutor.seen_intents = []
    return sw, store


def test_launcher_killed_between_sbatch_and_tracking_does_not_submit_twice(tmp_path, monkeypatch):
    sw, store = _fake_slurm_store(tmp_path, monkeypatch)
    todo = [(c, ["ConvNet"]) for c in sw.cells]

    def killed(*a, **k):  # the launcher dies right after sbatch returned
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_job", killed)
    with pytest.raises(KeyboardInterrupt):
        _slurm(store).submit(sw.name, todo)
    monkeypatch.undo()
    (intent,) = _FakeSlurmExecutor.seen_intents[0]
    assert [c["cell_id"] for c in intent["cells"]] == [c.cell_id for c in sw.cells]
    assert intent["job_name"].startswith(f"cb-{sw.name}-")
    assert store.pending_submissions() and not any(store.read_job(c.cell_id) for c in sw.cells)

    # The next launcher finds the array by its name and tracks its tasks instead of resubmitting.
    asked = []
    monkeypatch.setattr(slurm_client, "jobs_named", lambda name: asked.append(name) or {0: "700_0", 1: "700_1"})
    monkeypatch.setattr(slurm_client, "slurm_states", lambda ids: {j: "RUNNING" for j in ids})
    finished, active, todo_again = launcher.plan(store, sw)
    assert asked == [intent["job_name"]]
    assert not todo_again and [c.cell_id for c, _ in active] == [c.cell_id for c in sw.cells]
    assert [store.read_job(c.cell_id)["job_id"] for c in sw.cells] == ["700_0", "700_1"]
    assert store.pending_submissions() == []


def test_clean_submission_leaves_no_intent_and_tracks_every_task(tmp_path, monkeypatch):
    sw, store = _fake_slurm_store(tmp_path, monkeypatch)
    out = _slurm(store).submit(sw.name, [(c, ["ConvNet"]) for c in sw.cells])
    assert [s.job_id for s in out] == ["700_0", "700_1"] and len(_FakeSlurmExecutor.seen_intents[0]) == 1
    assert store.pending_submissions() == [] and store.read_job(sw.cells[1].cell_id)["job_id"] == "700_1"


@pytest.mark.parametrize("answer, tracked", [({}, False), (None, False), ({1: "42_1"}, True)])
def test_interrupted_submission_slurm_never_saw_is_dropped(tmp_path, answer, tracked):
    store = Store(tmp_path / "s")
    store.write_job("a", job_id="42_0", executor="slurm", archs=["ConvNet"])  # written before the kill
    store.begin_submission("tok", "cb-x-tok", [("a", ["ConvNet"]), ("b", ["ConvNet", "MLP"])])
    logs = []
    n = executors.recover_submissions(store, logs.append, find=lambda name: answer)
    assert store.pending_submissions() == []
    assert n == int(tracked) and (store.read_job("b") is not None) == tracked
    if tracked:
        assert store.read_job("b")["archs"] == ["ConvNet", "MLP"]
        assert store.read_job("a")["history"] == []  # the task already tracked is left alone
    if answer is None:
        assert "could not ask SLURM" in logs[0]


def test_jobs_named_parses_squeue_and_sacct(monkeypatch):
    import subprocess

    outputs = {"squeue": "55_2\n55_3\n", "sacct": "55_0\n55_1\n55_2\n56\n55_[4-5]\n"}

    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, outputs[cmd[0]], "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert slurm_client.jobs_named("cb-x") == {0: "55_0", 1: "55_1", 2: "55_2", 3: "55_3"}

    def missing(cmd, **kw):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(subprocess, "run", missing)
    assert slurm_client.jobs_named("cb-x") is None


# -- a real (tiny) run with the in-process executor ---------------------------------------------


def test_debug_run_writes_records_skips_finished_and_evaluates_only_new_archs(tmp_path):
    data = spec(tmp_path, ipcs=[1], seeds=[0], methods=["random"], budgets={"eval_epochs": 1})
    sw = build_sweep(data)
    summary = launcher.run_sweep(sw, debug(sw), log=lambda m: None)
    assert summary.done == 1 and summary.failed == 0
    store = Store(sw.output)
    cid = sw.cells[0].cell_id
    rec = json.loads(store.record_path(cid, "ConvNet").read_text())
    for key in ("cell_id", "sweep", "dataset", "ipc", "method", "label", "overrides", "method_config", "seed",
                "train_arch", "eval_arch", "num_eval", "eval_epochs", "eval_augmentation", "accuracies", "cost",
                "synset_path", "code_version", "host", "device", "created"):
        assert key in rec, key
    assert rec["synset_path"] == f"synsets/{cid}.pt" and (sw.output / rec["synset_path"]).is_file()
    assert 0 <= rec["accuracies"][0] <= 1 and "condense_wall_time_s" in rec["cost"]
    cells = json.loads((sw.output / "cells.json").read_text())
    assert cells["sweep"] == "t" and cells["cells"][0]["cell_id"] == cid
    synset_mtime = store.synset_path(cid).stat().st_mtime_ns

    again = launcher.run_sweep(build_sweep(data), debug(sw), log=lambda m: None)
    assert again.skipped == 1 and again.submitted == 0

    more = launcher.run_sweep(build_sweep({**data, "eval_archs": ["ConvNet", "MLP"]}), debug(sw),
                              log=lambda m: None)
    assert more.done == 1 and store.record_path(cid, "MLP").is_file()
    assert store.synset_path(cid).stat().st_mtime_ns == synset_mtime  # reused, not re-condensed
    statuses = launcher.store_status(store)
    assert [s.status for s in statuses] == ["done"]


def test_debug_run_records_a_failing_cell_and_finishes_the_others(tmp_path):
    data = spec(tmp_path, ipcs=[1, 2], seeds=[0], methods=["random"], budgets={"eval_epochs": 1})
    sw = build_sweep(data)
    bad = sw.cells[0].cell_id
    store = Store(sw.output)
    store.synset_path(bad).parent.mkdir(parents=True)
    store.synset_path(bad).write_bytes(b"garbage")
    summary = launcher.run_sweep(sw, debug(sw), log=lambda m: None)
    assert summary.failed == 1 and summary.done == 1
    by_id = {s.cell.cell_id: s for s in launcher.store_status(store)}
    assert by_id[bad].status == "failed" and "could not be read as a synthetic set" in by_id[bad].error
    assert by_id[sw.cells[1].cell_id].status == "done"
    failure = store.read_failure(bad)
    assert "Traceback" in failure["traceback"]


# -- executors, run options and cluster profiles -------------------------------------------------


def test_executors_are_looked_up_by_name_and_an_unknown_one_is_a_one_line_error(tmp_path):
    store = Store(tmp_path / "s")
    assert executors.executor_names() == ["debug", "local", "slurm"]
    kinds = {name: type(executors.executor_for(name, store)) for name in executors.executor_names()}
    assert kinds == {"debug": executors.DebugExecutor, "local": executors.LocalExecutor,
                     "slurm": executors.SlurmExecutor}
    assert all(issubclass(k, executors.Executor) and k.name == n for n, k in kinds.items())
    for make in (lambda: executors.executor_for("slrum", store), lambda: RunOptions(executor="slrum")):
        with pytest.raises(UserError) as err:
            make()
        assert str(err.value) == "unknown executor 'slrum'; valid executors: debug, local, slurm"
    # the CLI offers exactly the registered executors
    parser = argparse.ArgumentParser()
    sweep_cli.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "quick", "--executor", "slrum"])


def _run_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["run", "spec.yaml", *argv])


def test_run_options_are_built_once_from_the_flags_and_the_spec(tmp_path):
    sw = build_sweep(spec(tmp_path, profile="cpu", device="cpu", download=True, data_root=str(tmp_path / "d")))
    args = _run_args("--executor", "local", "--parallel", "3", "--array-parallelism", "5", "--checkpoint-every",
                     "4", "--progress", "--poll", "0.5", "--no-wait", "--force")
    options = sweep_cli.run_options(args, sw)
    assert options == RunOptions(executor="local", data_root=tmp_path / "d", device="cpu", download=True,
                                 checkpoint_every=4, progress=True, parallel=3, array_parallelism=5,
                                 timeout_min=60, force=True, wait=False, poll_s=0.5, profile=sw.profile)
    assert sw.profile.name == "cpu" and options.timeout_min == sw.profile.timeout_min
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.parallel = 9  # type: ignore[misc]
    defaults = sweep_cli.run_options(_run_args(), build_sweep(spec(tmp_path)))
    assert (defaults.executor, defaults.parallel, defaults.array_parallelism, defaults.checkpoint_every,
            defaults.progress, defaults.wait, defaults.force, defaults.profile) == ("slurm", 1, None, 10, False,
                                                                                  True, False, None)
    assert defaults.timeout_min == 24 * 60  # no profile: the local executor's default limit
    # the job a cell runs gets the run's options, nothing relayed by hand
    job = executors.make_job(Store(sw.output), sw.name, sw.cells[0], ["ConvNet"], options)
    assert (job.data_root, job.device, job.download, job.checkpoint_every, job.progress) == (
        str(tmp_path / "d"), "cpu", True, 4, True)
    # the run's array parallelism replaces the profile's in the sbatch parameters
    slurm = executors.SlurmExecutor(Store(sw.output), dataclasses.replace(options, executor="slurm"))
    assert slurm.parameters(1, "x")["array_parallelism"] == 5
    assert executors.SlurmExecutor(Store(sw.output), RunOptions(executor="slurm", profile=sw.profile)).parameters(
        1, "x")["array_parallelism"] == sw.profile.array_parallelism


def test_cmd_run_hands_the_launcher_one_options_object(tmp_path, monkeypatch):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec(tmp_path, device="cpu")))
    seen = []

    def fake_run_sweep(sweep, options, **kw):
        seen.append(options)
        return launcher.RunSummary()

    monkeypatch.setattr(launcher, "run_sweep", fake_run_sweep)
    assert sweep_cli.main(["run", str(f), "--executor", "debug", "--checkpoint-every", "7"]) == 0
    (options,) = seen
    assert isinstance(options, RunOptions) and options.executor == "debug" and options.checkpoint_every == 7
    assert options.device == "cpu"


@pytest.mark.parametrize("flag", ["--parallel", "--checkpoint-every", "--array-parallelism"])
def test_bad_run_flags_are_a_one_line_error(tmp_path, capsys, flag):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec(tmp_path)))
    assert sweep_cli.main(["run", str(f), "--executor", "debug", flag, "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {flag} must be >= 1, got 0"


def test_cluster_profile_reports_every_problem_at_once(tmp_path):
    bad = {"partition": 3, "gpus": 2, "gpus_per_node": -1, "cpus_per_task": 0, "mem_gb": 0, "timeout_min": "soon",
           "array_parallelism": True, "setup": ["ok", 5], "additional_parameters": {1: "x"},
           "scale_with_ipc": {"reference_ipc": -1, "time_exp": 1}}
    with pytest.raises(ProfileError) as err:
        ClusterProfile.from_mapping(bad)
    problems = err.value.problems
    expected = ["profile.partition: must be str or null", "profile.gpus: unknown profile key",
                "profile.gpus_per_node: must be >= 0", "profile.cpus_per_task: must be >= 1",
                "profile.mem_gb: must be > 0", "profile.timeout_min: must be int or null",
                "profile.array_parallelism: must be int or null", "profile.setup: must be a list of shell",
                "profile.additional_parameters: keys must be", "profile.scale_with_ipc.reference_ipc: must be a number",
                "profile.scale_with_ipc.time_exp: unknown key"]
    assert len(problems) == len(expected)
    for fragment in expected:
        assert sum(p.startswith(fragment) for p in problems) == 1, (fragment, problems)
    assert all("\n" not in p for p in problems)
    assert str(err.value).count("\n  - ") == len(expected)
    # a file with the same problems: load_profile and a sweep report every one of them
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in bad.items() if k != "additional_parameters"}))
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    assert len(err.value.problems) == len(expected) - 1
    with pytest.raises(SpecError) as err:
        build_sweep(spec(tmp_path, profile=str(path), seeds=[-1]))
    assert len(err.value.problems) == len(expected) and "seeds[0]: must be a non-negative integer, got -1" in \
        err.value.problems


def test_cluster_profile_fields_and_defaults(tmp_path):
    gpu = load_profile("gpu")
    assert (gpu.name, gpu.partition, gpu.gpus_per_node, gpu.cpus_per_task, gpu.mem_gb, gpu.timeout_min,
            gpu.array_parallelism) == ("gpu", "gpu", 1, 8, 32.0, 240, 32)
    assert gpu.scale_with_ipc == IpcScaling(reference_ipc=10, time_exponent=1.0, mem_exponent=0.0,
                                            max_timeout_min=2880, max_mem_gb=128)
    assert gpu.path == resolve_profile_path("gpu").resolve() and gpu.path.name == "gpu.yaml"
    assert gpu.resources(50) == (1200, 32.0) and gpu.resources(None) == (2880, 32.0)
    cpu = load_profile("cpu")
    assert cpu.gpus_per_node == 0 and "gpus_per_node" not in cpu.sbatch_parameters(1, job_name="x")
    # null or missing keys mean the defaults; the profile is frozen
    nulls = ClusterProfile.from_mapping({"partition": None, "timeout_min": None, "scale_with_ipc": None})
    assert nulls == ClusterProfile()
    assert nulls.resources(100) == (60, 8.0)  # no reference IPC: nothing scales
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpu.mem_gb = 1  # type: ignore[misc]


def test_a_job_slurm_does_not_know_yet_counts_as_active_only_for_the_grace_period(tmp_path, monkeypatch):
    import datetime as dt

    store = Store(tmp_path / "s")
    slurm = executors.executor_for("slurm", store)
    monkeypatch.setattr(slurm_client, "slurm_states", lambda ids: {})  # neither squeue nor sacct knows it
    now = dt.datetime.now(dt.timezone.utc)
    fresh = {"executor": "slurm", "job_id": "9_0", "submitted": now.isoformat()}
    old = {**fresh, "submitted": (now - dt.timedelta(seconds=executors.UNKNOWN_GRACE_S + 5)).isoformat()}
    assert slurm.is_active(fresh) == (True, "UNKNOWN")
    assert slurm.is_active(old) == (False, "UNKNOWN")
    assert launcher.is_active(store, fresh) == (True, "UNKNOWN")
    assert launcher.is_active(store, {**fresh, "state": "CANCELLED_BY_USER"}) == (False, "NONE")
    assert slurm.is_active(old, states={"9_0": "PENDING"}) == (True, "PENDING")  # prefetched answer wins


def test_local_executor_runs_at_most_parallel_cells_of_its_own(tmp_path):
    local = executors.LocalExecutor(Store(tmp_path / "s"), RunOptions(executor="local", parallel=2))
    cell = build_sweep(spec(tmp_path, methods=["random"], ipcs=[1], seeds=[0])).cells[0]
    mine = executors.Submitted(cell, "local", "1", ["ConvNet"])
    theirs = executors.Submitted(cell, "slurm", "2_0", ["ConvNet"], reattached=True)
    assert local.capacity([]) == 2 and local.capacity([mine]) == 1 and local.capacity([mine, mine]) == 0
    assert local.capacity([theirs, theirs, mine]) == 1  # re-attached jobs do not count


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
