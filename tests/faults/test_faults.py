"""Fault injection on the real local SLURM cluster: each test injects one fault into a tiny
sweep, runs the launcher again and asserts cells lost 0, cells run twice 0, every message one
line without a traceback and ``status --verify`` clean (see ``conftest.py`` for how each figure
is measured). Run with ``tox -e faults`` or ``pytest -m faults tests/faults``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults.conftest import (
    REPO, cli, job_infos, launch, messages_ok, profile, record, run_args, squeue_states, wait_for, write_spec,
)

pytestmark = pytest.mark.faults

RANDOM = ["random"]
WITH_DM = ["random", {"method": "dm", "budgets": {"iterations": 4}}]


def finish(spec: Path) -> subprocess.CompletedProcess:
    """The launcher run after the fault: it must finish every cell."""
    again = cli(*run_args(spec))
    assert again.returncode == 0, again.stdout + again.stderr
    return again


# -- launcher SIGKILL at every point of a submission ---------------------------------------------


@pytest.mark.parametrize("point", ["before-sbatch", "during-sbatch", "after-sbatch", "tracking"])
def test_launcher_killed_at_a_point_of_submission(tmp_path, point):
    spec = write_spec(tmp_path, f"kill-{point}", RANDOM)
    out = tmp_path / "out"
    killed = cli(*run_args(spec), inject=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    notes = list((out / "submitting").glob("*.json"))
    assert len(notes) == 1  # the note of the interrupted submission survives the kill
    again = finish(spec)
    if point == "during-sbatch":  # queued, but submitit never named the pickles: cancelled, resubmitted
        assert "2 without their job file cancelled and submitted again" in again.stdout, again.stdout
    if point == "after-sbatch":
        assert "2 task(s) tracked" in again.stdout and "0 submitted" in again.stdout, again.stdout
    if point == "tracking":
        assert "1 task(s) tracked" in again.stdout, again.stdout
    assert not list((out / "submitting").glob("*.json"))
    assert not [p for p in (out / "logs").iterdir() if p.suffix == ".pkl" and "_" not in p.stem]  # no orphans
    record(f"launcher SIGKILL {point}", out, [again])


def test_launcher_killed_while_waiting(tmp_path):
    spec = write_spec(tmp_path, "kill-wait", WITH_DM, ipcs=[1])
    out = tmp_path / "out"
    proc = launch(*run_args(spec))
    try:
        wait_for(lambda: len(job_infos(out)) == 2, 90, "both cells to be tracked")
        time.sleep(2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    again = finish(spec)
    assert "0 submitted" in again.stdout, again.stdout
    record("launcher SIGKILL while waiting", out, [again])


# -- the controller ------------------------------------------------------------------------------


def controller(action: str) -> None:
    if action == "stop":
        subprocess.run(["bash", str(REPO / "slurm/local/stop.sh"), "slurmctld"], check=True, capture_output=True)
    else:
        subprocess.run(["bash", str(REPO / "slurm/local/start.sh")], check=True, capture_output=True, timeout=120)


def test_controller_restart_with_jobs_queued(tmp_path):
    prof = profile(tmp_path, array_parallelism=1)
    spec = write_spec(tmp_path, "ctld", RANDOM, ipcs=[1, 2, 3], prof=prof)
    out = tmp_path / "out"
    first = cli(*run_args(spec, "--no-wait"))
    assert first.returncode == 0, first.stdout + first.stderr
    outputs = [first]
    controller("stop")
    try:
        status = cli("status", str(out))
        assert status.returncode == 0, status.stdout + status.stderr
        outputs.append(status)
        more = write_spec(tmp_path, "ctld", RANDOM, ipcs=[1, 2, 3, 4], prof=prof, out=out)
        down = cli(*run_args(more), timeout=200)  # cell ipc=4 is new: sbatch cannot reach the controller
        assert down.returncode == 2, down.stdout + down.stderr
        assert down.stderr.startswith("error: sbatch could not reach the SLURM controller"), down.stderr
        outputs.append(down)
    finally:
        controller("start")
    again = finish(more)
    record("controller restart with jobs queued", out, [*outputs, again])


# -- requeue and cancel of single array tasks -----------------------------------------------------


def test_requeue_and_cancel_of_single_tasks_pending_and_running(tmp_path):
    prof = profile(tmp_path, array_parallelism=1)
    spec = write_spec(tmp_path, "tasks", [{"method": "dm", "budgets": {"iterations": 10}}, "random"],
                      ipcs=[1, 2], prof=prof)
    out = tmp_path / "out"
    proc = launch(*run_args(spec))
    try:
        infos = wait_for(lambda: len(j := job_infos(out)) == 4 and j, 90, "four tracked tasks")
        ids = sorted(i["job_id"] for i in infos.values())
        running = wait_for(lambda: [j for j, s in squeue_states(ids).items() if s == "RUNNING"], 90, "a running task")[0]
        pending = [j for j, s in squeue_states(ids).items() if s == "PENDING"]
        subprocess.run(["scontrol", "requeue", running], check=True)        # requeue a running task
        subprocess.run(["scancel", pending[-1]], check=True)                # cancel a pending task
        running2 = wait_for(lambda: [j for j, s in squeue_states(ids).items() if s == "RUNNING" and j != running],
                            120, "another task to run")[0]
        subprocess.run(["scancel", running2], check=True)                   # cancel a running task
        stdout, stderr = proc.communicate(timeout=400)                     # must not hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    first = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert "2 cancelled" in stdout, stdout + stderr
    again = finish(spec)
    assert "2 submitted" in again.stdout, again.stdout
    record("requeue of a running task, cancel of a pending and a running task", out, [first, again])


# -- the output filesystem: read-only, full ---------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def mount(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); run as root")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def held_submit(tmp_path):
    """Submit a sweep whose jobs are held (they start only when released); cancels whatever
    is left of them at the end."""
    started = []

    def submit(out: Path, name: str):
        prof = profile(tmp_path, additional_parameters={"hold": True})
        spec = write_spec(tmp_path, name, RANDOM, out=out, prof=prof)
        proc = launch(*run_args(spec))
        started.append(proc)
        infos = wait_for(lambda: len(j := job_infos(out)) == 2 and j, 90, "both cells tracked")
        ids = sorted(i["job_id"] for i in infos.values())
        started.append(ids)
        return spec, proc, ids

    yield submit
    for item in started:
        if isinstance(item, list):
            subprocess.run(["scancel", *item], capture_output=True)
        elif item.poll() is None:
            item.kill()
            item.communicate()


def release(ids) -> None:
    subprocess.run(["scontrol", "release", ",".join(ids)], check=True)


def test_read_only_output_filesystem(tmp_path, tmpfs, held_submit):
    out = tmpfs("ro", "64m") / "out"
    held, proc, ids = held_submit(out, "ro")
    spec = write_spec(tmp_path, "ro", RANDOM, out=out)  # the same sweep, jobs not held
    subprocess.run(["mount", "-o", "remount,ro", str(out.parent)], check=True)
    release(ids)
    stdout, stderr = proc.communicate(timeout=300)
    first = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert proc.returncode == 1 and "2 failed" in stdout, stdout + stderr
    assert "read-only" in stdout, stdout
    status = cli("status", str(out))
    assert "2 failed" in status.stdout and "ended FAILED (SLURM)" in status.stdout, status.stdout
    refused = cli(*run_args(spec))
    assert refused.returncode == 2 and "not writable" in refused.stderr, refused.stderr  # the spec check sees it
    subprocess.run(["mount", "-o", "remount,rw", str(out.parent)], check=True)
    again = finish(spec)
    record("read-only output filesystem (while jobs wait)", out, [first, status, refused, again])


def test_full_output_filesystem(tmp_path, tmpfs, held_submit):
    out = tmpfs("full", "2m") / "out"
    held, proc, ids = held_submit(out, "full")
    spec = write_spec(tmp_path, "full", RANDOM, out=out)  # the same sweep, jobs not held
    filler = out.parent / "filler"
    with open(filler, "wb") as fh:  # fill every free byte
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    release(ids)
    stdout, stderr = proc.communicate(timeout=300)
    first = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert proc.returncode == 1 and "2 failed" in stdout, stdout + stderr
    status = cli("status", str(out))
    assert "2 failed" in status.stdout, status.stdout
    refused = cli(*run_args(spec))
    assert refused.returncode == 2 and ("the filesystem is full" in refused.stderr
                                        or "No space left" in refused.stderr), refused.stderr
    filler.unlink()
    again = finish(spec)
    leftovers = [p for p in out.rglob(".*.tmp")]
    assert not leftovers, leftovers
    record("full output filesystem (2 MB tmpfs)", out, [first, status, refused, again])


# -- corrupt store files, two launchers, a refused profile -----------------------------------------


def test_corrupt_records_and_sets_are_found_and_recomputed(tmp_path):
    spec = write_spec(tmp_path, "corrupt", WITH_DM, ipcs=[1])
    out = tmp_path / "out"
    first = finish(spec)
    cells = [c["cell_id"] for c in json.loads((out / "cells.json").read_text())["cells"]]
    synset = out / "synsets" / f"{cells[0]}.pt"
    data = bytearray(synset.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # 64 bytes flipped
    synset.write_bytes(bytes(data))
    (out / "records" / f"{cells[1]}__ConvNet.json").write_text('{"truncated": ')
    check = cli("status", str(out), "--verify")
    assert check.returncode == 1 and "verify: 2 problem(s)" in check.stdout, check.stdout
    assert "does not match the checksum written with it" in check.stdout and "unreadable record" in check.stdout
    for log in (out / "logs").glob("*_log.out"):
        log.rename(log.with_name(log.name + ".before-corruption"))  # the recompute is wanted: count only reruns
    again = finish(spec)
    assert "its stored synthetic set is corrupt" in again.stdout, again.stdout
    record("corrupt synthetic set (64 bytes) + corrupt record", out, [first, check, again])


def test_two_launchers_started_at_once(tmp_path):
    """Two launchers started together: whichever order the race resolves in, no cell runs twice
    and none is lost. Either the second one is refused in one line while the first holds the
    store, or (on a fast machine) the first has already finished and the second finds every cell
    done."""
    spec = write_spec(tmp_path, "two", RANDOM)
    out = tmp_path / "out"
    procs = [launch(*run_args(spec)) for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=400)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    codes = sorted(r.returncode for r in results)
    assert codes in ([0, 2], [0, 0]), [(r.returncode, r.stdout, r.stderr) for r in results]
    if codes == [0, 2]:
        refused = [r for r in results if r.returncode == 2][0]
        assert refused.stderr.startswith("error: another launcher (pid "), refused.stderr
    else:
        assert any("2 finished (skipped)" in r.stdout for r in results), [r.stdout for r in results]
    record("two launchers started at once", out, results)


def test_a_second_launcher_while_the_first_holds_the_store_is_refused(tmp_path):
    """The overlap made certain: the first launcher is held (``inject hold``) once it tracks both
    jobs, so it holds the store; the second must be refused in one line, and the first, released,
    finishes every cell."""
    spec = write_spec(tmp_path, "second", RANDOM)
    out = tmp_path / "out"
    first = launch(*run_args(spec), inject="hold")
    try:
        wait_for(lambda: (tmp_path / "hold.held").exists() or first.poll() is not None, 120,
                 "the first launcher to track both jobs")
        assert first.poll() is None, first.communicate()
        second = cli(*run_args(spec))
    finally:
        (tmp_path / "hold.release").touch()
        stdout, stderr = first.communicate(timeout=400)
    first_done = subprocess.CompletedProcess(first.args, first.returncode, stdout, stderr)
    assert first_done.returncode == 0, stdout + stderr
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.startswith("error: another launcher (pid "), second.stderr
    record("second launcher while the first holds the store", out, [first_done, second])


def test_a_profile_sbatch_refuses_is_one_line_and_leaves_nothing_behind(tmp_path):
    spec = write_spec(tmp_path, "refused", RANDOM, prof=profile(tmp_path, cpus_per_task=512))
    out = tmp_path / "out"
    refused = cli(*run_args(spec))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: sbatch refused the job array (") and "'cpus_per_task'" in refused.stderr
    assert not messages_ok(refused), refused.stderr
    assert not list((out / "logs").glob("*.pkl")) and not list((out / "logs").glob(".submission_file_*"))
    assert not list((out / "submitting").glob("*.json"))
    good = write_spec(tmp_path, "refused", RANDOM, out=out)
    again = finish(good)
    record("profile sbatch refuses (cpus_per_task 512)", out, [refused, again])
