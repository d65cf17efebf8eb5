"""Real training data held the way condensation needs it (:class:`ClassData`).

One normalised tensor on the compute device plus a per-class index, so a per-class batch is a
single gather (the reference code's ``indices_class`` layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from methods.errors import MethodError


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
    flip_preserves_label: Optional[bool] = None
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
            flip_preserves_label=self.flip_preserves_label,
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
