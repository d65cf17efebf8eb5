"""Differentiable Siamese Augmentation (DSA), written anew from the reference semantics.

Reference: Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation"
(ICML 2021), ``DiffAugment``/``ParamDiffAug`` in ``VICO-UoE/DatasetCondensation:utils.py``
(§2.7 of the reference notes). Every op acts on *normalised* tensors (N, C, H, W) and is
differentiable with respect to its input.

Parameter ranges (equal to the reference's):

* ``scale``: s_x, s_y ~ U(1/1.2, 1.2) independently, theta = [[s_x, 0, 0], [0, s_y, 0]];
* ``rotate``: angle ~ U(-15 deg, +15 deg), theta = [[cos, -sin, 0], [sin, cos, 0]];
  both warped with ``F.affine_grid`` + ``F.grid_sample`` (bilinear, zero padding,
  ``align_corners=False`` -- the PyTorch default the reference's calls rely on);
* ``flip``: horizontal flip (last dim) when u < 0.5;
* ``color``: brightness x + (u - 0.5) * 1.0, then saturation (per-pixel channel mean m,
  (x - m) * 2u + m), then contrast (per-image mean m over C, H, W, (x - m) * (u + 0.5) + m);
* ``crop`` (a translation): shift = int(H * 0.125 + 0.5), t ~ randint[-shift, shift] per axis,
  pixels moved in from outside are 0 (the reference pads by one zero pixel and clamps its
  gather indices, which is the same thing);
* ``cutout``: side = int(H * 0.5 + 0.5), centre o ~ randint[0, H + 1 - side % 2) per axis, the
  square [o - side // 2, o - side // 2 + side) clipped to the image is set to 0.

Mode ``'S'`` (default) draws ONE strategy token per call uniformly, mode ``'M'`` applies all
tokens in order.

Siamese mode is an explicit API here (:meth:`DSA.siamese`): one op and ONE parameter set are
drawn and applied identically to every image of every given batch (the reference achieves this
by reseeding the *global* RNG with the same seed before augmenting the real and the synthetic
batch and then copying sample 0's parameters to all samples). Non-siamese calls
(``aug(x, generator)``) draw the op once per call and the parameters per sample, like the
reference with ``seed=-1``. All draws come from the given CPU :class:`torch.Generator`; the
global RNG is never touched or reseeded (deliberate difference from the reference).

kornia: only ``adjust_brightness`` (with ``clip_output=False``: additive shift, identical to the
reference) and ``hflip`` (a flip of the last dim) have the reference's semantics and are used.
The others differ and are written here:

* ``kornia.enhance.adjust_saturation`` works in HSV space and ``adjust_contrast`` multiplies by
  the factor without centring on the image mean; the reference blends towards the channel mean
  (saturation) and the image mean (contrast) in normalised space.
* ``kornia.geometry.transform.rotate``/``scale``/``translate`` build pixel-space matrices about
  the centre ((W - 1) / 2, (H - 1) / 2) and warp with ``align_corners=True`` (and bilinear
  sampling for translations); the reference samples a normalised-coordinate grid with
  ``align_corners=False``, which places samples half a pixel differently, and translates by
  whole pixels with a gather (no interpolation at all).
* kornia's random cutout (``RandomErasing``) draws box sizes and aspect ratios; the reference's
  square has a fixed side and a centre that may lie on the border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from methods.errors import MethodError

TOKENS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
"""Valid strategy tokens, joined with ``_`` in a strategy string."""

_OPS_OF_TOKEN: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}


@dataclass(frozen=True)
class DSAParams:
    """The reference ``ParamDiffAug`` ranges (aug_mode lives on :class:`DSA` as ``mode``)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass
class Draw:
    """One sampled augmentation: the ops to apply, in order, and their parameter tensors.

    ``params[op]`` maps parameter names to CPU tensors whose first dim is the number of
    parameter sets: ``n`` for a per-sample draw, 1 for a siamese draw (broadcast to every
    image of any batch). ``ops`` is empty for the identity strategy.
    """

    ops: tuple[str, ...]
    params: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    siamese: bool = False
    size: int = 0
    """Number of parameter sets (1 for siamese draws)."""


def parse_strategy(strategy: Optional[str]) -> tuple[str, ...]:
    """Strategy string -> tokens; ``None``, ``''``, ``'none'`` -> no tokens (identity).

    Raises :class:`MethodError` naming the unknown token and listing the valid ones."""
    if strategy is None or str(strategy).strip().lower() in {"", "none"}:
        return ()
    tokens = tuple(t for t in str(strategy).split("_") if t)
    bad = [t for t in tokens if t not in _OPS_OF_TOKEN]
    if bad or not tokens:
        raise MethodError(
            f"unknown DSA strategy token(s) {', '.join(repr(b) for b in bad) or repr(strategy)} in "
            f"'{strategy}'; valid tokens: {', '.join(TOKENS)} joined with '_' "
            "(e.g. 'color_crop_cutout_flip_scale_rotate'), or 'none'"
        )
    return tokens


