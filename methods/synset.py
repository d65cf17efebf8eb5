"""The result of a method, :class:`SyntheticSet`, and its on-disk format.

A synthetic set is saved with :func:`torch.save` as a dict of plain tensors and primitives (a
magic string and a format version first) and read back with ``torch.load(weights_only=True)``,
so loading a file never runs code. Foreign, corrupt or newer-format files raise
:class:`~methods.errors.SyntheticSetFormatError` with a one-line reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from methods.errors import SyntheticSetFormatError


FORMAT_VERSION = 1
"""Version of the on-disk :class:`SyntheticSet` format. Bump when the layout changes."""

_SYNSET_MAGIC = "condensation-bench/synthetic-set"


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
            "eval_defaults": plain(self.eval_defaults),
            "extra": plain(self.extra),
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
