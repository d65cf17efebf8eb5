"""Random coreset: ``ipc`` real training images per class, drawn uniformly without replacement.

Reference: the ``random`` baseline of the DC/DSA/DM papers (Zhao et al., ICLR 2021, §4;
``get_images(c, ipc)`` per class, docs/reference.md §8). The draw comes from
``make_generator(seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from methods.base import Method
from methods.config import MethodConfig
from methods.context import CostMeter, RunContext
from methods.realdata import ClassData
from methods.registry import register
from methods.rng import make_generator
from methods.synset import SyntheticSet


@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    """Random selection has no hyper-parameters."""


@register("random", display="Random", family="coreset", order=10, description="Random coreset: IPC real images per class, seeded")
class RandomSelection(Method):
    """IPC random real images per class."""

    config_class = RandomConfig
    learned = False

    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        real.validate_ipc(ipc)
        context = context or RunContext(device=real.device)
        meter = CostMeter(context.device)
        g = make_generator(seed)
        idx = torch.cat([real.sample_indices(c, ipc, g) for c in range(real.num_classes)])
        return self._selection(real, ipc, seed, idx, meter.figures(iterations=0))