class DSA:
    """Differentiable siamese augmentation with the reference's ops and ranges.

    ``aug(x, generator)`` is the non-siamese call used when training networks (DC/DSA inner
    loop, evaluation); :meth:`siamese` is the shared transform used for gradient matching.
    """

    def __init__(
        self, strategy: Optional[str], params: DSAParams = DSAParams(), mode: Literal["S", "M"] = "S"
    ) -> None:
        if mode not in ("S", "M"):
            raise MethodError(f"DSA mode must be 'S' (one op per call) or 'M' (all ops), got {mode!r}")
        self.strategy = strategy
        self.tokens = parse_strategy(strategy)
        self.params = params
        self.mode = mode

    @property
    def identity(self) -> bool:
        return not self.tokens

    def __repr__(self) -> str:
        return f"DSA(strategy={self.strategy!r}, mode={self.mode!r})"

    # ---------------------------------------------------------------------------------------
    # Sampling
    # ---------------------------------------------------------------------------------------
    def sample(
        self, generator: torch.Generator, n: int, shape: Sequence[int], siamese: bool
    ) -> Draw:
        """Draw the op(s) and their parameters for a batch of ``n`` images of ``shape``
        ((N, C, H, W) or (C, H, W); only H and W matter). ``siamese=True`` draws one parameter
        set shared by every image (``n`` is then irrelevant)."""
        if self.identity:
            return Draw(ops=(), siamese=siamese, size=1 if siamese else n)
        if self.mode == "S":
            k = int(torch.randint(0, len(self.tokens), (1,), generator=generator).item())
            tokens: tuple[str, ...] = (self.tokens[k],)
        else:
            tokens = self.tokens
        ops = tuple(op for t in tokens for op in _OPS_OF_TOKEN[t])
        h, w = int(shape[-2]), int(shape[-1])
        m = 1 if siamese else int(n)
        p = self.params
        params: dict[str, dict[str, Tensor]] = {}

        def u() -> Tensor:
            return torch.rand(m, generator=generator)

        for op in ops:
            if op == "scale":
                lo, hi = 1.0 / p.ratio_scale, p.ratio_scale
                params[op] = {"sx": u() * (hi - lo) + lo, "sy": u() * (hi - lo) + lo}
            elif op == "rotate":
                params[op] = {"angle": (u() - 0.5) * 2.0 * p.ratio_rotate / 180.0 * math.pi}
            elif op == "flip":
                params[op] = {"flip": u() < p.prob_flip}
            elif op == "brightness":
                params[op] = {"shift": (u() - 0.5) * p.brightness}
            elif op == "saturation":
                params[op] = {"factor": u() * p.saturation}
            elif op == "contrast":
                params[op] = {"factor": u() + p.contrast}
            elif op == "crop":
                sh, sw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
                params[op] = {
                    "tx": torch.randint(-sh, sh + 1, (m,), generator=generator),
                    "ty": torch.randint(-sw, sw + 1, (m,), generator=generator),
                }
            elif op == "cutout":
                ch, cw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
                params[op] = {
                    "ox": torch.randint(0, h + (1 - ch % 2), (m,), generator=generator),
                    "oy": torch.randint(0, w + (1 - cw % 2), (m,), generator=generator),
                }
        return Draw(ops=ops, params=params, siamese=siamese, size=m)

    # ---------------------------------------------------------------------------------------
    # Applying
    # ---------------------------------------------------------------------------------------
    def apply(self, x: Tensor, draw: Draw) -> Tensor:
        """Apply ``draw`` to ``x`` (N, C, H, W); differentiable with respect to ``x``."""
        if not draw.ops:
            return x
        if draw.size != 1 and draw.size != x.shape[0]:
            raise ValueError(
                f"a per-sample DSA draw for {draw.size} images cannot be applied to a batch of "
                f"{x.shape[0]}; sample a new draw (or a siamese one) for this batch"
            )
        for op in draw.ops:
            x = _APPLY[op](self, x, draw.params[op])
        return x.contiguous()

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Non-siamese augmentation of one minibatch: the op is drawn once for the call, the
        parameters per sample (the reference's ``DiffAugment(x, strategy, seed=-1)``)."""
        if self.identity:
            return x
        return self.apply(x, self.sample(generator, x.shape[0], x.shape, siamese=False))

    def siamese(self, tensors: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
        """Draw one op and one parameter set and apply it to every image of every tensor
        (the real and the synthetic class batch of gradient matching)."""
        if not tensors:
            return []
        if self.identity:
            return list(tensors)
        shapes = {tuple(t.shape[-2:]) for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"siamese augmentation needs equal image sizes, got {sorted(shapes)}")
        draw = self.sample(generator, 1, tensors[0].shape, siamese=True)
        return [self.apply(t, draw) for t in tensors]

    # ---------------------------------------------------------------------------------------
    # The ops (parameters: CPU tensors of length 1 or N; moved to x's device/dtype here)
    # ---------------------------------------------------------------------------------------
    @staticmethod
    def _vec(v: Tensor, x: Tensor) -> Tensor:
        """(m,) parameter -> (N,) on x's device and dtype (m == 1 broadcasts)."""
        v = v.to(device=x.device, dtype=x.dtype if v.is_floating_point() else v.dtype)
        return v.expand(x.shape[0]) if v.shape[0] == 1 else v

    def _affine(self, x: Tensor, theta: Tensor) -> Tensor:
        # affine_grid/grid_sample with the defaults the reference relies on: bilinear, zero
        # padding, align_corners=False (stated explicitly to silence PyTorch's warning).
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _scale(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        sx, sy = self._vec(p["sx"], x), self._vec(p["sy"], x)
        zero = torch.zeros_like(sx)
        theta = torch.stack(
            [torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1
        )
        return self._affine(x, theta)

    def _rotate(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        a = self._vec(p["angle"], x)
        cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return self._affine(x, theta)

    def _flip(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        f = p["flip"]
        if f.shape[0] == 1:  # siamese: one decision (a CPU bool, no device sync) for the batch
            return kornia.geometry.transform.hflip(x) if bool(f[0]) else x
        return torch.where(f.to(x.device).view(-1, 1, 1, 1), kornia.geometry.transform.hflip(x), x)

    def _brightness(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        # kornia's additive brightness without clipping == the reference's x + (u - 0.5) * 1.0
        return kornia.enhance.adjust_brightness(x, self._vec(p["shift"], x), clip_output=False)

    def _saturation(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        m = x.mean(dim=1, keepdim=True)
        return (x - m) * self._vec(p["factor"], x).view(-1, 1, 1, 1) + m

    def _contrast(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * self._vec(p["factor"], x).view(-1, 1, 1, 1) + m

    def _crop(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        # out[i, j] = x[i + tx, j + ty], 0 where that lies outside (the reference's one-pixel
        # zero pad + clamped gather). tx moves along H, ty along W, as in the reference.
        n, _, h, w = x.shape
        tx, ty = self._vec(p["tx"], x), self._vec(p["ty"], x)
        rows = torch.clamp(torch.arange(h, device=x.device)[None, :] + tx[:, None] + 1, 0, h + 1)
        cols = torch.clamp(torch.arange(w, device=x.device)[None, :] + ty[:, None] + 1, 0, w + 1)
        padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)
        b = torch.arange(n, device=x.device)[:, None, None]
        return padded[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _cutout(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        _, _, h, w = x.shape
        ch, cw = int(h * self.params.ratio_cutout + 0.5), int(w * self.params.ratio_cutout + 0.5)
        ox, oy = self._vec(p["ox"], x), self._vec(p["oy"], x)
        r = torch.arange(h, device=x.device)[None, :]
        c = torch.arange(w, device=x.device)[None, :]
        r0, c0 = (ox - ch // 2)[:, None], (oy - cw // 2)[:, None]
        in_r = (r >= r0) & (r < r0 + ch)
        in_c = (c >= c0) & (c < c0 + cw)
        mask = (~(in_r[:, :, None] & in_c[:, None, :])).to(x.dtype)
        return x * mask.unsqueeze(1)


_APPLY = {
    "scale": DSA._scale,
    "rotate": DSA._rotate,
    "flip": DSA._flip,
    "brightness": DSA._brightness,
    "saturation": DSA._saturation,
    "contrast": DSA._contrast,
    "crop": DSA._crop,
    "cutout": DSA._cutout,
}


def default_dsa_strategy(dataset: str, flip_preserves_label: Optional[bool] = None) -> str:
    """DSA's per-dataset default strategy: no flip for digit datasets (MNIST, SVHN and the
    bundled digits), where a mirrored digit is a different symbol (DSA readme). Data that
    declares ``flip_preserves_label`` (a tensor file's key, :attr:`ClassData.flip_preserves_label`)
    decides by that instead of by its name."""
    if flip_preserves_label is not None:
        return "color_crop_cutout_flip_scale_rotate" if flip_preserves_label else "color_crop_cutout_scale_rotate"
    if dataset.lower() in {"mnist", "svhn", "digits"}:
        return "color_crop_cutout_scale_rotate"
    return "color_crop_cutout_flip_scale_rotate"
