"""DSA (methods/augment.py): reference parameter ranges, op semantics, gradients, siamese mode."""

from __future__ import annotations

import math

import pytest
import torch

from methods.augment import DSA, TOKENS, Draw, DSAParams, parse_strategy
from methods.errors import MethodError

N_DRAWS = 20000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw_params(token: str, size: int = 32, n: int = N_DRAWS) -> dict:
    d = DSA(token).sample(gen(), n, (n, 3, size, size), siamese=False)
    return d.params


# ---------------------------------------------------------------------------------------------
# Parameter ranges (sampled statistics against the reference's ranges)
# ---------------------------------------------------------------------------------------------


def test_scale_range_is_uniform_between_1_over_1_2_and_1_2():
    p = draw_params("scale")["scale"]
    lo, hi = 1 / 1.2, 1.2
    for key in ("sx", "sy"):
        v = p[key]
        assert v.min() >= lo and v.max() <= hi
        assert v.min() < lo + 0.01 and v.max() > hi - 0.01
        assert abs(float(v.mean()) - (lo + hi) / 2) < 0.01
        assert abs(float(v.std()) - (hi - lo) / math.sqrt(12)) < 0.005
    # independent draws for the two axes
    assert abs(float(torch.corrcoef(torch.stack([p["sx"], p["sy"]]))[0, 1])) < 0.05


def test_rotate_range_is_plus_minus_15_degrees():
    a = draw_params("rotate")["rotate"]["angle"] * 180 / math.pi
    assert a.min() >= -15 and a.max() <= 15
    assert a.min() < -14.9 and a.max() > 14.9
    assert abs(float(a.mean())) < 0.2
    assert abs(float(a.std()) - 30 / math.sqrt(12)) < 0.15


def test_flip_probability_is_one_half():
    f = draw_params("flip")["flip"]["flip"]
    assert f.dtype == torch.bool
    assert abs(float(f.float().mean()) - 0.5) < 0.015


def test_color_ranges_brightness_saturation_contrast():
    p = draw_params("color")
    b, s, c = p["brightness"]["shift"], p["saturation"]["factor"], p["contrast"]["factor"]
    for v, lo, hi in ((b, -0.5, 0.5), (s, 0.0, 2.0), (c, 0.5, 1.5)):
        assert v.min() >= lo and v.max() <= hi
        assert v.min() < lo + 0.01 and v.max() > hi - 0.01
        assert abs(float(v.mean()) - (lo + hi) / 2) < 0.02


@pytest.mark.parametrize("size,shift", [(32, 4), (28, 4), (64, 8), (16, 2)])
def test_crop_shift_is_int_h_times_0_125_plus_0_5(size, shift):
    p = draw_params("crop", size=size)["crop"]
    for key in ("tx", "ty"):
        values = set(p[key].tolist())
        assert values == set(range(-shift, shift + 1))  # every integer in [-shift, shift]


@pytest.mark.parametrize("size", [32, 28, 16, 9])
def test_cutout_centre_range(size):
    # side = int(H * 0.5 + 0.5): 16 for 32 (even -> [0, 32]), 14 for 28, 5 for 9 (odd -> [0, 8])
    side = int(size * 0.5 + 0.5)
    top = size if side % 2 == 0 else size - 1
    p = draw_params("cutout", size=size)["cutout"]
    for key in ("ox", "oy"):
        assert set(p[key].tolist()) == set(range(0, top + 1))


def test_mode_s_draws_one_token_uniformly_and_mode_m_applies_all():
    aug = DSA("color_crop_cutout_flip_scale_rotate")
    g = gen()
    counts: dict[tuple, int] = {}
    for _ in range(3000):
        ops = aug.sample(g, 2, (2, 3, 8, 8), siamese=False).ops
        counts[ops] = counts.get(ops, 0) + 1
    assert set(counts) == {("brightness", "saturation", "contrast"), ("crop",), ("cutout",), ("flip",), ("scale",), ("rotate",)}
    assert all(abs(v / 3000 - 1 / 6) < 0.03 for v in counts.values())
    ops = DSA("color_crop_cutout_flip_scale_rotate", mode="M").sample(g, 2, (2, 3, 8, 8), False).ops
    assert ops == ("brightness", "saturation", "contrast", "crop", "cutout", "flip", "scale", "rotate")


