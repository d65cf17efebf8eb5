"""K-Center coreset: per class, greedy farthest-point selection (the k-center greedy of Sener &
Savarese, ICLR 2018), as in the DC author's pseudocode (docs/reference.md §8,
issue #21 of ``VICO-UoE/DatasetCondensation``)::

    first centre = the sample closest to the class mean
    repeat IPC-1 times: add the sample whose distance to its nearest centre is largest

Deliberate differences from other implementations:

* ``PatrickZH/DeepCore`` (``deepcore/methods/kcentergreedy.py``) starts from a **random** point;
  we follow the DC author's pseudocode and start from the sample nearest the class mean, which
  also makes the selection a deterministic function of the features.
* Features are the embedding of a ConvNet trained on the full training set (see
  :mod:`methods.coreset_features`); ``feature_space='pixels'`` selects in pixel space.
* Ties go to the lowest index within the class; distances are float64 squared Euclidean
  (same order as Euclidean). Already chosen samples are never chosen again, even when every
  remaining sample duplicates a centre.

The vector of distances to the nearest centre is maintained incrementally: each step costs one
matrix-vector product over the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from methods.coreset_features import CoresetFeatureConfig, GreedyCoresetMethod, check_selection_size
from methods.registry import register


def kcenter_select(features: Tensor, k: int) -> Tensor:
    """Indices (LongTensor, selection order) of ``k`` rows of ``features`` (n x d): the row
    nearest the mean, then greedy farthest points (max over rows of the min distance to the
    chosen centres)."""
    check_selection_size(features, k)
    F = features
    sq_norms = F.square().sum(1)

    def sq_dist_to(v: Tensor) -> Tensor:
        return (sq_norms - 2.0 * (F @ v) + v.square().sum()).clamp_min(0.0)

    chosen = torch.empty(k, dtype=torch.long, device=F.device)
    j = torch.argmin(sq_dist_to(F.mean(0)))
    chosen[0] = j
    min_dist = sq_dist_to(F[j])
    taken = torch.zeros(F.shape[0], dtype=torch.bool, device=F.device)
    taken[j] = True
    minus_one = torch.tensor(-1.0, dtype=F.dtype, device=F.device)
    for i in range(1, k):
        j = torch.argmax(torch.where(taken, minus_one, min_dist))
        chosen[i] = j
        taken[j] = True
        min_dist = torch.minimum(min_dist, sq_dist_to(F[j]))
    return chosen


@dataclass(frozen=True)
class KCenterConfig(CoresetFeatureConfig):
    """K-Center has no settings beyond its feature space (see :class:`CoresetFeatureConfig`:
    embedding of the reference ConvNet trained 20 epochs on the full training set)."""


@register(
    "kcenter",
    display="K-Center",
    family="coreset",
    order=30,
    description="K-Center coreset: greedy farthest point per class, from the class-mean-nearest sample",
)
class KCenter(GreedyCoresetMethod):
    """K-Center greedy coreset (DC author's pseudocode), per class in a learned feature space."""

    config_class = KCenterConfig

    def select(self, features: Tensor, k: int) -> Tensor:
        return kcenter_select(features, k)
