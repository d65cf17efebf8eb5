"""File-backed storage for runs: a checkpoint store, a tensor cache, and the one atomic write.

Every file the benchmarks layer writes goes through :func:`atomic_write_bytes` (re-exported from
:mod:`methods.atomic_io`, which synthetic sets use too; JSON through the store, tensors through
:func:`atomic_torch_save`): a uniquely named temp file in the target folder, written, flushed
and ``fsync``'ed, then ``os.replace`` -- a preempted job, a full disk or two concurrent writers
leave either the old file or the new one, never a partial file, and the temp file is removed
when any step fails. A failed write is an ``OSError`` (a full disk is
``ENOSPC``, never torch's ``inline_container.cc`` error: tensors are serialised in memory
first); :func:`write_problem` turns it into the one-line message users see. Reads use
``torch.load(weights_only=True)``: only tensors and primitives, never arbitrary pickles.
This module imports torch only when a tensor is written or read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from benchmarks import UserError
from methods.atomic_io import atomic_write_bytes

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint file that exists but cannot be read."""


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` into memory (what :func:`atomic_torch_save` writes)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, torch_bytes(obj))


_ADVICE = {
    errno.ENOSPC: "the filesystem is full: free space there or choose another {flag}",
    errno.EDQUOT: "the disk quota is exceeded: free space there or choose another {flag}",
    errno.EROFS: "the filesystem is read-only: choose another {flag}",
    errno.EACCES: "permission denied: make it writable (chmod, or chattr -i) or choose another {flag}",
    errno.EPERM: "the folder or file is not writable (immutable? see lsattr / chattr -i) or choose another {flag}",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another {flag}",
    errno.EEXIST: "a part of the path is a file, not a folder: choose another {flag}",
    errno.ENOENT: "a part of the path does not exist: create it or choose another {flag}",
}


def write_problem(exc: OSError, where: str | os.PathLike, flag: str = "output path") -> str:
    """One line for a failed write: which path, which error, what to do (``flag`` names the
    option that chooses the path, e.g. ``--output``)."""
    path = getattr(exc, "filename", None) or where
    reason = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno or -1, "check the path and its filesystem or choose another {flag}")
    return f"cannot write {path} under {where} ({type(exc).__name__}: {reason}); {advice.format(flag=flag)}"


def check_writable(path: str | os.PathLike, *, flag: str, folder: bool = False) -> Path:
    """Check, before any compute, that ``path`` (a file to create, or with ``folder`` a folder
    to write into) can be written: creates the missing parent folders and writes then removes
    a probe file. Raises :class:`UserError` (one line naming ``flag``) when it cannot."""
    path = Path(path).expanduser()
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path")
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=target)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: " + write_problem(exc, target, flag)) from None
    return path


def kept_state_name(iteration: int) -> str:
    """File name of the state kept after ``iteration`` iterations: ``it<N:06d>.pt``."""
    return f"it{int(iteration):06d}.pt"


KEPT_STATE_RE = re.compile(r"^it(\d{6,})\.pt$")
"""Matches :func:`kept_state_name` (group 1: the iteration count)."""


class FileCheckpointStore:
    """:class:`methods.context.CheckpointStore` backed by one file (``load``/``save``).

    ``load`` returns None when the file does not exist yet; an unreadable file raises
    :class:`CheckpointError` naming it (delete it to start the run afresh). ``dataset``
    (a :func:`benchmarks.data.dataset_fingerprint`) is stored with every save; a checkpoint
    written for other data is refused on load (the method's own identity check covers
    method, seed, IPC and config).

    With ``keep_dir`` it is also a :class:`methods.context.KeepingCheckpointStore`:
    ``keep(state, n)`` writes the state, exactly as ``save`` would write it, to
    ``keep_dir/it<n:06d>.pt`` (:func:`kept_state_name`; a sweep's
    ``<out>/snapshots/<cell_id>/``), atomically; later saves never replace it."""

    def __init__(self, path: str | os.PathLike, *, dataset: Optional[str] = None,
                 keep_dir: Optional[str | os.PathLike] = None) -> None:
        self.path = Path(path)
        self.dataset = dataset
        self.keep_dir = None if keep_dir is None else Path(keep_dir)
        self.saves = 0

    def __repr__(self) -> str:
        return f"FileCheckpointStore('{self.path}')"

    def load(self) -> Optional[dict[str, Any]]:
        if not self.path.exists():
            return None
        import torch

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, foreign pickle, not a torch file
            first = str(exc).splitlines()[0] if str(exc) else "no detail"
            raise CheckpointError(
                f"checkpoint {self.path} is unreadable ({type(exc).__name__}: {first}); delete it to "
                "restart the run from the beginning"
            ) from exc
        if not isinstance(state, dict):
            raise CheckpointError(
                f"checkpoint {self.path} does not hold a state dict; delete it to restart the run"
            )
        theirs = state.pop("dataset_fingerprint", None)
        if self.dataset is not None and theirs is not None and theirs != self.dataset:
            raise CheckpointError(
                f"checkpoint {self.path} was written for other data ({theirs}, not {self.dataset}); delete it "
                "or use another --checkpoint"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        if self.dataset is not None:
            state = {**state, "dataset_fingerprint": self.dataset}
        atomic_torch_save(state, self.path)
        self.saves += 1

    def keep(self, state: dict[str, Any], iteration: int) -> None:
        if self.keep_dir is None:
            raise CheckpointError(f"{self!r} has no folder for kept states; give it keep_dir to keep iteration "
                                  f"{iteration}")
        if self.dataset is not None:
            state = {**state, "dataset_fingerprint": self.dataset}
        atomic_torch_save(state, self.keep_dir / kept_state_name(iteration))

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def _cache_file_name(key: str) -> str:
    """A readable, filesystem-safe and collision-free file name for ``key``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "entry"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{slug}-{digest}.pt"


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (waiting, with one log line, while another
    process holds it); runs unlocked where the folder or filesystem cannot lock."""
    import fcntl

    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a+b")
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process computing %s (%s)", what, lock_path)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError:  # no locks on this filesystem
            pass
        yield
    finally:
        fh.close()  # releases the lock


def disk_cache(folder: str | os.PathLike) -> Callable[[str, Callable[[], dict]], dict]:
    """A ``cache(key, compute) -> dict`` for :attr:`methods.context.RunContext.cache`.

    The first call for ``key`` runs ``compute()`` and stores its dict of tensors/primitives in
    ``folder``; later calls (also from other processes) load it. An unreadable entry is logged,
    recomputed and overwritten. Values loaded from disk are on the CPU (callers move them to
    their device).

    Concurrent callers of one key compute it once: the computing process holds an exclusive
    ``flock`` on ``<entry>.lock`` and the others wait for it, then load its entry (cells of a
    sweep that share herding's 20-epoch feature network start together on a cluster). The
    kernel releases the lock of a process that dies, so a preempted job blocks nobody. Where the
    filesystem refuses locks, each caller computes (same deterministic content; the last
    rename wins)."""
    root = Path(folder)

    def load(path: Path, key: str) -> Optional[dict]:
        import torch

        if not path.is_file():
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            log.warning("cache entry %s is unreadable (%s); recomputing", path, type(exc).__name__)
            return None
        if not isinstance(value, dict):
            log.warning("cache entry %s is not a dict; recomputing", path)
            return None
        log.info("cache hit for %s (%s)", key, path)
        return value

    def cache(key: str, compute: Callable[[], dict]) -> dict:
        path = root / _cache_file_name(key)
        value = load(path, key)
        if value is not None:
            return value
        with exclusive_lock(path.with_name(path.name + ".lock"), key):
            value = load(path, key)  # computed by the process we waited for
            if value is not None:
                return value
            value = compute()
            if not isinstance(value, dict):
                raise TypeError(f"cache compute for '{key}' must return a dict, got {type(value).__name__}")
            atomic_torch_save(value, path)
        return value

    cache.folder = root  # type: ignore[attr-defined]
    return cache
