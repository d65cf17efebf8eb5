"""File-backed storage for runs: a checkpoint store for method loop state and a tensor cache.

Both write atomically (a uniquely named temp file in the target folder, then ``os.replace``),
so a preempted job or two concurrent jobs never leave a half-written file behind, and both read
with ``torch.load(weights_only=True)``: only tensors and primitives, never arbitrary pickles.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from benchmarks import UserError

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint file that exists but cannot be read."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` via a unique temp file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class FileCheckpointStore:
    """:class:`methods.context.CheckpointStore` backed by one file (``load``/``save``).

    ``load`` returns None when the file does not exist yet; an unreadable file raises
    :class:`CheckpointError` naming it (delete it to start the run afresh)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.saves = 0

    def __repr__(self) -> str:
        return f"FileCheckpointStore('{self.path}')"

    def load(self) -> Optional[dict[str, Any]]:
        if not self.path.exists():
            return None
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
        return state

    def save(self, state: dict[str, Any]) -> None:
        atomic_torch_save(state, self.path)
        self.saves += 1

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def _cache_file_name(key: str) -> str:
    """A readable, filesystem-safe and collision-free file name for ``key``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:80] or "entry"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{slug}-{digest}.pt"


def disk_cache(folder: str | os.PathLike) -> Callable[[str, Callable[[], dict]], dict]:
    """A ``cache(key, compute) -> dict`` for :attr:`methods.context.RunContext.cache`.

    The first call for ``key`` runs ``compute()`` and stores its dict of tensors/primitives in
    ``folder``; later calls (also from other processes) load it. An unreadable entry is logged,
    recomputed and overwritten. Values loaded from disk are on the CPU (callers move them to
    their device). Concurrent writers of one key are safe: the last rename wins
    and both wrote the same deterministic content."""
    root = Path(folder)

    def cache(key: str, compute: Callable[[], dict]) -> dict:
        path = root / _cache_file_name(key)
        if path.is_file():
            try:
                value = torch.load(path, map_location="cpu", weights_only=True)
                if isinstance(value, dict):
                    log.info("cache hit for %s (%s)", key, path)
                    return value
                log.warning("cache entry %s is not a dict; recomputing", path)
            except Exception as exc:
                log.warning("cache entry %s is unreadable (%s); recomputing", path, type(exc).__name__)
        value = compute()
        if not isinstance(value, dict):
            raise TypeError(f"cache compute for '{key}' must return a dict, got {type(value).__name__}")
        atomic_torch_save(value, path)
        return value

    cache.folder = root  # type: ignore[attr-defined]
    return cache