def test_defaults_equal_reference_paramdiffaug():
    p = DSAParams()
    assert (p.prob_flip, p.ratio_scale, p.ratio_rotate, p.ratio_crop_pad, p.ratio_cutout) == (0.5, 1.2, 15.0, 0.125, 0.5)
    assert (p.brightness, p.saturation, p.contrast) == (1.0, 2.0, 0.5)


# ---------------------------------------------------------------------------------------------
# Op semantics on hand-made draws
# ---------------------------------------------------------------------------------------------


def one(op: str, **params) -> Draw:
    return Draw(ops=(op,), params={op: {k: torch.as_tensor(v) for k, v in params.items()}}, siamese=True, size=1)


def test_crop_is_translation_with_zero_fill():
    x = torch.randn(1, 2, 8, 8)
    y = DSA("crop").apply(x, one("crop", tx=[2], ty=[-3]))
    expected = torch.zeros_like(x)
    # out[i, j] = x[i + 2, j - 3] where inside the image
    expected[:, :, 0:6, 3:8] = x[:, :, 2:8, 0:5]
    assert torch.equal(y, expected)


def test_cutout_zeroes_the_square_around_the_offset_clipped():
    x = torch.ones(1, 1, 32, 32)
    y = DSA("cutout").apply(x, one("cutout", ox=[3], oy=[20]))
    zero = y[0, 0] == 0
    assert zero.sum() == 11 * 16  # rows [-5, 11) clipped to [0, 11), cols [12, 28)
    assert zero[0:11, 12:28].all()
    y = DSA("cutout").apply(x, one("cutout", ox=[32], oy=[32]))
    assert (y[0, 0] == 0).sum() == 8 * 8 and (y[0, 0, 24:, 24:] == 0).all()


def test_flip_scale_rotate_conventions():
    x = torch.randn(2, 3, 8, 8)
    aug = DSA("flip_scale_rotate")
    assert torch.equal(aug.apply(x, one("flip", flip=[True])), x.flip(3))
    assert torch.equal(aug.apply(x, one("flip", flip=[False])), x)
    # identity scale reproduces the image (align_corners=False samples pixel centres)
    torch.testing.assert_close(aug.apply(x, one("scale", sx=[1.0], sy=[1.0])), x, atol=1e-6, rtol=0)
    # theta [[cos, -sin], [sin, cos]] at +90 degrees is torch.rot90(k=1) on (H, W)
    torch.testing.assert_close(aug.apply(x, one("rotate", angle=[math.pi / 2])), torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0)
    # zooming out (s > 1 samples outside) leaves zero-padded borders
    y = aug.apply(torch.ones(1, 1, 16, 16), one("scale", sx=[1.2], sy=[1.2]))
    assert y[0, 0, 0, 0] < 1 and torch.allclose(y[0, 0, 8, 8], torch.tensor(1.0))


def test_color_formulas():
    x = torch.randn(2, 3, 5, 5)
    aug = DSA("color")
    d = Draw(ops=("brightness", "saturation", "contrast"), params={
        "brightness": {"shift": torch.tensor([0.3, -0.2])},
        "saturation": {"factor": torch.tensor([1.5, 0.2])},
        "contrast": {"factor": torch.tensor([0.7, 1.4])},
    }, size=2)
    b = x + torch.tensor([0.3, -0.2]).view(2, 1, 1, 1)
    m = b.mean(1, keepdim=True)
    s = (b - m) * torch.tensor([1.5, 0.2]).view(2, 1, 1, 1) + m
    m = s.mean((1, 2, 3), keepdim=True)
    c = (s - m) * torch.tensor([0.7, 1.4]).view(2, 1, 1, 1) + m
    torch.testing.assert_close(aug.apply(x, d), c)
    # no clipping to [0, 1]: DSA acts on normalised tensors
    assert aug.apply(x, d).abs().max() > 1


