"""ZCA whitening of image tensors, stored with a synthetic set (tensors only).

Methods that condense in whitened space (KIP: Nguyen et al., "Dataset Meta-Learning from
Kernel Ridge-Regression", ICLR 2021; MTT: Cazenavette et al., "Dataset Distillation by Matching
Training Trajectories", CVPR 2022) fit ZCA on the training images and evaluate on whitened test
images. Here, as in MTT's code (KIP's additionally standardises every image and scales the
regulariser by the mean eigenvalue; not done here):

* every image is flattened to one vector of ``D = C * H * W`` values;
* the feature mean ``m`` is subtracted and the covariance ``S = X^T X / (N - 1)`` computed;
* its eigendecomposition ``S = U diag(l) U^T`` is regularised by ``reg`` (MTT's kornia
  ``ZCAWhitening(eps=0.1)``: ``l + reg``), giving ``W = U diag((l + reg)^-1/2) U^T``;
* ``whiten(x) = (x - m) W`` per image, ``unwhiten(z) = z U diag((l + reg)^1/2) U^T + m``
  (the exact inverse, for showing whitened images as a grid).

Only ``m``, ``U`` and ``l`` are stored (``W`` and its inverse are products of them), in float32;
the decomposition itself runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

DEFAULT_REG = 0.1


@dataclass(frozen=True)
class ZCA:
    """A fitted ZCA whitening: feature ``mean`` (D,), ``eigenvectors`` (D, D) as columns,
    ``eigenvalues`` (D,) of the covariance, the regulariser ``reg`` and the image ``shape``."""

    mean: Tensor
    eigenvectors: Tensor
    eigenvalues: Tensor
    reg: float
    shape: tuple[int, ...]

    @classmethod
    def fit(cls, images: Tensor, reg: float = DEFAULT_REG) -> "ZCA":
        """Fit on ``images`` (N, C, H, W), N >= 2; ``reg`` > 0 regularises the eigenvalues."""
        if images.ndim < 2 or images.shape[0] < 2:
            raise ValueError(f"ZCA needs at least 2 images to fit, got shape {tuple(images.shape)}")
        if not reg > 0:
            raise ValueError(f"ZCA reg must be > 0, got {reg}")
        x = images.detach().reshape(images.shape[0], -1).to(torch.float64)
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / (x.shape[0] - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues = eigenvalues.clamp_min(0)
        return cls(mean=mean.float().cpu(), eigenvectors=eigenvectors.float().cpu(),
                   eigenvalues=eigenvalues.float().cpu(), reg=float(reg), shape=tuple(images.shape[1:]))

    def _apply(self, x: Tensor, power: float) -> Tensor:
        u = self.eigenvectors.to(device=x.device, dtype=torch.float64)
        scale = (self.eigenvalues.to(device=x.device, dtype=torch.float64) + self.reg) ** power
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        return ((flat @ u) * scale) @ u.T

    def whiten(self, images: Tensor) -> Tensor:
        """Whitened copy of ``images`` (same shape and dtype)."""
        self._check(images)
        mean = self.mean.to(device=images.device, dtype=torch.float64)
        flat = images.reshape(images.shape[0], -1).to(torch.float64) - mean
        return self._apply(flat, -0.5).reshape(images.shape).to(images.dtype)

    def unwhiten(self, images: Tensor) -> Tensor:
        """The inverse of :meth:`whiten` (for image grids of a whitened set)."""
        self._check(images)
        mean = self.mean.to(device=images.device, dtype=torch.float64)
        return (self._apply(images, 0.5) + mean).reshape(images.shape).to(images.dtype)

    def _check(self, images: Tensor) -> None:
        if tuple(images.shape[1:]) != tuple(self.shape):
            raise ValueError(f"ZCA was fitted on images of shape {self.shape}, got {tuple(images.shape[1:])}")

    def to_dict(self) -> dict[str, Any]:
        """Tensors and primitives only (loadable with ``weights_only=True``)."""
        return {"mean": self.mean.contiguous(), "eigenvectors": self.eigenvectors.contiguous(),
                "eigenvalues": self.eigenvalues.contiguous(), "reg": float(self.reg),
                "shape": [int(s) for s in self.shape]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ZCA":
        return cls(mean=d["mean"], eigenvectors=d["eigenvectors"], eigenvalues=d["eigenvalues"],
                   reg=float(d["reg"]), shape=tuple(int(s) for s in d["shape"]))
