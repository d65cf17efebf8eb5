"""Benchmarks layer: datasets, the evaluation protocol, run pipeline, storage and the CLI.

``benchmarks`` imports ``methods`` (never the other way round). Every error a user can cause
here derives from :class:`UserError`; the CLI prints such errors as one line and exits with
status 2 instead of showing a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (missing data, bad arguments, corrupt files).

    Subclasses: :class:`benchmarks.data.DataError`, :class:`benchmarks.storage.CheckpointError`,
    :class:`benchmarks.evaluate.EvaluationError`, :class:`benchmarks.pipeline.DeviceError`.
    """


__all__ = ["UserError"]
