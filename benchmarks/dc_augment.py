"""DC's non-differentiable evaluation augmentation (reference ``get_daparam`` / ``augment``, notes §2.8).

Used only when evaluation networks are trained without DSA: each image of a training minibatch
gets **one** op chosen uniformly from the strategy (``'crop_scale_rotate'`` or ``'crop_noise'``):

* **crop**: pad by 4 px with the per-channel mean of the minibatch, take a window of the
  original size at offsets drawn from 0..7 per axis (the reference draws
  ``permutation(2*crop)[0]``, so offset 8 never occurs; kept).
* **scale**: height and width ``int(U(0.8, 1.2) * H)`` (both from ``H``, as in the reference),
  nearest-neighbour resize, centred on a zero canvas and centre-cropped back to H x W.
* **rotate**: an integer angle from -45..44 (``randint(-45, 45)``), filled with the mean of the
  channel means. *Deliberate difference*: the reference rotates with ``scipy.ndimage.rotate``
  (cubic spline, canvas enlarged then centre-cropped); here a bilinear ``grid_sample`` rotation
  about the image centre on the original canvas -- the same geometry, slightly smoother
  interpolation, and it runs on the device without a host round trip.
* **noise**: ``x + 0.001 * N(0, 1)``.

Every draw comes from the CPU ``torch.Generator`` passed in (the reference uses the global numpy
RNG); all ops are vectorised over the images that chose them.

Which strategy applies (:func:`methods.protocol.dc_strategy`, read by the evaluation plan's
``augmentation='auto'``): ``'crop_noise'`` when the evaluation architecture
is ``ConvNetBN`` (checked last in the reference, so it wins), else ``'crop_scale_rotate'`` for
MNIST, else none. The bundled ``digits`` dataset gets **none**: the reference rule names MNIST
only, and digits exists for fast runs (augmentation would triple its evaluation epochs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

CROP = 4
SCALE = 0.2
ROTATE = 45
NOISE = 0.001

STRATEGIES = ("crop_scale_rotate", "crop_noise")
_OPS = ("crop", "scale", "rotate", "noise")


class DCAugment:
    """Callable ``aug(x, generator) -> x'`` applying the DC evaluation augmentation."""

    def __init__(self, strategy: str, *, crop: int = CROP, scale: float = SCALE, rotate: int = ROTATE,
                 noise: float = NOISE) -> None:
        ops = strategy.split("_")
        unknown = [op for op in ops if op not in _OPS]
        if unknown or not ops:
            raise ValueError(f"unknown DC augmentation op(s) {unknown} in '{strategy}'; ops: {', '.join(_OPS)}")
        self.strategy = strategy
        self.ops = ops
        self.crop, self.scale, self.rotate, self.noise = crop, scale, rotate, noise

    def __repr__(self) -> str:
        return f"DCAugment('{self.strategy}')"

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n = x.shape[0]
        if n == 0:
            return x
        choice = torch.randint(len(self.ops), (n,), generator=generator)
        out = x.clone()
        # per-channel mean of the whole minibatch (before any op), as in the reference
        channel_mean = x.mean(dim=(0, 2, 3))
        for k, op in enumerate(self.ops):
            sel = (choice == k).nonzero().flatten()
            if sel.numel() == 0:
                continue
            idx = sel.to(x.device)
            fn = getattr(self, f"_{op}")
            out[idx] = fn(x[idx], generator, channel_mean)
        return out

    # -- ops: each takes (images, generator, batch channel mean) ------------------------------
    def _crop(self, x: Tensor, g: torch.Generator, channel_mean: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p = self.crop
        canvas = channel_mean.view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        canvas[:, :, p:p + h, p:p + w] = x
        dy = torch.randint(2 * p, (n,), generator=g).to(x.device)
        dx = torch.randint(2 * p, (n,), generator=g).to(x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))  # (n, h)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))  # (n, w)
        b = torch.arange(n, device=x.device).view(n, 1, 1)
        # advanced indexing: (n, h, w, c) -> (n, c, h, w)
        return canvas.permute(0, 2, 3, 1)[b, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)

    def _scale(self, x: Tensor, g: torch.Generator, channel_mean: Tensor) -> Tensor:
        """Nearest resize to (sh, sw), centred on a zero canvas of side max(sh, sw, h, w), centre
        crop back to (h, w) -- vectorised as one gather (index rule of ``F.interpolate``'s
        nearest mode: ``src = floor(dst * (in / out))`` in float32)."""
        n, c, h, w = x.shape
        fh = 1 - self.scale + 2 * self.scale * torch.rand(n, generator=g, dtype=torch.float64)
        fw = 1 - self.scale + 2 * self.scale * torch.rand(n, generator=g, dtype=torch.float64)
        sh = (fh * h).long().clamp_min(1)  # the reference derives both sizes from H
        sw = (fw * h).long().clamp_min(1)
        m = torch.maximum(torch.maximum(sh, sw), torch.full_like(sh, max(h, w)))
        rows, row_ok = _nearest_index(h, sh, (m - sh) // 2, (m - h) // 2)
        cols, col_ok = _nearest_index(w, sw, (m - sw) // 2, (m - w) // 2)
        dev = x.device
        rows, cols = rows.to(dev), cols.to(dev)
        mask = (row_ok.view(n, h, 1) & col_ok.view(n, 1, w)).to(dev)
        b = torch.arange(n, device=dev).view(n, 1, 1)
        gathered = x.permute(0, 2, 3, 1)[b, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n, h, w, c)
        return (gathered * mask.unsqueeze(-1).to(x.dtype)).permute(0, 3, 1, 2).contiguous()

    def _rotate(self, x: Tensor, g: torch.Generator, channel_mean: Tensor) -> Tensor:
        n, c, h, w = x.shape
        angles = torch.randint(-self.rotate, self.rotate, (n,), generator=g).double() * (math.pi / 180)
        cos, sin = torch.cos(angles), torch.sin(angles)
        zeros = torch.zeros_like(cos)
        # sampling grid in normalised coordinates; account for non-square images
        theta = torch.stack(
            [torch.stack([cos, -sin * h / w, zeros], 1), torch.stack([sin * w / h, cos, zeros], 1)], 1
        ).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
        fill = channel_mean.mean()
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill

    def _noise(self, x: Tensor, g: torch.Generator, channel_mean: Tensor) -> Tensor:
        return x + self.noise * torch.randn(x.shape, generator=g).to(device=x.device, dtype=x.dtype)


def _nearest_index(size: int, scaled: Tensor, pad: Tensor, crop: Tensor) -> tuple[Tensor, Tensor]:
    """Source indices (n, size) and validity masks for one axis of the scale op.

    Output position ``o`` sits at canvas position ``o + crop``; the resized image occupies
    canvas positions ``pad .. pad + scaled - 1``; inside it, position ``t`` reads source pixel
    ``floor(t * (size / scaled))`` (float32, clamped)."""
    o = torch.arange(size).view(1, size)
    t = o + crop.view(-1, 1) - pad.view(-1, 1)
    ok = (t >= 0) & (t < scaled.view(-1, 1))
    ratio = torch.full(scaled.shape, float(size), dtype=torch.float32) / scaled.float()
    src = torch.floor(t.clamp_min(0).float() * ratio.view(-1, 1)).long().clamp(0, size - 1)
    return src, ok
