"""The method interface shared by every condensation method.

A method is a small object with a ``name``, a typed, frozen ``config`` dataclass holding the
paper's defaults, and one call::

    method.condense(real: ClassData, ipc: int, *, seed: int, context: RunContext) -> SyntheticSet

``methods`` works on tensors only: it never opens a dataset or a file by name. Everything a
method needs from the outside (device, progress bars, checkpoint storage, a cache for trained
feature networks) comes in through :class:`RunContext`, which ``benchmarks`` fills in.

Reproducibility rule of the whole package: every random draw comes from a seeded
:class:`torch.Generator` living on the CPU (see :func:`make_generator`); drawn values are moved
to the compute device afterwards. The same seed therefore gives the same draws on any device and
never touches the global RNG.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import resource
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Protocol

import torch
from torch import Tensor

FORMAT_VERSION = 1
"""Version of the on-disk :class:`SyntheticSet` format. Bump when the layout changes."""

_SYNSET_MAGIC = "condensation-bench/synthetic-set"


class MethodError(ValueError):
    """A user-caused problem with a method request (unknown name, bad config, impossible IPC)."""


class SyntheticSetFormatError(ValueError):
    """A file that is not a synthetic set, is corrupt, or was written by a newer version."""


# --------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the only source of randomness in ``methods``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def derive_seed(generator: torch.Generator) -> int:
    """Draw a 63-bit seed from ``generator`` (e.g. to seed a child generator)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


# --------------------------------------------------------------------------------------------
# Real data as condensation needs it
# --------------------------------------------------------------------------------------------


@dataclass
class ClassData:
    """A labelled image set held the way condensation needs it.

    ``images`` is one normalised float tensor (N, C, H, W) on the compute device, ``labels`` a
    long tensor (N,) on the same device, and ``indices_by_class[c]`` the (device) indices of
    class ``c`` so per-class batches are a single gather. ``mean``/``std`` are the per-channel
    statistics used for normalisation (needed to de-normalise for figures and by DSA's colour
    ops, which act in normalised space as in the reference).
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = "custom"
    class_names: Optional[tuple[str, ...]] = None
    indices_by_class: list[Tensor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError("images and labels have different lengths")
        self.labels = self.labels.long()
        if not self.indices_by_class:
            order = torch.argsort(self.labels.cpu(), stable=True)
            counts = torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()
            self.indices_by_class = [
                chunk.to(self.images.device) for chunk in torch.split(order, counts)
            ]

    # -- geometry --------------------------------------------------------------------------
    @property
    def channel(self) -> int:
        return int(self.images.shape[1])

    @property
    def im_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def class_counts(self) -> list[int]:
        return [int(ix.numel()) for ix in self.indices_by_class]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str) -> "ClassData":
        device = torch.device(device)
        return ClassData(
            images=self.images.to(device),
            labels=self.labels.to(device),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            name=self.name,
            class_names=self.class_names,
            indices_by_class=[ix.to(device) for ix in self.indices_by_class],
        )

    # -- sampling --------------------------------------------------------------------------
    def sample_indices(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """First ``n`` of a random permutation of class ``c``'s indices (the reference's
        ``get_images``). ``n`` larger than the class is capped at the class size."""
        idx = self.indices_by_class[c]
        perm = torch.randperm(idx.numel(), generator=generator)[: min(n, idx.numel())]
        return idx[perm.to(idx.device)]

    def sample(self, c: int, n: int, generator: torch.Generator) -> Tensor:
        """``n`` random images of class ``c`` (without replacement)."""
        return self.images[self.sample_indices(c, n, generator)]

    def sample_per_class(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A class-major batch: ``n`` images of class 0, then class 1, ... and their labels.

        Classes smaller than ``n`` contribute all their images, so callers that need equal
        counts should use ``min(n, min(class_counts()))``."""
        idx = torch.cat([self.sample_indices(c, n, generator) for c in range(self.num_classes)])
        return self.images[idx], self.labels[idx]

    def validate_ipc(self, ipc: int) -> None:
        """Raise :class:`MethodError` when ``ipc`` is impossible for this data."""
        if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc <= 0:
            raise MethodError(f"IPC must be a positive integer, got {ipc!r}")
        counts = self.class_counts()
        smallest = min(counts) if counts else 0
        if ipc > smallest:
            worst = counts.index(smallest)
            raise MethodError(
                f"IPC {ipc} is larger than the smallest class of dataset '{self.name}' "
                f"(class {worst} has {smallest} training images); choose IPC <= {smallest}"
            )


