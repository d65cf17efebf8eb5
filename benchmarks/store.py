"""The results store of a sweep: one folder, the contract between ``benchmarks`` and ``analysis``.

Layout (``analysis`` reads exactly this; see the record schema below)::

    <out>/spec.yaml                         the spec as run (copy)
    <out>/cells.json                        {"sweep": name, "cells": [Cell.to_json(), ...]}
    <out>/records/<cell_id>__<arch>.json    one per finished (cell, evaluation architecture)
    <out>/synsets/<cell_id>.pt              the SyntheticSet, stored once per cell
    <out>/synsets/<cell_id>.json            {"bytes", "sha256"} of that file, written right after it
    <out>/failures/<cell_id>.json           {"cell_id", "error", "traceback", "log_path", "job_id", "created"}
    <out>/jobs/<cell_id>.json               submitted job ids, executor, times (re-attach, no duplicates)
    <out>/jobs/stage-<key>.json             the same for an expert stage (benchmarks.stages)
    <out>/experts/<key>/                    expert trajectories (layout: benchmarks.experts)
    <out>/submitting/<token>.json           a SLURM array being submitted: job name + its cells in
                                            array order (closes the sbatch -> jobs/ window)
    <out>/checkpoints/<cell_id>.pt          loop state of a running condensation (resume after requeue)
    <out>/snapshots/<cell_id>/it<N:06d>.pt  loop state kept after N iterations (the cell's ``snapshots``;
                                            the same dict as its checkpoint file, ``iteration`` = N)
    <out>/curves/<cell_id>__<arch>__it<N:06d>.json
                                            learning-curve point: the record of the set at N
                                            iterations (``status`` "curve", ``iterations`` N;
                                            :mod:`benchmarks.curves`); the cell's final point is
                                            its record in records/
    <out>/cache/                            reusable tensors (e.g. herding's feature network)
    <out>/logs/                             submitit's folder: <job_id>_0_log.out/.err, pickles

Every file is written atomically through :func:`benchmarks.storage.atomic_write_bytes` (a
uniquely named temp file in the same folder, flushed and fsync'ed, then ``os.replace``) -- a
crash or a full disk at any point leaves either the old file or the new one, never a partial
record, and no temp file. Readers ignore ``.*.tmp`` leftovers of a killed process.

A record is a :class:`benchmarks.record.Record` (its module documents every field and the
schema versions): the cell, the evaluation, the accuracies, the cost, and the registry metadata
``analysis`` renders from (``method_info``, ``components``, ``variant_overrides``,
``dataset_display``). ``cells.json`` carries the same metadata per planned cell
(:func:`benchmarks.record.enrich_cell`), so missing cells are named like finished ones.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from benchmarks.record import RECORD_SCHEMA, RECORD_SCHEMA_VERSION, Record, enrich_cell, upgrade_record
from benchmarks.storage import KEPT_STATE_RE, atomic_write_bytes, kept_state_name
_ARCH_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def read_json(path: Path) -> Optional[Any]:
    """The parsed file, or None when it is missing or unreadable (e.g. an old partial write
    by a foreign tool: our own writes are atomic)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


_CODE_VERSION: Optional[str] = None


