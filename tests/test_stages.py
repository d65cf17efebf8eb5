"""Expert trajectories as a sweep stage (benchmarks.stages, the launcher's stage handling).

A tiny sweep on the bundled digits with two MTT cells of one trajectory key (they differ in
the image learning rate only) and a random cell: the debug executor trains the stage once,
into ``<store>/experts/``, then runs both MTT cells from it; a rerun trains nothing. Budgets:
2 experts of 2 epochs on a narrow ConvNet, 2 distillation iterations, 1 evaluation network of
1 epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.cells import Cell
from benchmarks.launcher import run_sweep, stage_statuses
from benchmarks.run_options import RunOptions
from benchmarks.stages import ExpertStage, ExpertStageJob, stage_of, stages_for
from benchmarks.store import Store
from benchmarks.sweep import build_sweep
from methods.trajectories import TrajectoryKey

MTT = dict(method="mtt", model="ConvNetW32", syn_steps=2, expert_epochs=1, max_start_epoch=1, lr_lr=1e-5,
           lr_teacher=0.01, zca=False, num_experts=2, expert_train_epochs=2, budgets={"iterations": 2})


def _sweep(tmp_path: Path, methods: list) -> object:
    spec = {"name": "stages", "datasets": ["digits"], "ipcs": [1], "methods": methods, "eval_archs": ["ConvNet"],
            "seeds": [0], "num_eval": 1, "budgets": {"iterations": 2, "eval_epochs": 1},
            "output": str(tmp_path / "out"), "random_baseline": False}
    return build_sweep(spec, default_name="stages", check_data=False)


def _methods() -> list:
    return [dict(MTT, lr_img=100.0, label="mtt a"), dict(MTT, lr_img=50.0, label="mtt b"), "random"]


def test_cells_of_one_key_share_one_stage(tmp_path):
    sweep = _sweep(tmp_path, _methods() + [dict(MTT, lr_img=10.0, num_experts=3, label="mtt c"),
                                            dict(MTT, lr_img=10.0, expert_train_epochs=3, label="mtt d")])
    stages, needs = stages_for(sweep.cells)
    key2 = TrajectoryKey(dataset="digits", arch="ConvNetW32", zca=False, epochs=2)
    key3 = TrajectoryKey(dataset="digits", arch="ConvNetW32", zca=False, epochs=3)
    # the 2-epoch key serves three cells and trains the most experts any of them asks for
    assert sorted(stages, key=lambda s: s.key.epochs) == [ExpertStage(key2, 3), ExpertStage(key3, 2)]
    by_label = {c.label: c for c in sweep.cells}
    assert {needs[by_label[k].cell_id] for k in ("mtt a", "mtt b", "mtt c")} == {ExpertStage(key2, 3).stage_id}
    assert needs[by_label["mtt d"].cell_id] == ExpertStage(key3, 2).stage_id
    assert by_label["random"].cell_id not in needs and stage_of(by_label["random"]) is None
    assert ExpertStage.from_json(json.loads(json.dumps(stages[0].to_json()))) == stages[0]


def test_debug_sweep_runs_the_stage_once_then_its_cells(tmp_path, capsys):
    sweep = _sweep(tmp_path, _methods())
    store = Store(sweep.output)
    lines: list[str] = []
    summary = run_sweep(sweep, RunOptions(executor="debug", data_root=Path("data"), device="cpu", poll_s=0.01),
                        log=lines.append)
    assert (summary.stages_submitted, summary.stages_done, summary.stages_failed) == (1, 1, 0)
    assert (summary.done, summary.failed) == (3, 0), lines
    [stage] = stages_for(sweep.cells)[0]
    folder = store.root / "experts" / stage.key.folder_name()
    assert sorted(p.name for p in folder.glob("expert_*.pt")) == ["expert_0.pt", "expert_1.pt"]
    assert stage.status(store.experts_root) == "done"
    info = store.read_job(stage.stage_id)
    assert info["executor"] == "debug" and info["state"] == "COMPLETED"
    assert (store.root / "jobs" / f"{stage.stage_id}.json").is_file()
    # the stage ran before any cell
    first_cell = next(i for i, ln in enumerate(lines) if "mtt a" in ln or "mtt b" in ln)
    assert any("expert stage" in ln for ln in lines[:first_cell])
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("expert_*.pt")}

    # rerun with one more cell of the same key: the stage is found complete, nothing is trained
    more = _sweep(tmp_path, _methods() + [dict(MTT, lr_img=20.0, label="mtt e")])
    lines.clear()
    summary = run_sweep(more, RunOptions(executor="debug", device="cpu", poll_s=0.01), log=lines.append)
    assert (summary.stages_submitted, summary.skipped, summary.done) == (0, 3, 1), lines
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("expert_*.pt")} == mtimes
    assert [s for _, s, _ in stage_statuses(store, more.cells)] == ["done"]
    printed = capsys.readouterr().out  # the stage job's own log lines
    assert printed.count("expert 0: training") == 1 and printed.count("expert 1: training") == 1


def test_a_partial_stage_is_finished_not_retrained(tmp_path):
    sweep = _sweep(tmp_path, [dict(MTT, lr_img=100.0, label="mtt a")])
    [stage] = stages_for(sweep.cells)[0]
    store = Store(sweep.output)
    one = ExpertStage(stage.key, 1)
    ExpertStageJob(str(store.root), one.to_json(), data_root="data", device="cpu")()
    assert stage.status(store.experts_root) == "partial" and stage.finished_experts(store.experts_root) == [0]
    first = (stage.folder(store.experts_root) / "expert_0.pt").stat().st_mtime_ns
    out = ExpertStageJob(str(store.root), stage.to_json(), data_root="data", device="cpu")()
    assert (out["skipped"], out["trained"]) == ([0], [1])
    assert (stage.folder(store.experts_root) / "expert_0.pt").stat().st_mtime_ns == first
    assert stage.is_done(store.experts_root)


def test_a_failed_stage_fails_its_waiting_cells_with_its_reason(tmp_path):
    sweep = _sweep(tmp_path, [dict(MTT, lr_img=100.0, label="mtt a"), "random"])
    store = Store(sweep.output)
    # the stage's folder holds experts of another key: the stage job refuses it (one line) and fails
    lines: list[str] = []
    [stage] = stages_for(sweep.cells)[0]
    bad = stage.folder(store.experts_root)
    bad.mkdir(parents=True)
    (bad / "key.json").write_text(json.dumps({"key": {"dataset": "other"}}))  # a folder of another key
    summary = run_sweep(sweep, RunOptions(executor="debug", device="cpu", poll_s=0.01), log=lines.append)
    assert (summary.stages_failed, summary.done, summary.failed) == (1, 1, 1), lines
    mtt = next(c for c in sweep.cells if c.method == "mtt")
    failure = store.read_failure(mtt.cell_id)
    assert stage.stage_id in failure["error"] and "another key" in failure["error"]
    assert "another key" in store.read_failure(stage.stage_id)["error"]


def test_condense_reads_experts_from_experts_root_and_names_the_command_when_missing(tmp_path, capsys):
    from benchmarks.cli import EXIT_USER_ERROR, main

    sets = ["model=ConvNetW32", "syn_steps=2", "expert_epochs=1", "max_start_epoch=1", "lr_img=100",
            "lr_lr=0.00001", "lr_teacher=0.01", "zca=false", "num_experts=1", "expert_train_epochs=2"]
    args = ["condense", "--method", "mtt", "--dataset", "digits", "--ipc", "1", "--iterations", "1", "--device",
            "cpu", "--experts-root", str(tmp_path), "--out", str(tmp_path / "mtt.pt")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    command = ("condbench experts --dataset digits --arch ConvNetW32 --num-experts 1 --epochs 2 --seed 0 "
               f"--root {tmp_path}")
    assert command in err and not (tmp_path / "mtt.pt").exists()
    assert main(command.split()[1:] + ["--device", "cpu"]) == 0
    assert main(args) == 0 and (tmp_path / "mtt.pt").is_file()


def test_local_executor_starts_the_cell_after_its_stage_process_ended(tmp_path):
    sweep = _sweep(tmp_path, [dict(MTT, lr_img=100.0, label="mtt a")])
    store = Store(sweep.output)
    lines: list[str] = []
    summary = run_sweep(sweep, RunOptions(executor="local", device="cpu", poll_s=0.2), log=lines.append)
    assert (summary.stages_submitted, summary.stages_done, summary.done, summary.failed) == (1, 1, 1, 0), lines
    [stage] = stages_for(sweep.cells)[0]
    [cell] = sweep.cells
    stage_info, cell_info = store.read_job(stage.stage_id), store.read_job(cell.cell_id)
    assert stage_info["executor"] == cell_info["executor"] == "local"
    assert stage_info["job_id"] != cell_info["job_id"]
    # the cell's process was started only after the stage had stored every expert
    experts_done = max(p.stat().st_mtime for p in stage.folder(store.experts_root).glob("expert_*.pt"))
    from datetime import datetime

    assert datetime.fromisoformat(cell_info["submitted"]).timestamp() >= experts_done - 1  # ISO: whole seconds


def test_cancel_stops_a_running_stage_job(tmp_path):
    import subprocess
    import sys

    from benchmarks.launcher import cancel_store

    sweep = _sweep(tmp_path, [dict(MTT, lr_img=100.0, label="mtt a")])
    store = Store(sweep.output)
    store.init(sweep.name, "", [c.to_json() for c in sweep.cells])
    [stage] = stages_for(sweep.cells)[0]
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.write_job(stage.stage_id, job_id=str(proc.pid), executor="local", archs=[])
        assert cancel_store(store, log=lambda msg: None) == [str(proc.pid)]
        assert proc.wait(timeout=20) != 0
        assert store.read_job(stage.stage_id)["state"] == "CANCELLED_BY_USER"
    finally:
        proc.kill()


def test_slurm_cells_of_a_stage_get_afterok_and_kill_on_invalid_dep(tmp_path):
    # the sbatch lines submitit writes (no cluster needed; the real submission is in
    # tests/test_slurm_integration.py)
    from benchmarks.executors import SlurmExecutor, sbatch_preview
    from benchmarks.profile import load_profile

    sweep = _sweep(tmp_path, _methods())
    store = Store(sweep.output)
    slurm = SlurmExecutor(store, RunOptions(executor="slurm", profile=load_profile("cpu")))
    mtt_a, mtt_b, rand = sorted(sweep.cells, key=lambda c: c.label)
    after = {mtt_a.cell_id: ["41"], mtt_b.cell_id: ["41"]}
    groups = slurm.arrays("s", [(c, list(c.eval_archs)) for c in (mtt_a, mtt_b, rand)], after)
    assert sorted(sorted(c.label for c, _ in g) for g in groups) == [["mtt a", "mtt b"], ["random"]]
    lines = sbatch_preview(slurm.cell_parameters(mtt_a, "x", ["41"]), store.logs_dir)
    assert "#SBATCH --dependency=afterok:41" in lines and "#SBATCH --kill-on-invalid-dep=yes" in lines
    assert not any("dependency" in ln for ln in sbatch_preview(slurm.cell_parameters(rand, "x"), store.logs_dir))


def test_a_cell_whose_config_has_no_key_needs_no_stage():
    cell = Cell(cell_id="x", dataset="cifar10", ipc=20, method="mtt", label="mtt", overrides={}, seed=0,
                eval_archs=("ConvNet",), num_eval=1, eval_epochs=1, iterations=1, train_arch=None)
    assert stage_of(cell) is None  # cifar10 IPC 20 is not in MTT's table: the cell's job reports it
    assert stages_for([cell]) == ([], {})
