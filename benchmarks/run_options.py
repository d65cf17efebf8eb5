"""How a sweep runs: one typed object instead of options relayed through every signature.

:class:`RunOptions` is built once -- by ``python -m benchmarks run`` from its flags and the spec
(:meth:`RunOptions.from_sweep`) -- and handed as one value to the launcher, the executor and the
cell jobs it builds. Nothing below the command line sees an argparse namespace. None of these
options enters a cell id: they change where and how cells run, never their results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks import UserError
from benchmarks.profile import ClusterProfile

DEFAULT_LOCAL_TIMEOUT_MIN = 24 * 60
"""Time limit of a ``local`` executor job when no cluster profile gives one."""


@dataclass(frozen=True)
class RunOptions:
    """Every option of one launcher run (see the module doc).

    ``executor``: a registered executor name (``slurm``, ``local``, ``debug``; see
    :mod:`benchmarks.executors`). ``data_root``/``device``/``download``: where jobs find data
    and what they compute on (from the spec). ``checkpoint_every``: iterations between
    checkpoint saves of a learned method. ``progress``: per-iteration progress lines in job
    logs. ``parallel``: cells of the ``local`` executor running at once. ``array_parallelism``:
    tasks of one SLURM array running at once (None: the profile's). ``timeout_min``: time
    limit of a ``local`` job. ``force``: redo finished cells. ``wait``: ``slurm`` only, follow the
    jobs until they end (False: submit and return). ``poll_s``: seconds between state polls.
    ``profile``: the cluster profile (``slurm`` needs one). ``compile``: the cells' compile mode
    (``auto``/``on``/``off``, :mod:`methods.compile`; from the spec's ``compile:``)."""

    executor: str = "debug"
    data_root: Path = Path("data")
    device: str = "auto"
    download: bool = False
    checkpoint_every: int = 10
    progress: bool = False
    parallel: int = 1
    array_parallelism: Optional[int] = None
    timeout_min: int = DEFAULT_LOCAL_TIMEOUT_MIN
    force: bool = False
    wait: bool = True
    poll_s: float = 2.0
    profile: Optional[ClusterProfile] = None
    compile: str = "auto"

    def __post_init__(self) -> None:
        from benchmarks.executors import EXECUTORS

        EXECUTORS.get(self.executor)  # UserError naming the valid executors
        for name in ("checkpoint_every", "parallel", "timeout_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.array_parallelism is not None and (
                isinstance(self.array_parallelism, bool) or not isinstance(self.array_parallelism, int)
                or self.array_parallelism < 1):
            raise UserError(f"array-parallelism must be an integer >= 1, got {self.array_parallelism!r}")
        if self.compile not in ("auto", "on", "off"):
            raise UserError(f"compile must be auto, on or off, got {self.compile!r}")
        if not self.poll_s > 0:
            raise UserError(f"poll must be a positive number of seconds, got {self.poll_s!r}")

    @classmethod
    def from_sweep(cls, sweep: Any, **options: Any) -> "RunOptions":
        """Options for running ``sweep`` (a :class:`benchmarks.sweep.Sweep`): data root, device,
        download and profile from the spec; ``options`` (the command-line values) set or
        override any field. A ``local`` job's time limit stays :data:`DEFAULT_LOCAL_TIMEOUT_MIN`:
        the profile's ``timeout_min`` is a SLURM queue's base limit (scaled per IPC by the
        ``slurm`` executor), and on one's own machine it only killed long cells (a DC cell at the
        paper's 1000 iterations runs ~5 h on one CPU core) and restarted them from their last
        checkpoint."""
        base: dict[str, Any] = dict(data_root=Path(sweep.data_root), device=sweep.device, download=sweep.download,
                                    profile=sweep.profile, compile=getattr(sweep, "compile", "auto"))
        base.update(options)
        return cls(**base)
