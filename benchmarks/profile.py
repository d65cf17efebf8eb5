"""Cluster profiles: the typed form of ``slurm/<name>.yaml`` and the resources of one cell.

A profile says where and with what the ``slurm`` executor runs cells: partition, GPUs, CPUs,
host memory, the time limit, account/QOS/constraint, how many tasks of one job array run at
once, extra ``sbatch`` options, shell setup lines, and how time and memory grow with IPC
(:class:`IpcScaling`). :func:`load_profile` reads a file into a frozen :class:`ClusterProfile`
after :func:`profile_problems` has checked *every* key (unknown keys, wrong types, out-of-range
values are all reported at once, one line each, as ``profile.<key>: <problem>``).

Every key is optional; a missing or null key means the default below (for partition, account,
QOS and constraint: the cluster's own default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from benchmarks import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO_ROOT / "slurm"

#: Profile key -> accepted YAML types (``type(None)``: the key may be null = its default).
PROFILE_KEYS: dict[str, tuple[type, ...]] = {
    "description": (str, type(None)),
    "partition": (str, type(None)),
    "gpus_per_node": (int, type(None)),
    "cpus_per_task": (int, type(None)),
    "mem_gb": (int, float, type(None)),
    "timeout_min": (int, type(None)),
    "account": (str, type(None)),
    "qos": (str, type(None)),
    "constraint": (str, type(None)),
    "array_parallelism": (int, type(None)),
    "additional_parameters": (dict, type(None)),
    "setup": (list, type(None)),
    "scale_with_ipc": (dict, type(None)),
}
SCALE_KEYS = ("reference_ipc", "time_exponent", "mem_exponent", "max_timeout_min", "max_mem_gb")
_AT_LEAST_ONE = ("cpus_per_task", "timeout_min", "array_parallelism")


class ProfileError(UserError):
    """A profile with problems; ``problems`` lists every one as ``path: message``."""

    def __init__(self, problems: Sequence[str], source: str = "profile") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s); nothing was submitted:\n{lines}")


@dataclass(frozen=True)
class IpcScaling:
    """How a cell's time and memory grow with its IPC (the profile's ``scale_with_ipc``).

    A cell with IPC ``k`` gets ``timeout_min * max(1, k/R)**time_exponent`` minutes (rounded
    up, capped at ``max_timeout_min``) and ``mem_gb * max(1, k/R)**mem_exponent`` GB (capped at
    ``max_mem_gb``), with ``R = reference_ipc``. Without a reference IPC nothing scales; a
    missing cap does not cap. Synthesis cost grows with the number of synthetic images (the
    learned methods update every image each iteration), hence the rule."""

    reference_ipc: Optional[float] = None
    time_exponent: float = 0.0
    mem_exponent: float = 0.0
    max_timeout_min: Optional[float] = None
    max_mem_gb: Optional[float] = None


@dataclass(frozen=True)
class ClusterProfile:
    """A validated cluster profile (see the module doc and ``slurm/gpu.yaml`` for each key)."""

    description: Optional[str] = None
    partition: Optional[str] = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 8.0
    timeout_min: int = 60
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    array_parallelism: int = 64
    additional_parameters: Mapping[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    scale_with_ipc: IpcScaling = field(default_factory=IpcScaling)
    name: Optional[str] = None
    path: Optional[Path] = None

    @classmethod
    def from_mapping(cls, data: Any, *, where: str = "profile", name: Optional[str] = None,
                     path: Optional[Path] = None) -> "ClusterProfile":
        """Build from a parsed YAML mapping; raise :class:`ProfileError` listing every problem."""
        problems = profile_problems(data, where)
        if problems:
            raise ProfileError(problems, str(path or where))
        values = {k: v for k, v in data.items() if v is not None}
        scale = {k: v for k, v in (values.pop("scale_with_ipc", None) or {}).items() if v is not None}
        return cls(
            description=values.get("description"),
            partition=values.get("partition"),
            gpus_per_node=int(values.get("gpus_per_node", 0)),
            cpus_per_task=int(values.get("cpus_per_task", 1)),
            mem_gb=float(values.get("mem_gb", 8.0)),
            timeout_min=int(values.get("timeout_min", 60)),
            account=values.get("account"),
            qos=values.get("qos"),
            constraint=values.get("constraint"),
            array_parallelism=int(values.get("array_parallelism", 64)),
            additional_parameters=dict(values.get("additional_parameters") or {}),
            setup=tuple(values.get("setup") or ()),
            scale_with_ipc=IpcScaling(**scale),
            name=name,
            path=path,
        )

    def resources(self, ipc: Optional[int]) -> tuple[int, float]:
        """(time limit in minutes, host memory in GB) for a cell of ``ipc`` (:class:`IpcScaling`).

        Cells up to the reference IPC get the base values; the whole-dataset baseline
        (``ipc`` None) gets ``max_timeout_min`` (or the base time when unset) and the base memory."""
        scale = self.scale_with_ipc
        timeout, mem = self.timeout_min, float(self.mem_gb)
        if ipc is None:
            return int(scale.max_timeout_min or timeout), mem
        if scale.reference_ipc:
            factor = max(1.0, ipc / float(scale.reference_ipc))
            timeout = int(math.ceil(timeout * factor ** float(scale.time_exponent)))
            mem = mem * factor ** float(scale.mem_exponent)
        if scale.max_timeout_min:
            timeout = min(timeout, int(scale.max_timeout_min))
        if scale.max_mem_gb:
            mem = min(mem, float(scale.max_mem_gb))
        return timeout, round(mem, 1)

    def sbatch_parameters(self, ipc: Optional[int], *, job_name: str,
                          array_parallelism: Optional[int] = None) -> dict[str, Any]:
        """``submitit.SlurmExecutor.update_parameters`` arguments for one cell of ``ipc``.

        ``array_parallelism`` (the run's override) replaces the profile's value when given."""
        timeout, mem = self.resources(ipc)
        params: dict[str, Any] = {
            "job_name": job_name,
            "time": timeout,
            "mem": f"{max(1, int(math.ceil(mem * 1024)))}M",
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": int(array_parallelism or self.array_parallelism),
            "stderr_to_stdout": True,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[key] = str(getattr(self, key))
        if self.additional_parameters:
            params["additional_parameters"] = dict(self.additional_parameters)
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def resolve_profile_path(name: str) -> Path:
    """``gpu`` -> ``slurm/gpu.yaml``; anything with a slash or ending in ``.yaml`` is a path."""
    text = str(name)
    if "/" in text or text.endswith((".yaml", ".yml")):
        return Path(text).expanduser()
    return PROFILE_DIR / f"{text}.yaml"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def profile_problems(data: Any, where: str = "profile") -> list[str]:
    """Every problem of a parsed profile mapping (unknown keys, wrong types, bad values), one
    line each as ``<where>.<key>: <problem>``; empty when the profile is valid."""
    if not isinstance(data, dict):
        return [f"{where}: a profile must be a mapping, got {type(data).__name__}"]
    problems = []
    for key, value in data.items():
        if key not in PROFILE_KEYS:
            problems.append(f"{where}.{key}: unknown profile key; valid keys: {', '.join(PROFILE_KEYS)}")
            continue
        types = PROFILE_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"{where}.{key}: must be {names}, got {value!r}")
            continue
        if value is None:
            continue
        if key == "gpus_per_node" and value < 0:
            problems.append(f"{where}.{key}: must be >= 0, got {value}")
        if key in _AT_LEAST_ONE and value < 1:
            problems.append(f"{where}.{key}: must be >= 1, got {value}")
        if key == "mem_gb" and value <= 0:
            problems.append(f"{where}.{key}: must be > 0, got {value}")
        if key == "scale_with_ipc":
            for sk, sv in value.items():
                if sk not in SCALE_KEYS:
                    problems.append(f"{where}.scale_with_ipc.{sk}: unknown key; valid keys: {', '.join(SCALE_KEYS)}")
                elif sv is not None and (not _number(sv) or sv < 0):
                    problems.append(f"{where}.scale_with_ipc.{sk}: must be a number >= 0, got {sv!r}")
        if key == "setup" and not all(isinstance(s, str) for s in value):
            problems.append(f"{where}.setup: must be a list of shell command strings")
        if key == "additional_parameters" and not all(isinstance(k, str) for k in value):
            problems.append(f"{where}.additional_parameters: keys must be sbatch option names (strings)")
    return problems


def read_profile(name: str, where: str = "profile") -> tuple[list[str], Optional[ClusterProfile], Path]:
    """(problems, profile or None, path) for a profile name or path; never raises for a bad file."""
    path = resolve_profile_path(name)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        return [f"{where}: profile file {path} does not exist (shipped profiles: {shipped})"], None, path
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"{where}: {path} is not valid YAML ({getattr(exc, 'problem', None) or exc})"], None, path
    except OSError as exc:
        return [f"{where}: cannot read {path} ({exc.strerror or exc})"], None, path
    data = {} if data is None else data
    problems = profile_problems(data, where)
    if problems:
        return problems, None, path
    return [], ClusterProfile.from_mapping(data, where=where, name=str(name), path=path.resolve()), path


def load_profile(name: str) -> ClusterProfile:
    """Load and check a profile by name (``slurm/<name>.yaml``) or path; raise
    :class:`ProfileError` listing every problem."""
    problems, profile, path = read_profile(name)
    if problems or profile is None:
        raise ProfileError(problems, str(path))
    return profile