# ---------------------------------------------------------------------------------------------
# Gradients flow to the input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("siamese", [True, False])
def test_gradcheck_each_op(token, siamese):
    aug = DSA(token)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    g = gen(3)
    draw = aug.sample(g, 3, x.shape, siamese=siamese)
    if token == "flip":  # make sure the flipping branch is exercised
        draw.params["flip"]["flip"][:] = True
    assert torch.autograd.gradcheck(lambda t: aug.apply(t, draw), (x,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Siamese versus per-sample
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["color", "crop", "cutout", "scale", "rotate"])
def test_siamese_applies_one_transform_to_every_image_of_both_batches(token):
    aug = DSA(token)
    base = torch.randn(1, 3, 16, 16)
    real = base.expand(5, -1, -1, -1).clone()
    syn = base.expand(2, -1, -1, -1).clone().requires_grad_(True)
    for seed in range(5):
        r, s = aug.siamese([real, syn], gen(seed))
        assert torch.allclose(r, r[:1].expand_as(r))
        torch.testing.assert_close(s.detach(), r[:2], atol=1e-6, rtol=0)
        assert not torch.equal(r[0], base[0])  # something happened
        s.sum().backward()
        assert syn.grad is not None


@pytest.mark.parametrize("token", ["color", "crop", "cutout", "scale", "rotate"])
def test_non_siamese_draws_per_sample_parameters(token):
    aug = DSA(token)
    x = torch.randn(1, 3, 16, 16).expand(16, -1, -1, -1).clone()
    y = aug(x, gen(1))
    distinct = {tuple(v.flatten().tolist()) for v in y.round(decimals=5)}
    assert len(distinct) > 4


def test_flip_siamese_same_decision_non_siamese_mixed():
    aug = DSA("flip")
    x = torch.randn(1, 1, 4, 4).expand(64, -1, -1, -1).clone()
    flipped = aug(x, gen(0)).eq(x.flip(3)).flatten(1).all(1)
    assert 0 < int(flipped.sum()) < 64
    for seed in range(6):
        r, = aug.siamese([x], gen(seed))
        same = r.eq(x.flip(3)).flatten(1).all(1)
        assert same.all() or not same.any()


def test_same_generator_state_same_output_and_global_rng_untouched():
    aug = DSA("color_crop_cutout_flip_scale_rotate")
    x = torch.randn(8, 3, 16, 16)
    before = torch.get_rng_state()
    a = [aug(x, g) for g in [gen(7)] for _ in range(5)]
    b = [aug(x, g) for g in [gen(7)] for _ in range(5)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------
# Strategy parsing and errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [None, "", "none", "None"])
def test_identity_strategies(strategy):
    aug = DSA(strategy)
    x = torch.randn(2, 1, 4, 4)
    g = gen()
    state = g.get_state()
    assert aug(x, g) is x
    assert aug.siamese([x, x], g) == [x, x]
    assert torch.equal(g.get_state(), state)  # identity consumes no draws


def test_unknown_token_lists_valid_tokens():
    with pytest.raises(MethodError) as err:
        DSA("color_blur")
    assert "'blur'" in str(err.value)
    for t in TOKENS:
        assert t in str(err.value)
    with pytest.raises(MethodError):
        DSA("color", mode="X")  # type: ignore[arg-type]
    assert parse_strategy("crop__flip") == ("crop", "flip")


def test_per_sample_draw_on_wrong_batch_size_is_a_clear_error():
    aug = DSA("scale")
    d = aug.sample(gen(), 4, (4, 1, 8, 8), siamese=False)
    with pytest.raises(ValueError, match="cannot be applied to a batch of 3"):
        aug.apply(torch.randn(3, 1, 8, 8), d)
