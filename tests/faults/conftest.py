"""Shared tools of the fault-injection suite (marker ``faults``; ``tox -e faults``).

Every test runs tiny sweeps (bundled digits; random cells and a tiny DM cell) through the real
local SLURM cluster (``bash slurm/local/start.sh``), injects one fault, lets the launcher run
again and measures what the issue asks for:

* **cells lost**: cells of ``cells.json`` without every record after the last run;
* **cells run twice**: evaluations written by more than one job for the same (cell, arch),
  counted from the job logs (each job logs ``cell <id> on <arch>: mean accuracy ...`` once per
  record it writes) -- a requeued job resuming in its own log is not a second run;
* **messages**: every launcher/status output has no traceback and an error is one line;
* **consistency**: ``python -m benchmarks status --verify`` exits 0 afterwards.

Each test's figures are also appended, one JSON object a line, to the file named by
``CONDBENCH_FAULT_TABLE`` when it is set (the README's reliability table is made from it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cluster_problem() -> Optional[str]:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM client commands here; start the local cluster with `bash slurm/local/start.sh`"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed ({exc}); run `bash slurm/local/start.sh`"
    if out.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing")
                                      for s in out.stdout.split()):
        return f"no usable SLURM node ({out.stdout.strip() or out.stderr.strip()[:200]}); run `bash slurm/local/start.sh`"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode:
        return "SLURM accounting (sacct) is not available"
    return None


def pytest_collection_modifyitems(config, items):
    """Every test here is marked ``faults``; they run only when asked for (``-m faults``: they
    take minutes and need the cluster) and skip with the reason when no cluster answers."""
    mine = [item for item in items if "tests/faults" in str(item.fspath)]
    if not mine:
        return
    asked = "faults" in (config.option.markexpr or "")
    problem = cluster_problem() if asked else "the fault suite runs with `-m faults` (tox -e faults)"
    for item in mine:
        item.add_marker(pytest.mark.faults)
        if problem:
            item.add_marker(pytest.mark.skip(reason=problem))


# -- sweeps -------------------------------------------------------------------------------------


def profile(tmp_path: Path, **extra: Any) -> Path:
    prof = {"partition": None, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1, "timeout_min": 20,
            "array_parallelism": 2}
    prof.update(extra)
    path = tmp_path / f"profile-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def write_spec(tmp_path: Path, name: str, methods: list, ipcs=(1, 2), out: Optional[Path] = None,
               prof: Optional[Path] = None, **extra: Any) -> Path:
    """A tiny sweep: digits, one ConvNet evaluation of 1 epoch, no random baseline cells. The
    sweep is called ``name`` plus the test folder's hash (equal names: the same sweep)."""
    spec = {
        "name": f"{name}-{abs(hash(str(tmp_path))) % 10**6:06d}", "datasets": ["digits"], "ipcs": list(ipcs), "methods": methods,
        "eval_archs": ["ConvNet"], "seeds": [0], "num_eval": 1, "budgets": {"iterations": 3, "eval_epochs": 1},
        "output": str(out or tmp_path / "out"), "profile": str(prof or profile(tmp_path)),
        "data_root": str(tmp_path / "data"), "random_baseline": False,
    }
    spec.update(extra)
    path = tmp_path / f"{name}-{uuid.uuid4().hex[:4]}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, inject: str = "none", timeout: float = 400) -> subprocess.CompletedProcess:
    """``python -m benchmarks ARGS`` (through the injector, which patches only that process)."""
    return subprocess.run([sys.executable, "-m", "tests.faults.inject", inject, "--", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def launch(*args: str, inject: str = "none") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.faults.inject", inject, "--", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_args(spec: Path, *extra: str) -> list[str]:
    return ["run", str(spec), "--executor", "slurm", "--poll", "1", *extra]


def wait_for(cond, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_infos(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")} if (out / "jobs").is_dir() else {}


def squeue_states(job_ids) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True).stdout
    wanted = set(job_ids)
    return {j: s for j, _, s in (ln.partition("|") for ln in out.splitlines()) if j in wanted}


# -- measurements -------------------------------------------------------------------------------


def messages_ok(proc: subprocess.CompletedProcess) -> list[str]:
    """Problems with what a launcher/status printed: a traceback anywhere, or an error that is
    not one line (stderr holds one ``error: ...`` line; a spec's problems are listed one line
    each under it, as the sweep validator prints them)."""
    text = proc.stdout + proc.stderr
    problems = []
    if "Traceback" in text:
        problems.append("traceback in the output")
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    spec_list = bool(err_lines) and "problem(s); nothing was submitted" in err_lines[0]
    if err_lines and not err_lines[0].startswith("error: "):
        problems.append(f"stderr does not start with one error line: {err_lines[:3]}")
    if len(err_lines) > 1 and not spec_list:
        problems.append(f"{len(err_lines)} lines on stderr: {err_lines[:3]}")
    return problems


def cells_of(out: Path) -> list[dict]:
    return json.loads((out / "cells.json").read_text())["cells"]


def cells_lost(out: Path) -> int:
    lost = 0
    for cell in cells_of(out):
        for arch in cell["eval_archs"]:
            path = out / "records" / f"{cell['cell_id']}__{arch}.json"
            try:
                ok = json.loads(path.read_text()).get("status") == "done"
            except (OSError, ValueError):
                ok = False
            if not ok:
                lost += 1
                break
    return lost


def evaluations_per_cell(out: Path) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    pattern = re.compile(r"cell ([0-9a-f]{12}) on (\S+): mean accuracy")
    for log in (out / "logs").glob("*_log.out"):
        seen = set(pattern.findall(log.read_text(errors="replace")))
        for key in seen:  # a requeued job resumes in the same log: one run per log
            counts[key] = counts.get(key, 0) + 1
    return counts


def cells_run_twice(out: Path) -> int:
    return sum(1 for n in evaluations_per_cell(out).values() if n > 1)


def verify(out: Path) -> subprocess.CompletedProcess:
    return cli("status", str(out), "--verify")


def record(fault: str, out: Path, outputs: list[subprocess.CompletedProcess], **extra: Any) -> dict[str, Any]:
    """Measure a store after a fault (see the module doc), append the figures, and assert them."""
    check = verify(out)
    problems = [p for proc in [*outputs, check] for p in messages_ok(proc)]
    row = {"fault": fault, "cells": len(cells_of(out)), "cells_lost": cells_lost(out),
           "cells_run_twice": cells_run_twice(out), "verify_ok": check.returncode == 0,
           "message_problems": len(problems), **extra}
    table = os.environ.get("CONDBENCH_FAULT_TABLE")
    if table:
        with open(table, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    assert row["cells_lost"] == 0 and row["cells_run_twice"] == 0, (row, check.stdout)
    assert row["verify_ok"], check.stdout + check.stderr
    assert not problems, problems
    return row
