"""Sweeps through a real SLURM cluster (start one here with ``bash slurm/local/start.sh``).

Every test submits real jobs with ``sbatch`` through submitit and reads their fate from
``sacct``; nothing is mocked. Budgets are tiny (bundled digits, a few iterations, one evaluation
network, a few epochs). Skipped with the reason when no cluster answers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client commands (sinfo/sbatch) here; start a local cluster with `bash slurm/local/start.sh`"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed ({exc}); start a local cluster with `bash slurm/local/start.sh`"
    if out.returncode != 0:
        return f"no SLURM cluster reachable (sinfo: {out.stderr.strip()[:200]}); run `bash slurm/local/start.sh`"
    states = out.stdout.split()
    if not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no usable SLURM node (states: {states}); run `bash slurm/local/wait_idle.sh`"
    if shutil.which("sacct") is None or subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode:
        return "SLURM accounting (sacct) is not available; submitit needs it to follow jobs"
    return None


_PROBLEM = _cluster_problem()
if _PROBLEM:
    pytestmark = [pytest.mark.slurm, pytest.mark.skip(reason=_PROBLEM)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cpu_profile(tmp_path: Path, **extra) -> Path:
    prof = {"partition": None, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 20,
            "array_parallelism": 2}
    prof.update(extra)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def write_spec(tmp_path: Path, name: str, methods, ipcs=(1,), **extra) -> Path:
    spec = {
        "name": f"{name}-{uuid.uuid4().hex[:6]}",
        "datasets": ["digits"],
        "ipcs": list(ipcs),
        "methods": methods,
        "eval_archs": ["ConvNet"],
        "seeds": [0],
        "num_eval": 1,
        "budgets": {"iterations": 3, "eval_epochs": 3},
        "output": str(tmp_path / "out"),
        "profile": str(cpu_profile(tmp_path)),
        "data_root": str(tmp_path / "data"),
        "random_baseline": False,  # exactly the cells listed (the tests count them)
    }
    spec.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.sweep_cli", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def sacct_states(job_ids) -> dict[str, list[str]]:
    """job id -> every state sacct recorded for it (duplicates: requeued runs)."""
    ids = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(["sacct", "-n", "-P", "-D", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=True).stdout
    states: dict[str, list[str]] = {}
    for line in out.splitlines():
        jid, state = line.split("|")[:2]
        states.setdefault(jid, []).append(state.split()[0])
    return states


def job_infos(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")}


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]


def wait_for(cond, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_quick_sweep_end_to_end_through_slurm(tmp_path):
    spec = write_spec(tmp_path, "e2e", ["random", {"method": "dm", "budgets": {"iterations": 2}}], ipcs=[1, 2])
    t0 = time.monotonic()
    run = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    elapsed = time.monotonic() - t0
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out"
    recs = records(out)
    assert len(recs) == 4 and all(r["status"] == "done" and len(r["accuracies"]) == 1 for r in recs)
    infos = job_infos(out)
    assert len(infos) == 4 and all(i["executor"] == "slurm" for i in infos.values())
    job_ids = [i["job_id"] for i in infos.values()]
    # every cell was a real SLURM array task that completed (sacct may lag the result file)
    states = wait_for(lambda: (s := sacct_states(job_ids)) and all(s.get(j) == ["COMPLETED"] for j in job_ids) and s,
                      30, "sacct to report every task COMPLETED")
    assert sorted(states) == sorted(job_ids)
    assert all(Path(i["log_path"]).is_file() for i in infos.values())
    status = cli("status", str(out))
    assert status.returncode == 0 and "4 done" in status.stdout, status.stdout
    print(f"\n4 cells through SLURM: {elapsed:.1f} s wall")


def test_killed_launcher_loses_nothing_and_duplicates_nothing(tmp_path):
    # Two quick random cells and two slower DM cells; array parallelism 2 keeps some queued.
    spec = write_spec(tmp_path, "kill", ["random", {"method": "dm", "budgets": {"iterations": 6}}], ipcs=[1, 2])
    out = tmp_path / "out"
    launcher = subprocess.Popen([sys.executable, "-m", "benchmarks.sweep_cli", "run", str(spec), "--executor",
                                 "slurm", "--poll", "1"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(job_infos(out)) == 4, 60, "all four cells to be submitted")
        wait_for(lambda: len(records(out)) >= 1, 180, "a first record")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.communicate()
    first_ids = {cid: i["job_id"] for cid, i in job_infos(out).items()}
    done_before = len(records(out))
    assert done_before < 4, "the sweep finished before the launcher was killed; nothing was tested"

    again = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "re-attached" in again.stdout
    recs = records(out)
    assert len(recs) == 4 and len({r["cell_id"] for r in recs}) == 4  # no cell lost
    after = job_infos(out)
    assert {cid: i["job_id"] for cid, i in after.items()} == first_ids  # no resubmission
    assert all(not i["history"] for i in after.values())
    # sacct: exactly the four original array tasks ran, each once, all completed
    ids = list(first_ids.values())
    states = wait_for(lambda: (s := sacct_states(ids)) and all(s.get(j) == ["COMPLETED"] for j in ids) and s,
                      30, "sacct to report the four original tasks COMPLETED, once each")
    assert sorted(states) == sorted(ids), states
    summary = [line for line in again.stdout.splitlines() if line.startswith("summary:")][0]
    import re

    finished, submitted, reattached = (int(re.search(rf"(\d+) {w}", summary).group(1))
                                       for w in ("already finished", "submitted", "re-attached"))
    # Cells that finished while no launcher ran are skipped; the rest are re-attached, none resubmitted.
    assert submitted == 0 and finished >= done_before and finished + reattached == 4 and reattached >= 1, summary


def test_launcher_killed_right_after_sbatch_is_recovered_not_resubmitted(tmp_path):
    # The launcher dies the instant sbatch returned, before it tracked any job id.
    spec = write_spec(tmp_path, "race", ["random"], ipcs=[1, 2])
    out = tmp_path / "out"
    code = ("import os, sys\n"
            "from benchmarks import store, sweep_cli\n"
            "store.Store.write_job = lambda *a, **k: os._exit(9)\n"
            f"sys.exit(sweep_cli.main(['run', {str(spec)!r}, '--executor', 'slurm', '--poll', '1']))\n")
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == 9, killed.stdout + killed.stderr
    assert not job_infos(out)
    (intent,) = [json.loads(p.read_text()) for p in (out / "submitting").glob("*.json")]

    again = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 task(s) tracked" in again.stdout and "0 submitted" in again.stdout, again.stdout
    assert len(records(out)) == 2 and not list((out / "submitting").glob("*.json"))
    ids = sorted(i["job_id"] for i in job_infos(out).values())
    # SLURM ran exactly one array under that name: the original tasks, nothing resubmitted
    named = subprocess.run(["sacct", "-n", "-P", "-X", "-S", "now-1days", "--name", intent["job_name"],
                            "-o", "JobID"], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(named) == ids, (named, ids)
    assert len({j.split("_")[0] for j in ids}) == 1


def test_requeued_condensation_resumes_from_checkpoint_and_matches_uninterrupted_run(tmp_path):
    iters = 14
    methods = [{"method": "dm", "budgets": {"iterations": iters}}]
    ref_dir, q_dir = tmp_path / "ref", tmp_path / "requeue"
    ref_dir.mkdir()
    q_dir.mkdir()
    ref_spec = write_spec(ref_dir, "ref", methods)
    q_spec = write_spec(q_dir, "requeue", methods)
    # The uninterrupted reference run (in a plain process, same thread count as the job).
    ref = cli("run", str(ref_spec), "--executor", "debug")
    assert ref.returncode == 0, ref.stdout + ref.stderr

    out = q_dir / "out"
    launcher = subprocess.Popen([sys.executable, "-m", "benchmarks.sweep_cli", "run", str(q_spec), "--executor",
                                 "slurm", "--poll", "1", "--checkpoint-every", "2"], cwd=REPO, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        (cid, info), = wait_for(lambda: list(job_infos(out).items()), 60, "the job to be submitted")
        ckpt = out / "checkpoints" / f"{cid}.pt"
        wait_for(ckpt.is_file, 180, "the first periodic checkpoint")
        # Preempt it the way SLURM does before a time limit: USR2 to the job's steps.
        subprocess.run(["scancel", "--signal=USR2", info["job_id"]], check=True)
        stdout, _ = launcher.communicate(timeout=400)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, stdout
    log = Path(info["log_path"]).read_text()
    assert "checkpoint on signal: saved latest loop state" in log, log[-3000:]
    assert "resuming from checkpoint at iteration" in log, log[-3000:]
    resumed_at = int(log.split("resuming from checkpoint at iteration")[1].split()[0])
    assert 0 < resumed_at < iters
    states = wait_for(lambda: (s := sacct_states([info["job_id"]])[info["job_id"]]) and s[-1] == "COMPLETED" and s,
                      30, "sacct to report the requeued job COMPLETED")
    assert "REQUEUED" in states or "PREEMPTED" in states or len(states) > 1, states
    assert states[-1] == "COMPLETED", states

    import torch

    a = torch.load(ref_dir / "out" / "synsets" / f"{cid}.pt", weights_only=True)
    b = torch.load(out / "synsets" / f"{cid}.pt", weights_only=True)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    (rec,) = records(out)
    (ref_rec,) = records(ref_dir / "out")
    assert rec["accuracies"] == ref_rec["accuracies"]
    print(f"\nrequeued at iteration {resumed_at}/{iters}; sacct states {states}; synset identical")


def test_failing_cell_is_recorded_and_other_cells_finish(tmp_path):
    spec = write_spec(tmp_path, "fail", ["random"], ipcs=[1, 2])
    from benchmarks.sweep import load_sweep

    sweep = load_sweep(spec)
    bad = next(c for c in sweep.cells if c.ipc == 1).cell_id
    good = next(c for c in sweep.cells if c.ipc == 2).cell_id
    synsets = tmp_path / "out" / "synsets"
    (synsets / f"{bad}.pt").mkdir(parents=True)  # the job cannot write its set: it raises
    run = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED" in run.stdout
    out = tmp_path / "out"
    failure = json.loads((out / "failures" / f"{bad}.json").read_text())
    assert failure["error"].startswith("IsADirectoryError")
    assert "Traceback" in failure["traceback"]
    assert failure["log_path"] and Path(failure["log_path"]).is_file()
    assert "IsADirectoryError" in Path(failure["log_path"]).read_text()
    assert [r["cell_id"] for r in records(out)] == [good]
    status = cli("status", str(out))
    line = next(l for l in status.stdout.splitlines() if l.startswith(bad))
    assert "failed" in line and failure["log_path"] in line
    assert "1 done" in status.stdout and "1 failed" in status.stdout
    wait_for(lambda: sacct_states([failure["job_id"]]).get(failure["job_id"]) == ["FAILED"], 30,
             "sacct to report the failing task FAILED")


def test_gpu_profile_is_accepted_and_the_job_runs_on_cpu(tmp_path):
    gpu = yaml.safe_load((REPO / "slurm" / "gpu.yaml").read_text())
    gpu.update(cpus_per_task=1, mem_gb=1, timeout_min=20)  # fit the one-node test cluster
    prof = tmp_path / "gpu-small.yaml"
    prof.write_text(yaml.safe_dump(gpu))
    spec = write_spec(tmp_path, "gpu", ["random"], profile=str(prof))
    run = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    (info,) = job_infos(tmp_path / "out").values()
    alloc = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "AllocTRES,Partition", "-j", info["job_id"]],
                           capture_output=True, text=True, check=True).stdout
    assert "gres/gpu=1" in alloc and "gpu" in alloc.split("|")[-1], alloc
    (rec,) = records(tmp_path / "out")
    assert rec["device"] == "cpu"
    assert "CUDA_VISIBLE_DEVICES=0" in Path(info["log_path"]).read_text()


def test_cancel_stops_queued_jobs(tmp_path):
    spec = write_spec(tmp_path, "cancel", [{"method": "dm", "budgets": {"iterations": 200}}], ipcs=[1, 2])
    run = cli("run", str(spec), "--executor", "slurm", "--no-wait")
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out"
    ids = [i["job_id"] for i in job_infos(out).values()]
    cancel = cli("cancel", str(out))
    assert cancel.returncode == 0 and "cancelled 2 job(s)" in cancel.stdout, cancel.stdout + cancel.stderr
    wait_for(lambda: all(s[-1].startswith("CANCELLED") for s in sacct_states(ids).values()), 60, "cancellation")
    status = cli("status", str(out))
    assert "2 cancelled" in status.stdout and "0 running" in status.stdout, status.stdout


def test_mtt_cell_waits_afterok_for_its_expert_stage_job(tmp_path):
    # One MTT cell: its expert stage (2 experts of 2 epochs) is its own SLURM job, and the cell's
    # job is submitted at once with --dependency=afterok on it.
    mtt = {"method": "mtt", "model": "ConvNetW32", "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1,
           "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": False, "num_experts": 2,
           "expert_train_epochs": 2, "budgets": {"iterations": 2, "eval_epochs": 1}}
    spec = write_spec(tmp_path, "stage", [mtt], ipcs=[1])
    run = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    out = tmp_path / "out"
    infos = job_infos(out)
    (stage_name,) = [n for n in infos if n.startswith("stage-")]
    (cell_name,) = [n for n in infos if not n.startswith("stage-")]
    stage_id, cell_id = infos[stage_name]["job_id"], infos[cell_name]["job_id"]
    assert infos[stage_name]["state"] == "COMPLETED"
    # the sbatch script submitit wrote for the cell's job carries the dependency on the stage's job
    script = (out / "logs" / f"{cell_id.split('_')[0]}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{stage_id}" in script and "#SBATCH --kill-on-invalid-dep=yes" in script
    assert "dependency" not in (out / "logs" / f"{stage_id.split('_')[0]}_submission.sh").read_text()
    assert len(list((out / "experts" / stage_name[len("stage-"):]).glob("expert_*.pt"))) == 2
    (rec,) = records(out)
    assert rec["status"] == "done" and rec["method"] == "mtt"
    # sacct: both ran once and completed, the cell started only after the stage ended
    ids = [stage_id, cell_id]
    wait_for(lambda: (s := sacct_states(ids)) and all(s.get(j) == ["COMPLETED"] for j in ids), 30,
             "sacct to report the stage and the cell COMPLETED")
    times = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,Start,End", "-j", f"{stage_id},{cell_id}"],
                           capture_output=True, text=True, check=True).stdout
    rows = {r.split("|")[0]: r.split("|")[1:] for r in times.split()}
    assert rows[cell_id][0] >= rows[stage_id][1], rows  # ISO times compare as strings
    # a rerun finds the stage done and the cell finished: nothing submitted
    again = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    assert again.returncode == 0 and "expert stage" not in again.stdout, again.stdout
    assert job_infos(out)[stage_name]["job_id"] == stage_id


def test_killed_launcher_and_preempted_expert_stage_train_no_expert_twice(tmp_path):
    # Three experts of 20 epochs: the launcher is killed and the stage's job preempted (USR2, as
    # before a time limit) once expert 0 is stored; the next launcher re-attaches both jobs.
    mtt = {"method": "mtt", "model": "ConvNetW32", "syn_steps": 2, "expert_epochs": 1, "max_start_epoch": 1,
           "lr_img": 100.0, "lr_lr": 1e-5, "lr_teacher": 0.01, "zca": False, "num_experts": 3,
           "expert_train_epochs": 20, "budgets": {"iterations": 2, "eval_epochs": 1}}
    spec = write_spec(tmp_path, "preempt", [mtt], ipcs=[1])
    out = tmp_path / "out"
    launcher = subprocess.Popen([sys.executable, "-m", "benchmarks.sweep_cli", "run", str(spec), "--executor",
                                 "slurm", "--poll", "1"], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        infos = wait_for(lambda: (i := job_infos(out)) and len(i) == 2 and i, 60, "the stage and the cell submitted")
        (stage_name,) = [n for n in infos if n.startswith("stage-")]
        folder = out / "experts" / stage_name[len("stage-"):]
        wait_for((folder / "expert_0.pt").is_file, 240, "expert 0 to be stored")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.communicate()
    first = (folder / "expert_0.pt").stat().st_mtime_ns
    stage_id = infos[stage_name]["job_id"]
    assert not (folder / "expert_2.pt").exists(), "the stage finished before the preemption; nothing was tested"
    subprocess.run(["scancel", "--signal=USR2", stage_id], check=True)

    again = cli("run", str(spec), "--executor", "slurm", "--poll", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "expert stage(s) to run" not in again.stdout and "re-attached" in again.stdout, again.stdout
    after = job_infos(out)
    assert {n: i["job_id"] for n, i in after.items()} == {n: i["job_id"] for n, i in infos.items()}
    assert all(not i["history"] for i in after.values())
    assert (folder / "expert_0.pt").stat().st_mtime_ns == first  # expert 0 was not trained again
    assert sorted(p.name for p in folder.glob("expert_*.pt")) == ["expert_0.pt", "expert_1.pt", "expert_2.pt"]
    assert not list(folder.glob("*.partial.pt"))
    log = Path(infos[stage_name]["log_path"]).read_text()
    assert log.count("expert 0: training") == 1 and "already there [0" in log, log[-3000:]
    (rec,) = records(out)
    assert rec["status"] == "done"
    states = wait_for(lambda: (s := sacct_states([stage_id])[stage_id]) and s[-1] == "COMPLETED" and s, 30,
                      "sacct to report the requeued stage COMPLETED")
    assert "REQUEUED" in states or "PREEMPTED" in states or len(states) > 1, states