# --------------------------------------------------------------------------------------------
# The result of a method: a synthetic set
# --------------------------------------------------------------------------------------------


@dataclass
class SyntheticSet:
    """Images + labels produced by a method, with everything needed to reproduce and cost it.

    ``config`` is the method's full config as plain values, ``cost`` holds cost figures
    (``wall_time_s``, ``peak_memory_mb``, ``iterations`` and method-specific counters such as
    ``image_steps``, ``inner_epochs``, ``cap_fired``). ``indices`` are the chosen training-set
    indices for coresets (None for learned sets). ``eval_defaults`` tells the evaluation
    protocol how the method's own paper evaluated it (``dsa``: train with DSA augmentation,
    ``dsa_strategy``, ``epochs_no_aug``: epochs when no augmentation is active).
    """

    images: Tensor
    labels: Tensor
    method: str
    config: dict[str, Any]
    seed: int
    ipc: int
    num_classes: int
    cost: dict[str, float] = field(default_factory=dict)
    indices: Optional[Tensor] = None
    dataset: str = "custom"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_names: Optional[tuple[str, ...]] = None
    eval_defaults: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and primitives only, loadable with ``weights_only=True``."""
        return {
            "magic": _SYNSET_MAGIC,
            "format_version": FORMAT_VERSION,
            "images": self.images.detach().cpu().contiguous(),
            "labels": self.labels.detach().cpu().long(),
            "method": self.method,
            "config": _plain(self.config),
            "seed": int(self.seed),
            "ipc": int(self.ipc),
            "num_classes": int(self.num_classes),
            "cost": _plain(self.cost),
            "indices": None if self.indices is None else self.indices.detach().cpu().long(),
            "dataset": self.dataset,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "class_names": None if self.class_names is None else list(self.class_names),
            "eval_defaults": _plain(self.eval_defaults),
            "extra": _plain(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> "SyntheticSet":
        if not isinstance(d, Mapping) or d.get("magic") != _SYNSET_MAGIC:
            raise SyntheticSetFormatError(
                f"{source} is not a synthetic set written by this suite "
                "(make one with `python -m benchmarks condense ...`)"
            )
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SyntheticSetFormatError(
                f"{source} was written by a newer format version ({version}) than this code "
                f"understands ({FORMAT_VERSION}); upgrade the suite to read it"
            )
        try:
            return cls(
                images=d["images"],
                labels=d["labels"],
                method=d["method"],
                config=dict(d["config"]),
                seed=int(d["seed"]),
                ipc=int(d["ipc"]),
                num_classes=int(d["num_classes"]),
                cost=dict(d.get("cost") or {}),
                indices=d.get("indices"),
                dataset=d.get("dataset", "custom"),
                mean=tuple(d.get("mean") or ()),
                std=tuple(d.get("std") or ()),
                class_names=None if d.get("class_names") is None else tuple(d["class_names"]),
                eval_defaults=dict(d.get("eval_defaults") or {}),
                extra=dict(d.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SyntheticSetFormatError(f"{source} is a corrupt synthetic set: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename) so a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.to_dict(), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        path = Path(path)
        if not path.is_file():
            raise SyntheticSetFormatError(f"synthetic set file {path} does not exist")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt zip, pickle with disallowed globals, truncated file
            raise SyntheticSetFormatError(
                f"{path} could not be read as a synthetic set ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
            ) from exc
        return cls.from_dict(data, source=str(path))

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _plain(value: Any) -> Any:
    """Convert configs/cost dicts into primitives accepted by ``torch.load(weights_only=True)``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------
