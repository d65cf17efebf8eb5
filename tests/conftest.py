"""Shared fixtures: small seeded data so unit tests need no download."""

from __future__ import annotations

import os

import pytest
import torch

from methods.realdata import ClassData

# Two cores on CI: keep each test process on one intra-op thread unless told otherwise, so
# parallel workers do not oversubscribe.
torch.set_num_threads(int(os.environ.get("CONDBENCH_TEST_THREADS", "1")))


def make_classdata(
    num_classes: int = 10,
    per_class: int = 40,
    channel: int = 3,
    size: int = 32,
    seed: int = 0,
    name: str = "synthetic",
) -> ClassData:
    """Class-dependent Gaussian blobs: learnable, so accuracy tests have signal."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, channel, size, size, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = protos[labels] + 0.8 * torch.randn(labels.numel(), channel, size, size, generator=g)
    perm = torch.randperm(labels.numel(), generator=g)
    return ClassData(
        images=images[perm].float(),
        labels=labels[perm],
        num_classes=num_classes,
        mean=tuple([0.5] * channel),
        std=tuple([0.25] * channel),
        name=name,
    )


@pytest.fixture
def classdata_factory():
    return make_classdata
