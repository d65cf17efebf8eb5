"""Plain reference-structured oracles for DC (gradient matching), used by the tests and by the
perf benchmarks as the baseline the fast paths are compared against.

Written independently of ``methods/dc.py``: plain Python loops over classes and parameter
tensors, ``torch.autograd.grad``, and the distances as ``match_loss``/``distance_wb`` of
``VICO-UoE/DatasetCondensation:utils.py`` compute them (``docs/reference.md`` §5.1;
``layerwise`` is the DC paper's per-output-node cosine distance).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dc_oracle_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], distance: str) -> Tensor:
    """The reference's ``match_loss`` for one class (``layerwise`` = the reference's ``ours``)."""
    if distance == "layerwise":
        dis = torch.tensor(0.0, device=gw_syn[0].device)
        for gs, gr in zip(gw_syn, gw_real):
            shape = gs.shape
            if len(shape) == 1:
                continue  # biases and norm parameters contribute 0
            if len(shape) == 4:  # conv: (out, in * h * w)
                gs = gs.reshape(shape[0], shape[1] * shape[2] * shape[3])
                gr = gr.reshape(shape[0], shape[1] * shape[2] * shape[3])
            elif len(shape) == 3:  # layernorm: (C, h * w)
                gs = gs.reshape(shape[0], shape[1] * shape[2])
                gr = gr.reshape(shape[0], shape[1] * shape[2])
            # 2-D linear weights are used as they are
            dots = torch.sum(gs * gr, dim=-1)
            norms = torch.norm(gs, dim=-1) * torch.norm(gr, dim=-1)
            dis = dis + torch.sum(1 - dots / (norms + 0.000001))
        return dis
    flat_syn = torch.cat([g.reshape(-1) for g in gw_syn], dim=0)
    flat_real = torch.cat([g.reshape(-1) for g in gw_real], dim=0)
    if distance == "mse":
        return torch.sum((flat_syn - flat_real) ** 2)
    if distance == "cos":
        return 1 - torch.sum(flat_real * flat_syn, dim=-1) / (
            torch.norm(flat_real, dim=-1) * torch.norm(flat_syn, dim=-1) + 0.000001
        )
    raise ValueError(f"unknown distance {distance}")


def dc_oracle_loss(
    net: nn.Module,
    real_by_class: Sequence[Tensor],
    syn_by_class: Sequence[Tensor],
    labels: Sequence[int],
    distance: str,
) -> Tensor:
    """The reference's per-class matching loss of one image step.

    ``real_by_class[i]`` / ``syn_by_class[i]`` are the real and synthetic batches of class
    ``labels[i]`` (already augmented if DSA is on). Real gradients are detached, synthetic ones
    keep their graph, so the returned loss is differentiable with respect to the synthetic
    images."""
    params = list(net.parameters())
    loss = torch.tensor(0.0, device=params[0].device)
    for img_real, img_syn, c in zip(real_by_class, syn_by_class, labels):
        lab_real = torch.ones((img_real.shape[0],), dtype=torch.long, device=img_real.device) * int(c)
        loss_real = F.cross_entropy(net(img_real), lab_real)
        gw_real = torch.autograd.grad(loss_real, params)
        gw_real = [g.detach().clone() for g in gw_real]

        lab_syn = torch.ones((img_syn.shape[0],), dtype=torch.long, device=img_syn.device) * int(c)
        loss_syn = F.cross_entropy(net(img_syn), lab_syn)
        gw_syn = torch.autograd.grad(loss_syn, params, create_graph=True)

        loss = loss + dc_oracle_distance(gw_syn, gw_real, distance)
    return loss
