"""Plain transcriptions for trajectory matching (MTT), for float64 oracle tests.

The student is a linear softmax classifier ``logits = x W^T + b`` with its parameters in one
flat vector ``[W.flatten(), b]``, and its training gradient is written out by hand (no
autograd inside the unroll):

    p = softmax(logits),  q = one_hot(y) or softmax(label_logits)
    dCE/dlogits = (p - q) / B,  dW = dlogits^T x,  db = sum_rows dlogits

The unroll is ``theta_{i+1} = theta_i - lr * g_i`` over the given minibatches and the loss is
MTT's ``||theta_N - target||^2 / ||start - target||^2`` (Cazenavette et al., CVPR 2022, Eq. 2).
Autograd through these formulas gives the oracle's gradient with respect to the images, the
learning rate and soft labels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_forward(num_classes: int, dim: int):
    """``forward(flat, x)`` of the linear student (what the method under test calls)."""

    def forward(flat: Tensor, x: Tensor) -> Tensor:
        w = flat[: num_classes * dim].view(num_classes, dim)
        b = flat[num_classes * dim :]
        return x.flatten(1) @ w.T + b

    return forward


def linear_gradient(flat: Tensor, x: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The hand-written gradient of the mean cross-entropy of the linear student."""
    dim = x[0].numel()
    xf = x.flatten(1)
    w = flat[: num_classes * dim].view(num_classes, dim)
    b = flat[num_classes * dim :]
    logits = xf @ w.T + b
    p = torch.softmax(logits, dim=1)
    q = torch.softmax(labels, dim=1) if labels.is_floating_point() else F.one_hot(labels, num_classes).to(p.dtype)
    d = (p - q) / xf.shape[0]
    return torch.cat([(d.T @ xf).reshape(-1), d.sum(0)])


def mtt_oracle_loss(start: Tensor, target: Tensor, images: Tensor, labels: Tensor, lr: Tensor,
                    batches: Sequence[Tensor], num_classes: int) -> Tensor:
    """MTT's normalised parameter distance after unrolling the linear student over ``batches``
    (index tensors into ``images``/``labels``), by the plain formulas above."""
    theta = start
    for idx in batches:
        theta = theta - lr * linear_gradient(theta, images[idx], labels[idx], num_classes)
    return (theta - target).pow(2).sum() / (start - target).pow(2).sum()
