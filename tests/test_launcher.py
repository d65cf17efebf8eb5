"""The launcher, its executors, run options and cluster profiles (no cluster needed: SLURM is
faked where a test submits; ``test_slurm_integration.py`` runs the same paths on a real one)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from benchmarks import UserError, executors, launcher, slurm_client, sweep_cli, worker
from benchmarks.profile import ClusterProfile, IpcScaling, ProfileError, load_profile, resolve_profile_path
from benchmarks.run_options import RunOptions
from benchmarks.store import Store
from benchmarks.sweep import SpecError, build_sweep
from tests.test_sweep import spec


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

    # The next launcher finds the array by its name and tracks its tasks instead of resubmitting
    # (sbatch had returned: submitit named each task's pickle).
    for task in ("700_0", "700_1"):
        (store.logs_dir / f"{task}_submitted.pkl").write_bytes(b"job")
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


@pytest.mark.parametrize("answer, tracked", [({}, False), ({1: "42_1"}, True)])
def test_interrupted_submission_slurm_never_saw_is_dropped(tmp_path, answer, tracked):
    store = Store(tmp_path / "s")
    store.write_job("a", job_id="42_0", executor="slurm", archs=["ConvNet"])  # written before the kill
    store.begin_submission("tok", "cb-x-tok", [("a", ["ConvNet"]), ("b", ["ConvNet", "MLP"])])
    store.logs_dir.mkdir(parents=True)
    (store.logs_dir / "42_1_submitted.pkl").write_bytes(b"job")
    logs = []
    rec = executors.recover_submissions(store, logs.append, find=lambda name: answer, settle_s=0)
    assert store.pending_submissions() == []
    assert rec.recovered == int(tracked) and (store.read_job("b") is not None) == tracked
    assert not rec.held and not rec.resubmit
    if tracked:
        assert store.read_job("b")["archs"] == ["ConvNet", "MLP"]
        assert store.read_job("a")["history"] == []  # the task already tracked is left alone


def test_interrupted_submission_keeps_its_note_and_holds_its_cells_while_slurm_cannot_be_asked(tmp_path):
    store = Store(tmp_path / "s")
    store.begin_submission("tok", "cb-x-tok", [("a", ["ConvNet"]), ("b", ["ConvNet"])])
    logs = []
    rec = executors.recover_submissions(store, logs.append, find=lambda name: None)
    assert rec.held == {"a", "b"} and rec.recovered == 0
    assert [n["token"] for n in store.pending_submissions()] == ["tok"]  # the note survives
    assert logs == ["SLURM did not answer about the interrupted submission 'cb-x-tok': its 2 cell(s) are not "
                    "submitted again until it does (re-run once the controller is back)"]
    # once SLURM answers (the array exists) the note is resolved
    for task in ("43_0", "43_1"):
        (store.logs_dir / f"{task}_submitted.pkl").parent.mkdir(parents=True, exist_ok=True)
        (store.logs_dir / f"{task}_submitted.pkl").write_bytes(b"job")
    rec = executors.recover_submissions(store, logs.append, find=lambda name: {0: "43_0", 1: "43_1"})
    assert rec.recovered == 2 and not rec.held and store.pending_submissions() == []


def test_tasks_of_a_launcher_killed_during_sbatch_are_cancelled_and_their_cells_resubmitted(tmp_path, monkeypatch):
    # sbatch queued the array but submitit never renamed <uuid>.pkl to <job>_submitted.pkl:
    # those tasks would wait for their pickle and fail. Task 1's pickle exists (it is tracked).
    sw, store = _fake_slurm_store(tmp_path, monkeypatch)
    ids = [c.cell_id for c in sw.cells]
    store.begin_submission("tok", "cb-x-tok", [(cid, ["ConvNet"]) for cid in ids])
    (store.logs_dir / f"{'ab' * 16}.pkl").write_bytes(b"orphan")
    (store.logs_dir / "800_1_submitted.pkl").write_bytes(b"job")
    cancelled = []
    rec = executors.recover_submissions(store, lambda m: None, find=lambda name: {0: "800_0", 1: "800_1"},
                                        cancel=lambda job_id: cancelled.append(job_id) or True)
    assert cancelled == ["800_0"] and rec.resubmit == [ids[0]] and rec.recovered == 1
    assert store.read_job(ids[0]) is None and store.read_job(ids[1])["job_id"] == "800_1"
    assert store.pending_submissions() == [] and not (store.logs_dir / f"{'ab' * 16}.pkl").exists()
    monkeypatch.setattr(slurm_client, "slurm_states", lambda ids: {j: "RUNNING" for j in ids})
    _, active, todo = launcher.plan(store, sw, recovery=rec)
    assert [c.cell_id for c, _ in todo] == [ids[0]] and [c.cell_id for c, _ in active] == [ids[1]]


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
    store.synset_path(bad).mkdir(parents=True)  # its set cannot be written: that cell fails
    summary = launcher.run_sweep(sw, debug(sw), log=lambda m: None)
    assert summary.failed == 1 and summary.done == 1
    by_id = {s.cell.cell_id: s for s in launcher.store_status(store)}
    assert by_id[bad].status == "failed" and by_id[bad].error.startswith("IsADirectoryError")
    assert not list(store.synset_path(bad).parent.glob(".*.tmp"))  # the temp file was removed
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
                                 timeout_min=24 * 60, force=True, wait=False, poll_s=0.5, profile=sw.profile)
    # a local job is not held to the profile's SLURM limit (60 min would kill a paper-budget cell)
    assert sw.profile.name == "cpu" and sw.profile.timeout_min == 60 and options.timeout_min == 24 * 60
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.parallel = 9  # type: ignore[misc]
    defaults = sweep_cli.run_options(_run_args(), build_sweep(spec(tmp_path)))
    assert (defaults.executor, defaults.parallel, defaults.array_parallelism, defaults.checkpoint_every,
            defaults.progress, defaults.wait, defaults.force, defaults.profile) == ("slurm", 1, None, 10, False,
                                                                                  True, False, None)
    assert defaults.timeout_min == 24 * 60  # the local executor's default limit
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
    monkeypatch.setattr(slurm_client, "slurm_states", lambda ids: {j: "UNKNOWN" for j in ids})  # nobody knows it
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
    assert local.capacity([theirs, theirs, mine]) == 1  # re-attached SLURM jobs run elsewhere
    # an earlier launcher's local job still running on this machine takes a slot
    earlier = executors.Submitted(cell, "local", "3", ["ConvNet"], reattached=True)
    assert local.capacity([earlier]) == 1 and local.capacity([earlier, mine]) == 0


def test_local_executor_splits_the_cores_between_its_cells_unless_told(tmp_path, monkeypatch):
    from benchmarks import workers

    monkeypatch.setattr(workers, "available_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    store = Store(tmp_path / "s")
    assert executors.LocalExecutor(store, RunOptions(executor="local", parallel=2)).cell_threads() == 4
    assert executors.LocalExecutor(store, RunOptions(executor="local", parallel=3)).cell_threads() == 2
    assert executors.LocalExecutor(store, RunOptions(executor="local", parallel=16)).cell_threads() == 1
    assert executors.LocalExecutor(store, RunOptions(executor="local", parallel=1)).cell_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own choice wins
    assert executors.LocalExecutor(store, RunOptions(executor="local", parallel=2)).cell_threads() is None


def test_a_cell_job_runs_with_its_thread_count(tmp_path, monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(worker, "run_cell", lambda *a, **k: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    try:
        cell = build_sweep(spec(tmp_path, methods=["random"], ipcs=[1], seeds=[0])).cells[0]
        job = worker.CellJob(str(tmp_path), cell.to_json(), sweep_name="t", archs=["ConvNet"],
                             data_root="data", threads=1)
        job()
        assert seen == [1]
    finally:
        torch.set_num_threads(before)


# -- store consistency, corrupt sets, unwritable stores, cell ids ------------------------------


def test_a_corrupt_stored_set_is_found_by_verify_and_recomputed_by_run_without_force(tmp_path, capsys):
    data = spec(tmp_path, ipcs=[1], seeds=[0], methods=["random"], budgets={"eval_epochs": 1})
    sw = build_sweep(data)
    launcher.run_sweep(sw, debug(sw), log=lambda m: None)
    store = Store(sw.output)
    cid = sw.cells[0].cell_id
    good = store.synset_path(cid).read_bytes()
    from methods.synset import SyntheticSet

    images = SyntheticSet.load(store.synset_path(cid)).images
    assert json.loads(store.synset_digest_path(cid).read_text())["bytes"] == len(good)
    assert launcher.verify_store(store) == ([], [])
    store.synset_path(cid).write_bytes(good[: len(good) // 2])  # truncated, records intact
    problems, _ = launcher.verify_store(store)
    assert problems == [f"corrupt synthetic set: {store.synset_path(cid)} has {len(good) // 2} bytes, "
                        f"{len(good)} were written"]
    assert sweep_cli.main(["status", str(sw.output), "--verify", "--no-query"]) == 1
    assert "verify: 1 problem(s)" in capsys.readouterr().out
    logs = []
    summary = launcher.run_sweep(build_sweep(data), debug(sw), log=logs.append)
    assert summary.submitted == 1 and summary.done == 1 and summary.skipped == 0
    assert any(f"cell {cid} (" in m and "its stored synthetic set is corrupt" in m and "recomputing the cell" in m
               for m in logs)
    assert SyntheticSet.load(store.synset_path(cid)).images.equal(images)  # the same computation again
    assert launcher.verify_store(store)[0] == []
    store.record_path(cid, "ConvNet").write_text("{not json")
    assert launcher.verify_store(store)[0] == [f"unreadable record {store.record_path(cid, 'ConvNet')}"]
    assert [s.status for s in launcher.store_status(store, query=False)] == ["corrupt"]


def test_an_unwritable_store_is_one_line_naming_the_folder_the_error_and_what_to_do(tmp_path):
    data = spec(tmp_path, ipcs=[1], seeds=[0], methods=["random"], budgets={"eval_epochs": 1})
    sw = build_sweep({**data, "output": str(tmp_path / "gone" / "out")})
    (tmp_path / "gone").write_text("became a file after the spec was checked")
    with pytest.raises(UserError) as err:
        launcher.run_sweep(sw, debug(sw), log=lambda m: None)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot write {tmp_path / 'gone'}") and msg.endswith("--output")


def test_write_problem_names_path_error_and_advice():
    import errno

    from benchmarks.storage import write_problem

    exc = OSError(errno.ENOSPC, "No space left on device", "/r/records/x.json")
    assert write_problem(exc, "/r", "--output") == (
        "cannot write /r/records/x.json under /r (OSError: No space left on device); the filesystem is full: "
        "free space there or choose another --output")


def test_an_override_equal_to_the_default_is_the_same_cell():
    from benchmarks.cells import cell_id
    from methods.registry import method_info

    base = dict(dataset="digits", ipc=1, method="dm", seed=0, iterations=None, num_eval=1, eval_epochs=None,
                train_arch=None)
    default = method_info("dm").defaults()["lr_img"]
    assert cell_id(overrides={"lr_img": default}, **base) == cell_id(overrides={}, **base)
    assert cell_id(overrides={"lr_img": default * 2}, **base) != cell_id(overrides={}, **base)
    assert cell_id(overrides={}, **base) == "eb18dff446a8"  # ids of specs without such overrides are kept


def test_two_entries_differing_only_by_a_default_valued_override_are_reported(tmp_path):
    data = spec(tmp_path, ipcs=[1], seeds=[0], methods=["dm", {"method": "dm", "lr_img": 1.0, "label": "dm2"}])
    with pytest.raises(SpecError) as err:
        build_sweep(data)
    assert "runs exactly the same cells as" in str(err.value)


def test_slurm_states_parse_ranges_gone_tasks_and_no_answer(monkeypatch):
    import subprocess

    outputs = {"squeue": "33_0|PENDING\n33_1|PENDING\n33_3|PENDING\n",
               "sacct": "33_[0-3]|PENDING\n34_[0-1]|CANCELLED by 0\n35_0|COMPLETED\n"}

    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, outputs[cmd[0]], "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    states = slurm_client.slurm_states(["33_0", "33_2", "34_1", "35_0", "36_0"])
    assert states == {"33_0": "PENDING", "33_2": slurm_client.GONE, "34_1": "CANCELLED", "35_0": "COMPLETED",
                      "36_0": "UNKNOWN"}
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "down"))
    assert slurm_client.slurm_states(["33_0"]) == {"33_0": slurm_client.UNREACHABLE}
    assert executors.SlurmExecutor(Store("/nonexistent")).is_active(
        {"job_id": "33_0", "submitted": "2000-01-01T00:00:00+00:00"}) == (True, slurm_client.UNREACHABLE)


@pytest.mark.parametrize("stderr, field, definite", [
    ("sbatch: error: Batch job submission failed: More processors requested than permitted", "cpus_per_task", True),
    ("sbatch: error: Memory specification can not be satisfied", "mem_gb", True),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", "partition", True),
])
def test_sbatch_refusals_name_the_profile_field(stderr, field, definite):
    from submitit.core.utils import FailedJobError

    msg, sure = slurm_client.sbatch_problem(FailedJobError(stderr), "profile 'cpu'")
    assert f"change '{field}' in profile 'cpu'" in msg and "\n" not in msg and sure is definite
    down, sure = slurm_client.sbatch_problem(FailedJobError(
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"),
        "profile 'cpu'")
    assert down.startswith("sbatch could not reach the SLURM controller") and sure is False


def test_a_refused_sbatch_leaves_no_pickles_and_no_note(tmp_path, monkeypatch):
    from submitit.core.utils import FailedJobError

    sw, store = _fake_slurm_store(tmp_path, monkeypatch)

    class Refusing(_FakeSlurmExecutor):
        def batch(self):
            import contextlib

            @contextlib.contextmanager
            def ctx():
                self._batch = []
                yield
                (Path(self.folder) / f"{'cd' * 16}.pkl").write_bytes(b"x")  # submitit pickled the jobs
                raise FailedJobError("sbatch: error: Batch job submission failed: More processors requested "
                                     "than permitted")
            return ctx()

    monkeypatch.setattr(executors.submitit, "SlurmExecutor", Refusing)
    with pytest.raises(UserError) as err:
        _slurm(store).submit(sw.name, [(c, ["ConvNet"]) for c in sw.cells])
    assert "change 'cpus_per_task'" in str(err.value)
    assert store.pending_submissions() == [] and not list(store.logs_dir.glob("*.pkl"))


def test_cells_that_differ_only_in_evaluation_condense_their_set_once(tmp_path, monkeypatch):
    from benchmarks import pipeline

    calls = []
    real_condense = pipeline.run_condense

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real_condense(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_condense", counting)
    sw = build_sweep(spec(tmp_path, ipcs=[1], seeds=[0], budgets={"iterations": 1, "eval_epochs": 1}, methods=[
        {"method": "dm", "label": "dm"}, {"method": "dm", "label": "dm [no aug]", "eval": {"augmentation": "none"}},
        {"method": "dm", "label": "dm lr 2", "lr_img": 2.0}]))
    logs = []
    summary = launcher.run_sweep(sw, debug(sw), log=logs.append)
    assert summary.done == 3
    assert calls == ["dm", "dm"]  # the [no aug] cell reused the first set; another lr is another set
    store = Store(sw.output)
    first, no_aug, other = sw.cells
    assert first.set_key() == no_aug.set_key() != other.set_key() and first.cell_id != no_aug.cell_id
    assert store.synset_path(no_aug.cell_id).read_bytes() == store.synset_path(first.cell_id).read_bytes()
    rec = json.loads(store.record_path(no_aug.cell_id, "ConvNet").read_text())
    assert rec["cost"]["set_reused_from"] == first.cell_id
    assert launcher.verify_store(store) == ([], [])
    # the cost table shows the condensation once: the reusing row says (shared)
    from analysis.load import load_results
    from analysis.tables import cost_table

    cost = cost_table(load_results([store.root]))
    shared = {r[2].text: r[4].text.endswith("(shared)") for r in cost.rows}
    assert shared == {"DM": False, "dm [no aug]": True, "dm lr 2": False}
    assert any(n.startswith("(shared): dm [no aug] evaluate a set") for n in cost.notes)
    # the cost scatter draws that row hollow and its legend says so
    from analysis.figures import cost_scatter

    fig = cost_scatter(load_results([store.root]))
    ax = fig.axes[0]
    hollow = [c for c in ax.collections if len(c.get_offsets()) and not c.get_facecolors().any()]
    assert [c.get_label() for c in hollow] == ["dm [no aug] (shared set)"]
    filled = [c.get_label() for c in ax.collections if len(c.get_offsets()) and c.get_facecolors().any()]
    assert sorted(filled) == ["DM", "dm lr 2"]


def test_cancel_stops_a_local_job_whose_processes_ignore_sigint(tmp_path):
    """A launcher started in the background by a script runs its local jobs with SIGINT ignored
    (the submitit controller and its task): cancel must still stop both."""
    import signal
    import subprocess
    import sys
    import time

    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(child.pid, flush=True); time.sleep(60)")
    controller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    task = int(controller.stdout.readline())
    assert executors.child_pids(controller.pid) == [task]
    local = executors.LocalExecutor(Store(tmp_path / "s"), RunOptions(executor="local"))
    start = time.monotonic()
    assert local.cancel({"job_id": str(controller.pid)})
    controller.wait(timeout=10)
    assert time.monotonic() - start < executors.LOCAL_CANCEL_GRACE_S + 5
    deadline = time.monotonic() + 5
    while executors.pid_alive(task) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not executors.pid_alive(task)
    assert not local.cancel({"job_id": str(controller.pid)})  # gone: nothing to cancel


def test_a_job_process_logs_evaluation_progress_to_stdout_once():
    """A job process has no logging configured: the worker sends INFO lines (the evaluation's
    per-network lines) to stdout in its own format, and submitit's lines are not doubled."""
    import subprocess
    import sys

    code = ("import logging, submitit\n"
            "from benchmarks.worker import configure_job_logging\n"
            "configure_job_logging(); configure_job_logging()\n"
            "logging.getLogger('benchmarks.evaluate').info('ConvNet network 1/4: 50.00 %')\n"
            "logging.getLogger('submitit').info('from submitit')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1])).stdout.splitlines()
    ours = [line for line in out if "ConvNet network 1/4" in line]
    assert len(ours) == 1 and re.fullmatch(r"\[\d\d:\d\d:\d\d\] ConvNet network 1/4: 50\.00 %", ours[0])
    assert len([line for line in out if "from submitit" in line]) == 1
