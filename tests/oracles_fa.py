"""Plain per-class, per-layer oracles for the feature-alignment losses (CAFE, DM).

Written straight from the losses as ``methods/cafe.py`` and ``methods/dm.py`` state them (the
CAFE paper's layer-wise alignment and discrimination loss, DM's class-mean embedding distance; ``docs/reference.md`` §7.3 and §6), one
class and one layer at a time, with no batching tricks, so the methods' batched losses can be
checked against them. ``real_with_autograd=True`` keeps the real branch's graph like the
released CAFE code (and ``include_real_ce`` adds its real-image cross-entropy term, which has no
effect on the image gradient): that is the reference-structured cost the perf benchmarks compare
against.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _layer_index(net: nn.Module, key: Union[str, int]) -> int:
    names = list(net.feature_names)
    return names.index(key) if isinstance(key, str) else key % len(names)


def cafe_oracle_loss(
    net: nn.Module,
    real_by_class: Sequence[Tensor],
    syn_by_class: Sequence[Tensor],
    layer_weights: Union[Mapping[Union[str, int], float], Sequence[tuple[Union[str, int], float]]],
    embedding_weight: float = 1.0,
    discrimination_weight: float = 0.01,
    real_with_autograd: bool = False,
    include_real_ce: bool = False,
) -> Tensor:
    """CAFE's image loss, class by class and layer by layer.

    ``layer_weights``: (name or index of ``net.feature_names``, weight) pairs or a mapping.
    Sum over layers l, classes c of w_l * ||mean f_l(R_c) - mean f_l(S_c)||^2, plus
    ``embedding_weight`` times the same on the flattened final map, plus
    ``discrimination_weight`` * summed CE of logits <f5(x_i), mu^S_c> over all real images.
    """
    pairs = list(layer_weights.items()) if isinstance(layer_weights, Mapping) else list(layer_weights)
    grad_ctx = contextlib.nullcontext if real_with_autograd else torch.no_grad
    num_classes = len(real_by_class)
    real_feats, syn_feats = [], []
    for c in range(num_classes):
        with grad_ctx():
            real_feats.append(net.feature_maps(real_by_class[c]))
        syn_feats.append(net.feature_maps(syn_by_class[c]))
    loss = real_by_class[0].new_zeros(())
    for key, weight in pairs:
        i = _layer_index(net, key)
        for c in range(num_classes):
            diff = real_feats[c][i].mean(0) - syn_feats[c][i].mean(0)
            loss = loss + weight * (diff * diff).sum()
    centres = []
    for c in range(num_classes):
        real_embed = real_feats[c][-1].flatten(1)
        syn_centre = syn_feats[c][-1].flatten(1).mean(0)
        centres.append(syn_centre)
        diff = real_embed.mean(0) - syn_centre
        loss = loss + embedding_weight * (diff * diff).sum()
    mu = torch.stack(centres)
    for c in range(num_classes):
        real_embed = real_feats[c][-1].flatten(1)
        logits = real_embed @ mu.t()
        target = torch.full((real_embed.shape[0],), c, dtype=torch.long, device=real_embed.device)
        loss = loss + discrimination_weight * F.cross_entropy(logits, target, reduction="sum")
        if include_real_ce:
            with grad_ctx():
                out = net.classifier(real_embed)
            loss = loss + F.cross_entropy(out, target) / num_classes
    return loss


def dm_oracle_loss(
    net: nn.Module, real_by_class: Sequence[Tensor], syn_by_class: Sequence[Tensor], mix_classes: bool = False
) -> Tensor:
    """DM's loss: sum over classes of ||mean embed(R_c) - mean embed(S_c)||^2 (real detached).

    ``mix_classes=True`` forwards all classes in one real and one synthetic pass (the
    reference's batch-norm branch); otherwise class by class (its plain branch)."""
    num_classes = len(real_by_class)
    if mix_classes:
        with torch.no_grad():
            real_all = net.embed(torch.cat(list(real_by_class)))
        syn_all = net.embed(torch.cat(list(syn_by_class)))
        real_embeds = list(torch.split(real_all, [r.shape[0] for r in real_by_class]))
        syn_embeds = list(torch.split(syn_all, [s.shape[0] for s in syn_by_class]))
    else:
        real_embeds, syn_embeds = [], []
        for c in range(num_classes):
            with torch.no_grad():
                real_embeds.append(net.embed(real_by_class[c]))
            syn_embeds.append(net.embed(syn_by_class[c]))
    loss = real_by_class[0].new_zeros(())
    for c in range(num_classes):
        diff = real_embeds[c].mean(0) - syn_embeds[c].mean(0)
        loss = loss + (diff * diff).sum()
    return loss
