"""Herding coreset: per class, greedily keep the running mean of the chosen features closest to
the class mean (Welling, ICML 2009; the iCaRL-style herding of the DC/DSA/DM/CAFE baselines).

Implements the DC author's pseudocode (docs/reference.md §8, issue #15 of
``VICO-UoE/DatasetCondensation``), per class on feature vectors F (n x d)::

    mu = mean(F)
    for i = 0 .. IPC-1:
        delta = (i + 1) * mu - sum(F[selected])
        pick the remaining k minimising ||delta - F_k||   (argmin)
        move k to selected

Deliberate differences from other implementations:

* ``PatrickZH/DeepCore`` (``deepcore/methods/herding.py``) takes the **argmax** of that
  distance, the opposite of the author's pseudocode; we follow the pseudocode (argmin), which is
  the one that makes the running mean track the class mean.
* Features are the embedding of a ConvNet trained on the full training set (see
  :mod:`methods.coreset_features` for the network, its budget and its cache); DeepCore uses a
  ResNet18 trained for 200 epochs. ``feature_space='pixels'`` selects in pixel space.
* Ties are broken towards the lowest index within the class (``torch.argmin``'s first
  occurrence), and distances are computed in float64, so the choice is deterministic.

The only randomness is the feature network's initialisation and epoch order, both drawn from
the run seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from methods.coreset_features import CoresetFeatureConfig, GreedyCoresetMethod, check_selection_size
from methods.registry import register


def herding_select(features: Tensor, k: int) -> Tensor:
    """Indices (LongTensor, selection order) of ``k`` rows of ``features`` (n x d) chosen by
    herding with argmin, as in the DC author's pseudocode.

    Each step is one matrix-vector product over all candidates: with ``delta`` the target,
    ``||delta - F_j||^2 = ||F_j||^2 - 2 <F_j, delta> + const``; chosen rows are masked with +inf.
    """
    check_selection_size(features, k)
    F = features
    mu = F.mean(0)
    sq_norms = F.square().sum(1)
    taken = torch.zeros(F.shape[0], dtype=torch.bool, device=F.device)
    running = torch.zeros_like(mu)
    chosen = torch.empty(k, dtype=torch.long, device=F.device)
    inf = torch.tensor(float("inf"), dtype=F.dtype, device=F.device)
    for i in range(k):
        delta = (i + 1) * mu - running
        dist = torch.where(taken, inf, sq_norms - 2.0 * (F @ delta))
        j = torch.argmin(dist)
        chosen[i] = j
        taken[j] = True
        running = running + F[j]
    return chosen


@dataclass(frozen=True)
class HerdingConfig(CoresetFeatureConfig):
    """Herding has no settings beyond its feature space (see :class:`CoresetFeatureConfig`:
    embedding of the reference ConvNet trained 20 epochs on the full training set)."""


@register("herding", display="Herding", family="coreset", order=20, description="Herding coreset: greedy running-mean matching per class (argmin)")
class Herding(GreedyCoresetMethod):
    """Herding coreset (DC author's pseudocode, argmin), per class in a learned feature space."""

    config_class = HerdingConfig

    def select(self, features: Tensor, k: int) -> Tensor:
        return herding_select(features, k)
