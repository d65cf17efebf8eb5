"""The result of a method, :class:`SyntheticSet`, and its on-disk format.

A synthetic set is saved with :func:`torch.save` as a dict of plain tensors and primitives (a
magic string and a format version first) and read back with ``torch.load(weights_only=True)``,
so loading a file never runs code. Foreign, corrupt or newer-format files raise
:class:`~methods.errors.SyntheticSetFormatError` with a one-line reason.

Format 2 stores the set's evaluation plan (:class:`~methods.protocol.EvalPlan`, as a dict),
optional per-image soft labels, a learned learning rate and ZCA whitening. Format-1 files (an
``eval_defaults`` dict instead of the plan) still load and evaluate exactly as before
(:meth:`~methods.protocol.EvalPlan.from_eval_defaults`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
from torch import Tensor

from methods.atomic_io import atomic_write_bytes
from methods.errors import MethodError, SyntheticSetFormatError
from methods.zca import ZCA

if TYPE_CHECKING:  # methods.protocol imports the registry, which imports this module
    from methods.protocol import EvalPlan


FORMAT_VERSION = 2
"""Version of the on-disk :class:`SyntheticSet` format. Bump when the layout changes."""

_SYNSET_MAGIC = "condensation-bench/synthetic-set"


@dataclass
class SyntheticSet:
    """Images + labels produced by a method, with everything needed to reproduce and cost it.

    ``config`` is the method's full config as plain values, ``cost`` holds cost figures
    (``wall_time_s``, ``peak_memory_mb``, ``iterations`` and method-specific counters such as
    ``image_steps``, ``inner_epochs``, ``cap_fired``). ``indices`` are the chosen training-set
    indices for coresets (None for learned sets). ``eval_plan`` tells the evaluator how to
    evaluate the set (None = the default :class:`~methods.protocol.EvalPlan`); a method sets it
    to its paper's protocol. ``soft_labels`` (N, num_classes) are per-image label logits,
    ``learned_lr`` a learning rate learned with the set, ``zca`` the whitening the images live
    in; the plan decides whether evaluation uses them (``labels='soft'``,
    ``lr_source='learned'``, ``zca=True``).
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
    eval_plan: Optional["EvalPlan"] = None
    extra: dict[str, Any] = field(default_factory=dict)
    soft_labels: Optional[Tensor] = None
    learned_lr: Optional[float] = None
    zca: Optional[ZCA] = None

    def __post_init__(self) -> None:
        from methods.protocol import EvalPlan

        if self.eval_plan is None:
            self.eval_plan = EvalPlan()
        elif isinstance(self.eval_plan, Mapping):
            self.eval_plan = EvalPlan.from_dict(self.eval_plan)
        if self.soft_labels is not None:
            n = int(self.images.shape[0])
            if self.soft_labels.ndim != 2 or tuple(self.soft_labels.shape) != (n, int(self.num_classes)):
                raise SyntheticSetFormatError(
                    f"soft labels must have shape ({n}, {self.num_classes}) (images x classes), "
                    f"got {tuple(self.soft_labels.shape)}"
                )
        if self.learned_lr is not None:
            self.learned_lr = float(self.learned_lr)

    @property
    def eval_defaults(self) -> dict[str, Any]:
        """The format-1 summary of :attr:`eval_plan` (``dsa``, ``dsa_strategy``, ``epochs_no_aug``)."""
        return self.eval_plan.eval_defaults()

    def checksum(self) -> str:
        """SHA-256 of the set's tensors (images, labels, soft labels, indices; written with the
        file and checked on load, so flipped bytes in the data are found)."""
        digest = hashlib.sha256()
        for tensor in (self.images, self.labels, self.soft_labels, self.indices):
            if tensor is None:
                digest.update(b"-")
                continue
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()

    def evaluation_problem(self) -> Optional[str]:
        """Why this set cannot be evaluated (None: it can): NaN/Inf in its images or soft
        labels, e.g. a diverged condensation."""
        for what, tensor in (("images", self.images), ("soft labels", self.soft_labels)):
            if tensor is not None and tensor.is_floating_point():
                bad = int((~torch.isfinite(tensor)).sum())
                if bad:
                    return (f"its {what} hold {bad} non-finite value(s) (NaN/Inf): the condensation "
                            "diverged; condense again (e.g. with a lower learning rate)")
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and primitives only, loadable with ``weights_only=True``."""
        labels = self.labels.detach().cpu().long()
        return {
            "checksum": self.checksum(),
            "magic": _SYNSET_MAGIC,
            "format_version": FORMAT_VERSION,
            "images": self.images.detach().cpu().contiguous(),
            "labels": labels,
            "method": self.method,
            "config": plain(self.config),
            "seed": int(self.seed),
            "ipc": int(self.ipc),
            "num_classes": int(self.num_classes),
            "cost": plain(self.cost),
            "indices": None if self.indices is None else self.indices.detach().cpu().long(),
            "dataset": self.dataset,
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "class_names": None if self.class_names is None else list(self.class_names),
            "eval_plan": plain(self.eval_plan.to_dict()),
            "extra": plain(self.extra),
            "soft_labels": None if self.soft_labels is None else self.soft_labels.detach().cpu().float().contiguous(),
            "learned_lr": None if self.learned_lr is None else float(self.learned_lr),
            "zca": None if self.zca is None else self.zca.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "<dict>") -> "SyntheticSet":
        if not isinstance(d, Mapping) or d.get("magic") != _SYNSET_MAGIC:
            raise SyntheticSetFormatError(
                f"{source} is not a synthetic set written by this suite "
                "(make one with `python -m benchmarks condense ...`)"
            )
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise SyntheticSetFormatError(
                f"{source} was written by a newer format version ({version}) than this code "
                f"understands ({FORMAT_VERSION}); upgrade the suite to read it"
            )
        from methods.protocol import EvalPlan

        try:
            if version == 1:
                plan = EvalPlan.from_eval_defaults(d.get("eval_defaults") or {})
            else:
                plan = EvalPlan.from_dict(d.get("eval_plan") or {})
            synset = cls(
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
                eval_plan=plan,
                extra=dict(d.get("extra") or {}),
                soft_labels=d.get("soft_labels"),
                learned_lr=d.get("learned_lr"),
                zca=None if d.get("zca") is None else ZCA.from_dict(d["zca"]),
            )
        except (KeyError, TypeError, ValueError, MethodError) as exc:
            raise SyntheticSetFormatError(f"{source} is a corrupt synthetic set: {exc}") from exc
        problem = synset._shape_problem()
        if problem is not None:
            raise SyntheticSetFormatError(f"{source} is a corrupt synthetic set: {problem}")
        if d.get("checksum") is not None and d["checksum"] != synset.checksum():
            raise SyntheticSetFormatError(
                f"{source} is a corrupt synthetic set: its tensors do not match the checksum written with "
                "them (the file was modified or damaged); condense it again")
        return synset

    def _shape_problem(self) -> Optional[str]:
        if not isinstance(self.images, Tensor) or not isinstance(self.labels, Tensor):
            return "images and labels must be tensors"
        if self.images.ndim != 4:
            return f"images must be N x C x H x W, got shape {tuple(self.images.shape)}"
        n, m = int(self.images.shape[0]), int(self.labels.numel())
        if self.labels.ndim != 1 or m != n:
            return f"{n} images but {m} labels"
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= int(self.num_classes)):
            return f"labels must lie in 0..{int(self.num_classes) - 1}, got {int(self.labels.min())}..{int(self.labels.max())}"
        return None

    def to_bytes(self) -> bytes:
        """The file :meth:`save` writes, in memory."""
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write durably and atomically (:func:`methods.atomic_io.atomic_write_bytes`): a crash
        or a full disk never leaves half a file nor a temp file (a failed write raises
        ``OSError``)."""
        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "SyntheticSet":
        path = Path(path)
        if not path.is_file():
            raise SyntheticSetFormatError(f"synthetic set file {path} does not exist")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt zip, pickle with disallowed globals, truncated file
            text = str(exc)
            if "weights_only" in text:  # never repeat torch's advice to load an untrusted file unsafely
                detail = "it holds Python objects besides tensors and plain values; refused, loading them could run code"
            else:
                detail = text.splitlines()[0] if text else "no detail"
            raise SyntheticSetFormatError(
                f"{path} could not be read as a synthetic set ({type(exc).__name__}: {detail})"
            ) from exc
        return cls.from_dict(data, source=str(path))

    def __len__(self) -> int:
        return int(self.images.shape[0])


def plain(value: Any) -> Any:
    """Convert configs/cost dicts into primitives accepted by ``torch.load(weights_only=True)``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
