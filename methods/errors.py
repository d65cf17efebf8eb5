"""The exceptions ``methods`` raises for user-caused problems (printed as one line by the CLI)."""

from __future__ import annotations


class MethodError(ValueError):
    """A user-caused problem with a method request (unknown name, bad config, impossible IPC)."""


class SyntheticSetFormatError(ValueError):
    """A file that is not a synthetic set, is corrupt, or was written by a newer version."""