# Run context: device, progress, checkpointing, caches
# --------------------------------------------------------------------------------------------


class CheckpointStore(Protocol):
    """Where a method's loop state goes. ``benchmarks`` provides a file-backed one; tests use
    :class:`MemoryCheckpointStore`. States are dicts of tensors and primitives."""

    def load(self) -> Optional[dict[str, Any]]: ...

    def save(self, state: dict[str, Any]) -> None: ...


class MemoryCheckpointStore:
    """In-memory :class:`CheckpointStore` (tests, debugging). Keeps a serialised copy so the
    saved state cannot alias live tensors."""

    def __init__(self) -> None:
        self._blob: Optional[bytes] = None
        self.saves = 0

    def load(self) -> Optional[dict[str, Any]]:
        if self._blob is None:
            return None
        return torch.load(io.BytesIO(self._blob), weights_only=True)

    def save(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self._blob = buf.getvalue()
        self.saves += 1


class StopRequested(Exception):
    """Raised by :meth:`RunContext.iteration_done` when ``stop_after`` iterations ran (used by
    tests to simulate preemption at an exact point)."""


@dataclass
class RunContext:
    """Everything a method receives from the caller besides data, IPC and seed.

    * ``device``: where to compute (chosen at run time by the caller, never hard-coded).
    * ``iterations``: overrides the method's iteration budget when not None.
    * ``progress``: show tqdm bars.
    * ``checkpoint`` + ``checkpoint_every``: periodic state saves; ``iteration_done`` also keeps
      the latest consistent snapshot so a preemption handler can save it (``save_latest``).
    * ``cache``: ``cache(key, compute) -> dict`` memoises expensive tensor dicts (e.g. the
      trained feature network of herding/k-center) across runs; default computes every time.
    * ``log``: a callable for one-line progress messages.
    * ``stop_after``: raise :class:`StopRequested` after this many iterations (tests).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    iterations: Optional[int] = None
    progress: bool = False
    checkpoint: Optional[CheckpointStore] = None
    checkpoint_every: int = 10
    cache: Optional[Callable[[str, Callable[[], dict]], dict]] = None
    log: Callable[[str], None] = lambda msg: None
    stop_after: Optional[int] = None
    _latest: Optional[dict[str, Any]] = field(default=None, repr=False)
    _done_in_this_run: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)

    def resume_state(self) -> Optional[dict[str, Any]]:
        """The last saved loop state, or None for a fresh start."""
        if self.checkpoint is None:
            return None
        state = self.checkpoint.load()
        if state is not None:
            self.log(f"resuming from checkpoint at iteration {state.get('iteration')}")
        return state

    def iteration_done(self, iteration: int, state_fn: Callable[[], dict[str, Any]]) -> None:
        """Call at the end of every outer iteration with a function returning the full loop
        state *after* that iteration (cloned tensors). ``state['iteration']`` must be the
        index of the next iteration to run."""
        self._done_in_this_run += 1
        if self.checkpoint is not None:
            self._latest = state_fn()
            if (iteration + 1) % max(1, self.checkpoint_every) == 0:
                self.checkpoint.save(self._latest)
        if self.stop_after is not None and self._done_in_this_run >= self.stop_after:
            if self._latest is not None and self.checkpoint is not None:
                self.checkpoint.save(self._latest)
            raise StopRequested(f"stopped after {self._done_in_this_run} iterations")

    def save_latest(self) -> bool:
        """Save the latest consistent snapshot (called from a preemption handler)."""
        if self.checkpoint is None or self._latest is None:
            return False
        self.checkpoint.save(self._latest)
        return True

    def cached(self, key: str, compute: Callable[[], dict]) -> dict:
        return compute() if self.cache is None else self.cache(key, compute)


def rng_state(generator: torch.Generator) -> Tensor:
    return generator.get_state().clone()


# --------------------------------------------------------------------------------------------
# Cost figures
# --------------------------------------------------------------------------------------------


class CostMeter:
    """Wall time and peak memory of one run.

    Peak memory: on CUDA the allocator's ``max_memory_allocated`` (reset at start); on CPU the
    process's peak resident set size (``ru_maxrss``), which is process-wide and monotonic, so
    it is an upper bound for this run when several runs share a process.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def figures(self, **extra: float) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
        out = {"wall_time_s": time.perf_counter() - self.start, "peak_memory_mb": float(peak)}
        out.update({k: float(v) for k, v in extra.items()})
        return out


# --------------------------------------------------------------------------------------------
# Configs, methods and the registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodConfig:
    """Base class of every method's frozen config dataclass."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _check_type(value: Any, annotation: Any) -> bool:
    """Loose runtime check of a config value against its annotation (for user overrides)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_check_type(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if not args:
            return True
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_check_type(v, args[0]) for v in value)
        if origin is tuple:
            return len(value) == len(args) and all(_check_type(v, a) for v, a in zip(value, args))
        return all(_check_type(v, args[0]) for v in value)
    if origin in (dict, Mapping) or annotation in (dict,):
        if not isinstance(value, Mapping):
            return False
        if len(args) == 2:
            return all(_check_type(k, args[0]) and _check_type(v, args[1]) for k, v in value.items())
        return True
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _coerce(value: Any, annotation: Any) -> Any:
    """Turn YAML/JSON lists into tuples where the annotation asks for a tuple, ints into floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        for a in args:
            if a is not type(None) and _check_type(value, a):
                return _coerce(value, a)
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        return tuple(_coerce(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if origin is dict and isinstance(value, Mapping) and len(args) == 2:
        return {k: _coerce(v, args[1]) for k, v in value.items()}
    return value


def config_problems(config_cls: type, overrides: Mapping[str, Any]) -> list[str]:
    """Every problem with ``overrides`` for ``config_cls`` (unknown keys, wrong types)."""
    hints = typing.get_type_hints(config_cls)
    names = [f.name for f in dataclasses.fields(config_cls)]
    problems = []
    for key, value in overrides.items():
        if key not in names:
            problems.append(
                f"unknown config key '{key}' for {config_cls.__name__}; valid keys: "
                + ", ".join(names)
            )
        elif not _check_type(value, hints[key]):
            problems.append(
                f"config key '{key}' must be {_type_name(hints[key])}, got {value!r} "
                f"({type(value).__name__})"
            )
    return problems


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build_config(config_cls: type, overrides: Optional[Mapping[str, Any]] = None) -> Any:
    """``config_cls`` with ``overrides`` applied, validated; raises :class:`MethodError`."""
    overrides = dict(overrides or {})
    problems = config_problems(config_cls, overrides)
    if problems:
        raise MethodError("; ".join(problems))
    hints = typing.get_type_hints(config_cls)
    values = {k: _coerce(v, hints[k]) for k, v in overrides.items()}
    config = config_cls(**values)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


class Method(abc.ABC):
    """Base class: subclasses set ``name``, ``config_class`` and implement ``condense``.

    ``eval_epochs_no_aug`` is the number of evaluation epochs the method's paper used when no
    augmentation is active (300 for DC and the coresets, 600 for CAFE); ``uses_dsa_in_eval``
    decides whether evaluation trains with DSA (DSA, DM and the ``dsa=True`` variants).
    """

    name: ClassVar[str] = "method"
    config_class: ClassVar[type] = MethodConfig
    learned: ClassVar[bool] = True
    eval_epochs_no_aug: ClassVar[int] = 300

    def __init__(self, config: Optional[Any] = None, *, name: Optional[str] = None) -> None:
        self.config = config if config is not None else self.config_class()
        if name is not None:
            self.name = name

    def uses_dsa_in_eval(self) -> bool:
        return bool(getattr(self.config, "dsa", False))

    def eval_defaults(self, real: ClassData) -> dict[str, Any]:
        dsa = self.uses_dsa_in_eval()
        strategy = None
        if dsa:
            strategy = getattr(self.config, "dsa_strategy", None) or default_dsa_strategy(real.name)
        return {"dsa": dsa, "dsa_strategy": strategy, "epochs_no_aug": self.eval_epochs_no_aug}

    @abc.abstractmethod
    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        """Condense ``real`` into ``ipc`` images per class; every draw seeded by ``seed``."""

    def _loop_state(
        self,
        images: Tensor,
        optimizer: torch.optim.Optimizer,
        generators: Mapping[str, torch.Generator],
        counters: dict[str, float],
        *,
        seed: int,
        ipc: int,
        history: Optional[list] = None,
    ) -> "LoopState":
        """The :class:`LoopState` of one run of this method; its checkpoints carry the run's
        identity (method, seed, IPC), so another run's checkpoint is refused on restore."""
        return LoopState(images, optimizer, generators, counters, history=history,
                         identity={"method": self.name, "seed": int(seed), "ipc": int(ipc)})

    def _synset(
        self,
        real: ClassData,
        ipc: int,
        seed: int,
        images: Tensor,
        labels: Tensor,
        cost: dict[str, float],
        indices: Optional[Tensor] = None,
        extra: Optional[dict[str, Any]] = None,
    ) -> SyntheticSet:
        """Package a result with the metadata every method records."""
        return SyntheticSet(
            images=images.detach().cpu(),
            labels=labels.detach().cpu().long(),
            method=self.name,
            config=self.config.to_dict(),
            seed=seed,
            ipc=ipc,
            num_classes=real.num_classes,
            cost=cost,
            indices=None if indices is None else indices.detach().cpu().long(),
            dataset=real.name,
            mean=tuple(real.mean),
            std=tuple(real.std),
            class_names=real.class_names,
            eval_defaults=self.eval_defaults(real),
            extra=extra or {},
        )


def default_dsa_strategy(dataset: str) -> str:
    """DSA's per-dataset default strategy: no flip for digit datasets (MNIST, SVHN and the
    bundled digits), where a mirrored digit is a different symbol (DSA readme)."""
    if dataset.lower() in {"mnist", "svhn", "digits"}:
        return "color_crop_cutout_scale_rotate"
    return "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class _Entry:
    cls: type
    overrides: Mapping[str, Any]
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, overrides: Optional[Mapping[str, Any]] = None, description: str = ""):
    """Class decorator registering a method under ``name``. Use :func:`register_variant` for
    a named config override of an existing method (e.g. ``dsa`` = ``dc`` with ``dsa=True``)."""

    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"method name '{name}' registered twice")
        _REGISTRY[name] = _Entry(cls, dict(overrides or {}), description or (cls.__doc__ or "").strip().split("\n")[0])
        return cls

    return deco


