"""The one atomic, durable file write of the suite.

:func:`atomic_write_bytes` writes a uniquely named temp file in the target folder, flushes and
``fsync``'s it, renames it over the target and ``fsync``'s the folder: a preempted job, a full
disk or two concurrent writers leave either the old file or the new one, never a partial file,
and the temp file is removed when any step fails (the ``OSError`` is raised; a full disk is
``ENOSPC``). :meth:`methods.synset.SyntheticSet.save` writes through it, and so does every
writer of the benchmarks layer (``benchmarks.storage`` re-exports it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (module doc); the parent folder is
    created. Raises ``OSError`` (the temp file removed) when any step fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path
