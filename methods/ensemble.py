"""Training N networks of one architecture at once: the vectorised form of "train 20 fresh
networks on the synthetic set" (the evaluation protocol, reference ``evaluate_synset``, §2.9).

:func:`train_ensemble` takes N networks that are already initialised from their own CPU
generators and trains them for a list of epochs with SGD (momentum, weight decay, optimiser
re-created where the schedule says so), exactly as :func:`methods.training.train_epoch` run
network by network would, drawing from each network's generator in the same order:

* per epoch, network i draws its permutation ``torch.randperm(n, generator=g_i)``;
* per minibatch, network i's augmentation (if any) draws from ``g_i``.

``mode='sequential'`` runs that plain loop (``train_epoch`` per network and epoch). ``mode=
'vectorized'`` stacks the parameters (``torch.func.stack_module_state``), computes every
network's minibatch gradient in one ``vmap(grad(functional_call))`` and applies the SGD update
to the stacked tensors (the same arithmetic as ``torch.optim.SGD`` with ``dampening=0``,
``nesterov=False``). Both give the same per-network results up to float reassociation inside
the vmapped kernels (tests: ``tests/test_ensemble.py``, ``rtol=1e-4, atol=1e-5`` on the
parameters after training; predictions equal).

Which is faster depends on the device (:func:`resolve_mode`, ``mode='auto'``):

* CPU: **sequential**. Measured on the 2-core CPU of this project (torch 2.14, one thread,
  machine shared, load ~6-10; ConvNet-128 on 3x32x32, 20 networks, 10 classes;
  ``tests/perf/test_perf_eval.py::test_ensemble_vectorized_vs_sequential``, interleaved
  rounds): IPC 1, 5+1 epochs: vectorised 21.8 s vs sequential 15.6 s (0.71x); IPC 10, 1+1
  epochs: 59.0 s vs 37.2 s (0.63x), with 8.5 GiB vs 0.24 GiB peak. The per-network
  minibatches already keep the cores busy and vmap's batched convolution-weight gradients run
  as slower grouped kernels on CPU.
* CUDA: **vectorized**. Minibatches of 10-500 images leave a GPU launch-bound; one kernel
  over 20 networks removes 20x the launches.

Networks with batch norm (running statistics are updated in place, which ``functional_call``
under ``vmap`` cannot do per network) or dropout (needs the global RNG) always train
sequentially: :func:`vectorizable` says which. So does any plan beyond the published
protocol's optimiser and loss: Adam (``optimizer='adam'``) or a soft-label ``loss_fn`` train
sequentially, whatever ``mode`` says (the vectorised path implements SGD on hard-label
cross-entropy only).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.errors import MethodError
from methods.training import LossFn, make_optimizer, train_epoch

Augment = Callable[[Tensor, torch.Generator], Tensor]
MODES = ("auto", "sequential", "vectorized")
Mode = Literal["auto", "sequential", "vectorized"]


def vectorizable(net: nn.Module) -> bool:
    """Whether ``net`` can be trained in the vectorised form (no batch norm, no dropout)."""
    return not any(
        isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)) for m in net.modules()
    )


def resolve_mode(mode: str, device: torch.device | str, net: Optional[nn.Module] = None) -> str:
    """``'sequential'`` or ``'vectorized'`` for ``mode`` on ``device``.

    ``auto``: vectorised on CUDA, sequential elsewhere (see the module docstring for the CPU
    measurement). Any mode falls back to sequential for a network :func:`vectorizable` rejects.
    """
    if mode not in MODES:
        raise MethodError(f"unknown vectorize mode '{mode}'; valid modes: {', '.join(MODES)}")
    if net is not None and not vectorizable(net):
        return "sequential"
    if mode == "auto":
        return "vectorized" if torch.device(device).type == "cuda" else "sequential"
    return mode


def autocast_context(device: torch.device | str, bf16: bool):
    """``torch.autocast`` to bfloat16 on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def train_ensemble(
    nets: Sequence[nn.Module],
    generators: Sequence[torch.Generator],
    images: Tensor,
    labels: Tensor,
    schedule: Sequence[tuple[float, bool]],
    *,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    augment: Optional[Augment] = None,
    mode: Mode = "auto",
    bf16: bool = False,
    max_images: int = 4096,
    optimizer: str = "sgd",
    loss_fn: Optional[LossFn] = None,
) -> str:
    """Train every network of ``nets`` in place on (``images``, ``labels``); return the mode used.

    ``schedule``: one ``(lr, new_optimizer)`` per epoch; ``new_optimizer`` re-creates the SGD
    state (momentum buffers reset), as the reference does at its lr drop. ``generators[i]``
    is network i's generator (its initialisation already drawn from it). ``bf16`` runs the
    forward passes under bfloat16 autocast. The vectorised path trains the networks in groups
    of at most ``max_images // batch`` networks (batch = min(batch_size, len(images))): vmap
    keeps every network's activations at once (20 ConvNet-128 at IPC 10 on 3x32x32 peaked at
    8.5 GiB in one group on the CPU); groups change nothing in the results. ``optimizer``
    (``'sgd'`` or ``'adam'``, :func:`methods.training.make_optimizer`) and ``loss_fn`` (None =
    hard-label cross-entropy; ``labels`` are then whatever it takes) other than the defaults
    train sequentially."""
    if len(nets) != len(generators):
        raise MethodError(f"train_ensemble got {len(nets)} networks but {len(generators)} generators")
    if not nets:
        return "sequential"
    resolved = resolve_mode(mode, images.device, nets[0])
    if resolved == "sequential" or len(nets) == 1 or optimizer != "sgd" or loss_fn is not None:
        _train_sequential(nets, generators, images, labels, schedule, momentum, weight_decay, batch_size, augment, bf16,
                          optimizer, loss_fn)
        return "sequential"
    per_group = max(1, int(max_images) // max(1, min(batch_size, images.shape[0])))
    for start in range(0, len(nets), per_group):
        group = slice(start, start + per_group)
        _train_vectorized(nets[group], generators[group], images, labels, schedule, momentum, weight_decay,
                          batch_size, augment, bf16)
    return "vectorized"


def _train_sequential(nets, generators, images, labels, schedule, momentum, weight_decay, batch_size, augment, bf16,
                      optimizer_name="sgd", loss_fn=None) -> None:
    for net, g in zip(nets, generators):
        optimizer = None
        for lr, new in schedule:
            if new or optimizer is None:
                optimizer = make_optimizer(optimizer_name, net.parameters(), lr, momentum=momentum,
                                           weight_decay=weight_decay)
            else:  # a schedule that changes lr without a new optimiser (cosine)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            with autocast_context(images.device, bf16):
                train_epoch(net, images, labels, optimizer, batch_size=batch_size, generator=g, augment=augment,
                            loss_fn=loss_fn)


def _train_vectorized(nets, generators, images, labels, schedule, momentum, weight_decay, batch_size, augment, bf16) -> None:
    from torch.func import functional_call, grad, stack_module_state, vmap

    for net in nets:
        net.train()
    params, buffers = stack_module_state(list(nets))
    params = {k: v.detach() for k, v in params.items()}
    trainable = [k for k, p in nets[0].named_parameters() if p.requires_grad]
    base = copy.deepcopy(nets[0])
    device = images.device
    n = images.shape[0]

    def loss_fn(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        with autocast_context(device, bf16):
            out = functional_call(base, (p, b), (x,))
        return F.cross_entropy(out.float(), y)

    grads_of = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0), randomness="error")
    bufs: dict[str, Optional[Tensor]] = {}
    for lr, new in schedule:
        if new:
            bufs = {k: None for k in trainable}
        perms = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        for start in range(0, n, batch_size):
            idx = perms[:, start : start + batch_size]
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = torch.stack([augment(x[i], g) for i, g in enumerate(generators)])
            gs = grads_of(params, buffers, x, y)
            with torch.no_grad():
                for k in trainable:
                    d_p = gs[k]
                    p = params[k]
                    if weight_decay:
                        d_p = d_p.add(p, alpha=weight_decay)
                    if momentum:
                        buf = bufs.get(k)
                        if buf is None:
                            buf = torch.clone(d_p).detach()
                        else:
                            buf.mul_(momentum).add_(d_p)
                        bufs[k] = buf
                        d_p = buf
                    p.add_(d_p, alpha=-lr)
    with torch.no_grad():
        for i, net in enumerate(nets):
            for k, p in net.named_parameters():
                p.copy_(params[k][i])