def register_variant(name: str, base: type, overrides: Mapping[str, Any], description: str) -> None:
    if name in _REGISTRY:
        raise ValueError(f"method name '{name}' registered twice")
    _REGISTRY[name] = _Entry(base, dict(overrides), description)


def available_methods() -> dict[str, str]:
    """Registered method names -> one-line descriptions."""
    _import_all()
    return {k: v.description for k, v in sorted(_REGISTRY.items())}


def method_config_class(name: str) -> type:
    return _entry(name).cls.config_class


def method_base_overrides(name: str) -> dict[str, Any]:
    return dict(_entry(name).overrides)


def _entry(name: str) -> _Entry:
    _import_all()
    key = name.lower()
    if key not in _REGISTRY:
        raise MethodError(
            f"unknown method '{name}'; valid methods: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[key]


def get_method(name: str, overrides: Optional[Mapping[str, Any]] = None) -> Method:
    """Build the method registered as ``name`` with the variant's and the user's overrides."""
    entry = _entry(name)
    merged = dict(entry.overrides)
    merged.update(overrides or {})
    config = build_config(entry.cls.config_class, merged)
    return entry.cls(config, name=name.lower())


def _import_all() -> None:
    # Importing the package registers every method (one import line per method file there).
    import methods  # noqa: F401


class LoopState:
    """The resumable state of an iterative method, shared by every method that learns images.

    Holds references to the live synthetic ``images`` (a leaf tensor), their ``optimizer``, the
    method's named CPU ``generators``, a ``counters`` dict (cost figures; ``elapsed_s`` sums
    wall time across resumes) and an optional per-iteration ``history`` list (e.g. losses).
    ``identity`` (method, seed, IPC, ...) is stored with every snapshot and must match on
    restore, so a checkpoint of another run is refused rather than silently continued.
    :meth:`restore` loads a checkpoint into them and returns the iteration to continue from;
    :meth:`snapshot` returns the ``state_fn`` that :meth:`RunContext.iteration_done` expects
    (cloned tensors, so later steps cannot alter it).
    """

    def __init__(
        self,
        images: Tensor,
        optimizer: torch.optim.Optimizer,
        generators: Mapping[str, torch.Generator],
        counters: dict[str, float],
        *,
        identity: Optional[Mapping[str, Any]] = None,
        history: Optional[list] = None,
    ) -> None:
        self.images = images
        self.optimizer = optimizer
        self.generators = dict(generators)
        self.counters = counters
        self.counters.setdefault("elapsed_s", 0.0)
        self.identity = dict(identity or {})
        self.history = history
        self._run_start = time.perf_counter()
        self.elapsed_before = 0.0

    def restore(self, state: Optional[Mapping[str, Any]]) -> int:
        """Load ``state`` (None = fresh start); returns the first iteration to run."""
        start = 0
        if state is not None:
            missing = [k for k in ("iteration", "images", "opt_img", "generators", "counters") if k not in state]
            if missing or not isinstance(state.get("images"), Tensor):
                raise MethodError(
                    f"the checkpoint lacks {', '.join(missing) or 'images'}: it was written by another "
                    f"version or another kind of run; delete it to start afresh"
                )
            theirs = dict(state.get("identity") or {})
            differ = {k: (theirs.get(k), v) for k, v in self.identity.items() if theirs.get(k) != v}
            if differ:
                what = ", ".join(f"{k} {a!r} (this run: {b!r})" for k, (a, b) in differ.items())
                raise MethodError(
                    f"the checkpoint belongs to a different run: {what}; delete it or use the matching run"
                )
            if tuple(state["images"].shape) != tuple(self.images.shape):
                raise MethodError(
                    f"checkpoint holds images of shape {tuple(state['images'].shape)}, this run needs "
                    f"{tuple(self.images.shape)}: it belongs to a different run; clear it to start afresh"
                )
            with torch.no_grad():
                self.images.copy_(state["images"].to(self.images.device))
            self.optimizer.load_state_dict(state["opt_img"])
            for key, gen in self.generators.items():
                gen.set_state(state["generators"][key])
            self.counters.update(state["counters"])
            if self.history is not None:
                self.history[:] = list(state.get("history", []))
            start = int(state["iteration"])
        self._run_start = time.perf_counter()
        self.elapsed_before = float(self.counters["elapsed_s"])
        return start

    def snapshot(self, next_iteration: int) -> Callable[[], dict[str, Any]]:
        def state_fn() -> dict[str, Any]:
            counters = dict(self.counters)
            counters["elapsed_s"] = self.elapsed_before + time.perf_counter() - self._run_start
            state = {
                "iteration": next_iteration,
                "identity": dict(self.identity),
                "images": self.images.detach().cpu().clone(),
                "opt_img": _cpu_state(self.optimizer.state_dict()),
                "generators": {k: g.get_state().clone() for k, g in self.generators.items()},
                "counters": counters,
            }
            if self.history is not None:
                state["history"] = list(self.history)
            return state

        return state_fn


def _cpu_state(value: Any) -> Any:
    """A deep copy of an optimiser state dict with tensors on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, Mapping):
        return {k: _cpu_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_state(v) for v in value)
    return value
