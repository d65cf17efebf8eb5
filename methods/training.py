"""Training loops shared by the methods (inner loops) and the evaluation protocol.

Data are tensors already on the device: one epoch is a seeded permutation and plain tensor
indexing, never a DataLoader (the reference rebuilds a DataLoader per epoch; see DESIGN.md,
"Speed").
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Augment = Callable[[Tensor, torch.Generator], Tensor]
"""An augmentation applied to each training minibatch: ``aug(x, generator) -> x'``."""


def train_epoch(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: Optional[Augment] = None,
) -> tuple[float, float]:
    """One shuffled epoch of cross-entropy training (the reference ``epoch('train', ...)``).

    Returns (mean loss, accuracy) over the epoch. The permutation and any augmentation draws
    come from ``generator`` (CPU), so the epoch is reproducible on every device.
    """
    net.train()
    n = images.shape[0]
    perm = torch.randperm(n, generator=generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]
        x, y = images[idx], labels[idx]
        if augment is not None:
            x = augment(x, generator)
        out = net(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (out.detach().argmax(1) == y).sum()
    return float(loss_sum) / n, float(correct) / n


@torch.no_grad()
def predict(net: nn.Module, images: Tensor, *, batch_size: int = 1024, train_mode: bool = False) -> Tensor:
    """Arg-max predictions without autograd (test passes, CAFE's probe)."""
    was_training = net.training
    net.train(train_mode)
    preds = [net(images[i : i + batch_size]).argmax(1) for i in range(0, images.shape[0], batch_size)]
    net.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=images.device)


def accuracy(net: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1], eval mode, no autograd."""
    if images.shape[0] == 0:
        return float("nan")
    return float((predict(net, images, batch_size=batch_size) == labels).float().mean())


def sgd(params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
