"""Training loops shared by the methods (inner loops) and the evaluation protocol.

Data are tensors already on the device: one epoch is a seeded permutation and plain tensor
indexing, never a DataLoader (the reference rebuilds a DataLoader per epoch; the README's
Performance section measures the difference).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Augment = Callable[[Tensor, torch.Generator], Tensor]
"""An augmentation applied to each training minibatch: ``aug(x, generator) -> x'``."""

LossFn = Callable[[Tensor, Tensor], Tensor]
"""A training loss ``loss(outputs, targets) -> scalar`` over one minibatch."""


def soft_cross_entropy(outputs: Tensor, target_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy against soft targets: ``mean_i -sum_c p_ic log q_ic`` with
    ``p = softmax(target_logits / T)`` and ``q = softmax(outputs / T)`` (batched)."""
    t = float(temperature)
    targets = F.softmax(target_logits.float() / t, dim=1)
    return -(targets * F.log_softmax(outputs.float() / t, dim=1)).sum(1).mean()


def kl_divergence(outputs: Tensor, target_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T**2 * KL(p || q)`` per image, averaged over the batch, with ``p = softmax(target /
    T)``, ``q = softmax(outputs / T)`` (Hinton et al. 2015, §2: the ``T**2`` keeps gradient
    magnitudes comparable across temperatures)."""
    t = float(temperature)
    log_p = F.log_softmax(target_logits.float() / t, dim=1)
    log_q = F.log_softmax(outputs.float() / t, dim=1)
    return (t * t) * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def make_loss(name: str, temperature: float = 1.0) -> Optional[LossFn]:
    """The loss named by an evaluation plan: None for ``'ce'`` (``train_epoch``'s hard-label
    cross-entropy), else the soft-label loss with ``temperature``."""
    if name == "ce":
        return None
    if name == "soft_ce":
        return lambda out, target: soft_cross_entropy(out, target, temperature)
    if name == "kl":
        return lambda out, target: kl_divergence(out, target, temperature)
    raise ValueError(f"unknown loss '{name}'; valid: ce, soft_ce, kl")


class Heartbeat:
    """Progress lines for job logs from inside long loops: ``beat(message)`` passes
    ``message()`` to ``say`` when ``every_s`` seconds have passed since the last line (or since
    the heartbeat was made), else does nothing. A job log then shows a line at least every
    ``every_s`` seconds of work even where one epoch or one network takes minutes."""

    def __init__(self, say: Callable[[str], None], every_s: float = 30.0) -> None:
        self.say, self.every_s = say, float(every_s)
        self.last = time.perf_counter()

    def beat(self, message: Callable[[], str]) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.say(message())


def train_epoch(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator,
    augment: Optional[Augment] = None,
    loss_fn: Optional[LossFn] = None,
    forward: Optional[Callable[[Tensor], Tensor]] = None,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> tuple[float, float]:
    """One shuffled epoch of cross-entropy training (the reference ``epoch('train', ...)``).

    Returns (mean loss, accuracy) over the epoch. The permutation and any augmentation draws
    come from ``generator`` (CPU), so the epoch is reproducible on every device. ``labels``
    are class ids for the default hard-label cross-entropy; with ``loss_fn`` they are whatever
    it takes (e.g. (N, classes) soft-label logits; accuracy then compares with their arg-max).
    ``forward`` replaces ``net(x)`` (a :func:`methods.compile.compiled` call of ``net``; the
    optimiser still steps ``net``'s parameters). ``on_step(done, total)`` is called after every
    minibatch with the images done so far (e.g. a :class:`Heartbeat` for long epochs).
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
        out = net(x) if forward is None else forward(x)
        loss = F.cross_entropy(out, y) if loss_fn is None else loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (out.detach().argmax(1) == (y if y.ndim == 1 else y.argmax(1))).sum()
        if on_step is not None:
            on_step(min(start + batch_size, n), n)
    return float(loss_sum) / n, float(correct) / n


@torch.no_grad()
def predict(net: nn.Module, images: Tensor, *, batch_size: int = 1024, train_mode: bool = False,
            forward: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Arg-max predictions without autograd (test passes, CAFE's probe); ``forward`` replaces
    ``net(x)`` (a compiled call of ``net``)."""
    was_training = net.training
    net.train(train_mode)
    fwd = net if forward is None else forward
    preds = [fwd(images[i : i + batch_size]).argmax(1) for i in range(0, images.shape[0], batch_size)]
    net.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=images.device)


def accuracy(net: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 1024,
             forward: Optional[Callable[[Tensor], Tensor]] = None) -> float:
    """Top-1 accuracy in [0, 1], eval mode, no autograd (``forward``: as :func:`predict`)."""
    if images.shape[0] == 0:
        return float("nan")
    return float((predict(net, images, batch_size=batch_size, forward=forward) == labels).float().mean())


def sgd(params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, params, lr: float, *, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``'sgd'`` (:func:`sgd`, with ``momentum``) or ``'adam'`` (default betas; ``momentum`` is
    SGD's and not used; ``weight_decay`` is Adam's L2 term)."""
    if name == "sgd":
        return sgd(params, lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")