def code_version() -> str:
    """``git describe --always --dirty`` of the checkout this code runs from, else the
    installed package version (cached per process)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        root = Path(__file__).resolve().parents[1]
        version = None
        try:
            out = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True, text=True, timeout=10,
            )
            if out.returncode == 0 and out.stdout.strip():
                version = "git:" + out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            version = None
        if version is None:
            try:
                from importlib.metadata import version as _pkg_version

                version = "condensation-bench " + _pkg_version("condensation-bench")
            except Exception:
                version = "unknown"
        _CODE_VERSION = version
    return _CODE_VERSION


def arch_file_part(arch: str) -> str:
    return _ARCH_SAFE.sub("_", arch)


class Store:
    """Paths and atomic reads/writes of one results folder (see module doc)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Store('{self.root}')"

    # -- layout -----------------------------------------------------------------------------
    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def experts_root(self) -> Path:
        """The folder whose ``experts/`` holds the store's expert trajectories (the store
        itself: ``<store>/experts/<key folder>/``, shared by every cell of the store)."""
        return self.root

    def record_path(self, cell_id: str, arch: str) -> Path:
        return self.records_dir / f"{cell_id}__{arch_file_part(arch)}.json"

    def synset_path(self, cell_id: str) -> Path:
        return self.root / "synsets" / f"{cell_id}.pt"

    def synset_relpath(self, cell_id: str) -> str:
        return f"synsets/{cell_id}.pt"

    def synset_digest_path(self, cell_id: str) -> Path:
        return self.root / "synsets" / f"{cell_id}.json"

    def set_lock_path(self, set_key: str) -> Path:
        """The lock a cell holds while it makes a synthetic set other cells may share."""
        return self.root / "locks" / f"set-{set_key}.lock"

    def checkpoint_path(self, cell_id: str) -> Path:
        return self.root / "checkpoints" / f"{cell_id}.pt"

    def snapshot_dir(self, cell_id: str) -> Path:
        """The folder of the loop states kept during the cell's condensation."""
        return self.root / "snapshots" / cell_id

    def snapshot_path(self, cell_id: str, iteration: int) -> Path:
        return self.snapshot_dir(cell_id) / kept_state_name(iteration)

    def kept_iterations(self, cell_id: str) -> list[int]:
        """Iteration counts of the cell's kept states on disk, ascending (temp files of an
        unfinished write are not kept states)."""
        folder = self.snapshot_dir(cell_id)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if p.is_file() and (m := KEPT_STATE_RE.match(p.name)))

    @property
    def curves_dir(self) -> Path:
        return self.root / "curves"

    def curve_path(self, cell_id: str, arch: str, iteration: int) -> Path:
        return self.curves_dir / f"{cell_id}__{arch_file_part(arch)}__it{int(iteration):06d}.json"

    def has_curve_record(self, cell_id: str, arch: str, iteration: int) -> bool:
        rec = read_json(self.curve_path(cell_id, arch, iteration))
        return isinstance(rec, dict) and rec.get("schema") == RECORD_SCHEMA and rec.get("status") == "curve"

    def write_curve_record(self, record: Record) -> Path:
        """Write one learning-curve point atomically (a :class:`Record` with ``status`` "curve"
        and ``iterations`` the point's iteration count)."""
        if record.status != "curve" or record.iterations is None:
            raise ValueError("a curve record needs status 'curve' and its iteration count in 'iterations'")
        rec = record.to_json()
        if not rec.get("created"):
            rec["created"] = utc_now()
        return atomic_write_json(self.curve_path(record.cell_id, record.eval_arch, record.iterations), rec)

    def failure_path(self, cell_id: str) -> Path:
        return self.root / "failures" / f"{cell_id}.json"

    def job_path(self, cell_id: str) -> Path:
        return self.root / "jobs" / f"{cell_id}.json"

    def exists(self) -> bool:
        return (self.root / "cells.json").is_file()

    # -- sweep ------------------------------------------------------------------------------
    def init(self, sweep_name: str, spec_text: str, cells: list[Mapping[str, Any]]) -> None:
        """Create the folder and write spec.yaml and cells.json (atomically, replacing the
        previous ones: records of cells no longer in the spec stay on disk for analysis).

        ``cells`` are ``Cell.to_json()`` dicts; each is written with its registry metadata
        (:func:`benchmarks.record.enrich_cell`: method info, components, dataset display).
        Version-1 records already in the store are upgraded (:meth:`upgrade_records`)."""
        enriched = [enrich_cell(c) for c in cells]
        for sub in ("records", "synsets", "failures", "jobs", "checkpoints", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / "spec.yaml", spec_text.encode())
        atomic_write_json(self.root / "cells.json", {"sweep": sweep_name, "cells": enriched})
        self.upgrade_records()

    def upgrade_records(self) -> int:
        """Rewrite every version-1 record of the store as version 2 with its method's registry
        metadata (:func:`benchmarks.record.upgrade_record`; atomic, every old field kept);
        returns how many were upgraded. Records of methods no longer registered stay as they are."""
        count = 0
        if not self.records_dir.is_dir():
            return count
        for path in sorted(self.records_dir.glob("*.json")):
            data = read_json(path)
            if not isinstance(data, dict) or data.get("schema_version") != 1:
                continue
            new = upgrade_record(data)
            if new is not None:
                atomic_write_json(path, new)
                count += 1
        return count

    def read_cells(self) -> tuple[str, list[dict[str, Any]]]:
        data = read_json(self.root / "cells.json")
        if not isinstance(data, dict) or "cells" not in data:
            from benchmarks import UserError

            raise UserError(
                f"{self.root} is not a results store (no readable cells.json); run a sweep with "
                "`python -m benchmarks run SPEC` first"
            )
        return str(data.get("sweep", "")), list(data["cells"])

    # -- records ----------------------------------------------------------------------------
    def has_record(self, cell_id: str, arch: str) -> bool:
        rec = read_json(self.record_path(cell_id, arch))
        return isinstance(rec, dict) and rec.get("status") == "done"

    def missing_archs(self, cell_id: str, archs: list[str]) -> list[str]:
        return [a for a in archs if not self.has_record(cell_id, a)]

    def write_record(self, record: Union[Record, Mapping[str, Any]]) -> Path:
        """Write one record atomically (a :class:`Record`; a mapping gets the schema keys and
        ``created`` filled in)."""
        rec = record.to_json() if isinstance(record, Record) else dict(record)
        if not rec.get("created"):
            rec.pop("created", None)
        rec.setdefault("schema", RECORD_SCHEMA)
        rec.setdefault("schema_version", RECORD_SCHEMA_VERSION)
        rec.setdefault("status", "done")
        rec.setdefault("created", utc_now())
        return atomic_write_json(self.record_path(rec["cell_id"], rec["eval_arch"]), rec)

    def corrupt_records(self, cell_id: Optional[str] = None) -> list[Path]:
        """Record files (of one cell, or all) that exist but do not parse as a record."""
        if not self.records_dir.is_dir():
            return []
        pattern = f"{cell_id}__*.json" if cell_id else "*.json"
        return [p for p in sorted(self.records_dir.glob(pattern))
                if not (isinstance(rec := read_json(p), dict) and rec.get("schema") == RECORD_SCHEMA)]

    # -- synthetic sets ---------------------------------------------------------------------
    def write_synset_digest(self, cell_id: str) -> dict[str, Any]:
        """Write the size and SHA-256 of the cell's stored synthetic set next to it (checked by
        :meth:`synset_problem`)."""
        data = self.synset_path(cell_id).read_bytes()
        digest = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "created": utc_now()}
        atomic_write_json(self.synset_digest_path(cell_id), digest)
        return digest

    def synset_problem(self, cell_id: str, *, needed: bool = True) -> Optional[str]:
        """Why the cell's stored synthetic set cannot be trusted (None: it can): missing while
        ``needed``, a size or checksum other than the ones written with it, or an unreadable
        digest. A set from before digests were written is trusted as it is."""
        path = self.synset_path(cell_id)
        if not path.is_file():
            return f"{path} is missing" if needed else None
        digest_path = self.synset_digest_path(cell_id)
        if not digest_path.exists():
            return None
        digest = read_json(digest_path)
        if not isinstance(digest, dict) or not isinstance(digest.get("bytes"), int):
            return f"{digest_path} (the checksum of {path.name}) is unreadable"
        size = path.stat().st_size
        if size != digest["bytes"]:
            return f"{path} has {size} bytes, {digest['bytes']} were written"
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if sha != digest.get("sha256"):
            return f"{path} does not match the checksum written with it"
        return None

    def iter_records(self) -> Iterator[dict[str, Any]]:
        if not self.records_dir.is_dir():
            return
        for path in sorted(self.records_dir.glob("*.json")):
            rec = read_json(path)
            if isinstance(rec, dict) and rec.get("schema") == RECORD_SCHEMA:
                yield rec

    def delete_cell_results(self, cell_id: str) -> None:
        """Forget everything computed for a cell (``--force``), its kept states and
        learning-curve records included."""
        for path in self.records_dir.glob(f"{cell_id}__*.json"):
            path.unlink(missing_ok=True)
        if self.curves_dir.is_dir():
            for path in self.curves_dir.glob(f"{cell_id}__*.json"):
                path.unlink(missing_ok=True)
        folder = self.snapshot_dir(cell_id)
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file():
                    path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        for path in (self.synset_path(cell_id), self.synset_digest_path(cell_id), self.checkpoint_path(cell_id),
                     self.failure_path(cell_id)):
            path.unlink(missing_ok=True)

    # -- failures ---------------------------------------------------------------------------
    def write_failure(self, cell_id: str, error: str, traceback: str = "", log_path: Optional[str] = None,
                      job_id: Optional[str] = None) -> Path:
        return atomic_write_json(self.failure_path(cell_id), {
            "cell_id": cell_id, "error": error, "traceback": traceback, "log_path": log_path,
            "job_id": job_id, "created": utc_now(),
        })

    def read_failure(self, cell_id: str) -> Optional[dict[str, Any]]:
        data = read_json(self.failure_path(cell_id))
        return data if isinstance(data, dict) else None

    def clear_failure(self, cell_id: str) -> None:
        self.failure_path(cell_id).unlink(missing_ok=True)

    # -- jobs -------------------------------------------------------------------------------
    def read_job(self, cell_id: str) -> Optional[dict[str, Any]]:
        data = read_json(self.job_path(cell_id))
        return data if isinstance(data, dict) else None

    def write_job(self, cell_id: str, *, job_id: str, executor: str, archs: list[str],
                  log_path: Optional[str] = None, state: str = "SUBMITTED") -> dict[str, Any]:
        """Track a submission; earlier job ids of the cell are kept in ``history``."""
        old = self.read_job(cell_id) or {}
        history = list(old.get("history", []))
        if old.get("job_id") and old.get("job_id") != job_id:
            history.append({k: old.get(k) for k in ("job_id", "executor", "submitted", "state")})
        info = {
            "cell_id": cell_id, "job_id": job_id, "executor": executor, "archs": list(archs),
            "folder": str(self.logs_dir), "log_path": log_path, "submitted": utc_now(),
            "state": state, "history": history,
        }
        atomic_write_json(self.job_path(cell_id), info)
        return info

    # -- submissions in flight --------------------------------------------------------------
    @property
    def submitting_dir(self) -> Path:
        return self.root / "submitting"

    def begin_submission(self, token: str, job_name: str, cells: list[tuple[str, list[str]]]) -> Path:
        """Record, *before* ``sbatch`` runs, that an array named ``job_name`` is about to be
        submitted for ``cells`` (cell id, archs) in array-task order. If the launcher dies after
        ``sbatch`` returned but before every ``jobs/<cell>.json`` was written, the next launcher
        finds the array by its unique name and tracks it instead of submitting the cells again."""
        return atomic_write_json(self.submitting_dir / f"{token}.json", {
            "token": token, "job_name": job_name, "started": utc_now(),
            "cells": [{"cell_id": cid, "archs": list(archs)} for cid, archs in cells],
        })

    def end_submission(self, token: str) -> None:
        (self.submitting_dir / f"{token}.json").unlink(missing_ok=True)

    def pending_submissions(self) -> list[dict[str, Any]]:
        """Submissions begun and never ended (unreadable leftovers are skipped)."""
        if not self.submitting_dir.is_dir():
            return []
        out = []
        for path in sorted(self.submitting_dir.glob("*.json")):
            data = read_json(path)
            if isinstance(data, dict) and isinstance(data.get("cells"), list) and data.get("job_name"):
                out.append(dict(data, token=path.stem))  # the file name is what end_submission removes
        return out

    # -- one launcher at a time -------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / ".launcher.lock"

    @contextlib.contextmanager
    def launcher_lock(self, *, wait_s: float = 0.0) -> Iterator[bool]:
        """Hold the store's launcher lock (``flock`` on ``.launcher.lock``, released when the
        process dies, even by SIGKILL) for the block. When another process holds it for longer
        than ``wait_s`` seconds, a :class:`benchmarks.UserError` names the holder. Yields True.
        A store folder that cannot be created raises the ``OSError``."""
        from benchmarks import UserError

        self.root.mkdir(parents=True, exist_ok=True)
        if not self.lock_path.exists():
            os.close(os.open(self.lock_path, os.O_WRONLY | os.O_CREAT, 0o644))
        # held read-only (flock needs no write access): the store's filesystem can still be
        # remounted read-only, and a store on one still locks
        fd = os.open(self.lock_path, os.O_RDONLY)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise UserError(f"another launcher ({holder}) is working on {self.root}; wait for it "
                                    f"to finish or stop it (`python -m benchmarks status {self.root}` "
                                    "shows its progress)")
                time.sleep(0.2)
            with contextlib.suppress(OSError), open(self.lock_path, "w") as fh:
                fh.write(f"pid {os.getpid()} since {utc_now()}")
            yield True
        finally:
            os.close(fd)  # releases the lock

    def update_job_state(self, cell_id: str, state: str) -> None:
        info = self.read_job(cell_id)
        if info is not None and info.get("state") != state:
            info["state"] = state
            info["updated"] = utc_now()
            atomic_write_json(self.job_path(cell_id), info)
