"""Seeded randomness: the only source of random draws in ``methods``.

Every random draw comes from a seeded :class:`torch.Generator` living on the CPU; drawn values
are moved to the compute device afterwards. The same seed therefore gives the same draws on any
device and never touches the global RNG (the reference code reseeds the global RNG from the
clock; this suite never does).
"""

from __future__ import annotations

import torch
from torch import Tensor


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the only source of randomness in ``methods``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def derive_seed(generator: torch.Generator) -> int:
    """Draw a 63-bit seed from ``generator`` (e.g. to seed a child generator)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def rng_state(generator: torch.Generator) -> Tensor:
    return generator.get_state().clone()
