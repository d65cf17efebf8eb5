"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023), reimplemented.

Reference: ``VICO-UoE/DatasetCondensation:main_DM.py`` (§2.10 of the reference notes).

Per iteration: a fresh, seeded, randomly initialised network with every parameter frozen
(``requires_grad=False``: no weight gradients are ever formed), its embedding ``net.embed``
(the input of the classifier), and the loss

    L = sum_c || mean_{x in R_c} embed(x) - mean_{s in S_c} embed(s) ||^2

with 256 real images per class (targets, computed without autograd) and one siamese DSA draw
per class shared by that class's real and synthetic batch. One SGD step on the images per
iteration (lr 1.0, momentum 0.5, no schedule); 20,000 iterations; images initialised from random
real images.

Batch norm: for a model with batch norm (e.g. ``ConvNetBN``) all classes are stacked into one
real and one synthetic forward pass, so the batch statistics mix classes as in the reference's
BN branch. Without batch norm the reference forwards class by class; here the synthetic images
of all classes go through one pass and the real ones in chunks of whole classes (identical
values: every layer acts per sample).

Deliberate differences: seeded CPU generators instead of the clock for the network, batches
and DSA draws; ``iterations`` iterations (the reference runs 0..20000, i.e. one more).
Evaluation: DM's code trains evaluation networks for 1000 epochs with DSA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from methods.augment import default_dsa_strategy
from methods.base import Method
from methods.config import MethodConfig
from methods.context import CostMeter, RunContext
from methods.errors import MethodError
from methods.realdata import ClassData
from methods.registry import register
from methods.rng import derive_seed, make_generator
from methods.synset import SyntheticSet
from methods.cafe import _check_dsa_strategy, augment_per_class, classes_per_chunk, init_synthetic, real_batch, sync
from methods.networks import canonical_network_name, get_network


@dataclass(frozen=True)
class DMConfig(MethodConfig):
    """DM's hyper-parameters; defaults are ``main_DM.py``'s (§2.1)."""

    iterations: int = 20000
    lr_img: float = 1.0
    momentum_img: float = 0.5
    batch_real: int = 256
    init: str = "real"
    model: str = "ConvNet"
    dsa: bool = True
    dsa_strategy: Optional[str] = None
    """None: the dataset's default (``default_dsa_strategy``: no flip for digits)."""

    def validate(self) -> None:
        problems = []
        if self.iterations < 1:
            problems.append(f"iterations must be >= 1, got {self.iterations}")
        if self.batch_real < 1:
            problems.append(f"batch_real must be >= 1, got {self.batch_real}")
        if not self.lr_img > 0:
            problems.append(f"lr_img must be > 0, got {self.lr_img}")
        if not 0 <= self.momentum_img < 1:
            problems.append(f"momentum_img must be in [0, 1), got {self.momentum_img}")
        if self.init not in ("noise", "real"):
            problems.append(f"init must be 'noise' or 'real', got {self.init!r}")
        try:
            canonical_network_name(self.model)
        except MethodError as exc:
            problems.append(str(exc))
        if problems:
            raise MethodError("invalid DM config: " + "; ".join(problems))
        if self.dsa and self.dsa_strategy is not None:
            _check_dsa_strategy(self.dsa_strategy)


def dm_loss(net: nn.Module, real_x: Tensor, syn_x: Tensor, num_classes: int) -> Tensor:
    """DM's loss for class-major batches ``real_x`` (C*N) and ``syn_x`` (C*M): the summed squared
    distance between class-mean embeddings; the real branch runs without autograd."""
    n = real_x.shape[0] // num_classes
    m = syn_x.shape[0] // num_classes
    if n * num_classes != real_x.shape[0] or m * num_classes != syn_x.shape[0]:
        raise ValueError("real and synthetic batches must hold the same count for every class")
    step = classes_per_chunk(net, num_classes, n)
    with torch.no_grad():
        chunks = [net.embed(real_x[c0 * n : min(num_classes, c0 + step) * n]) for c0 in range(0, num_classes, step)]
        real_means = torch.cat([e.reshape(-1, n, e.shape[1]).mean(1) for e in chunks])
    syn_means = net.embed(syn_x).reshape(num_classes, m, -1).mean(1)
    return (real_means - syn_means).pow(2).sum()


@register("dm", display="DM", family="distribution_matching", order=200, description="DM: distribution matching of class-mean embeddings through random frozen ConvNets")
class DM(Method):
    """Distribution Matching (Zhao & Bilen, WACV 2023); see the module docstring."""

    config_class = DMConfig
    eval_epochs_no_aug = 1000  # main_DM.py's epoch_eval_train default

    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        cfg: DMConfig = self.config
        real.validate_ipc(ipc)
        context = context or RunContext(device=real.device)
        device = context.device
        meter = CostMeter(device)
        total = int(context.iterations if context.iterations is not None else cfg.iterations)
        if total < 1:
            raise MethodError(f"DM needs at least 1 iteration, got {total}")
        C = real.num_classes
        per_class = min(cfg.batch_real, min(real.class_counts()))
        dsa = None
        strategy = None
        if cfg.dsa:
            from methods.augment import DSA

            strategy = cfg.dsa_strategy or default_dsa_strategy(real.name)
            dsa = DSA(strategy)

        root = make_generator(seed)
        gens = {k: make_generator(derive_seed(root)) for k in ("init", "net", "data", "aug")}
        images, labels = init_synthetic(real, ipc, cfg.init, gens["init"], device)
        opt_img = torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum_img)
        counters: dict[str, float] = dict(image_steps=0, image_step_s=0.0, elapsed_s=0.0)
        loop = self._loop_state(images, opt_img, gens, counters, seed=seed, ipc=ipc)
        start_it = loop.restore(context.resume_state())


        from tqdm.auto import tqdm

        log_every = max(1, total // 20)
        bar = tqdm(range(start_it, total), total=total, initial=start_it, desc=f"{self.name} ipc{ipc}", disable=not context.progress)
        for it in bar:
            t0 = time.perf_counter()
            net = get_network(cfg.model, real.channel, C, real.im_size, seed=derive_seed(gens["net"]), device=device)
            net.train()
            for p in net.parameters():
                p.requires_grad_(False)
            rx = real_batch(real, per_class, gens["data"], device)
            sx = images
            if dsa is not None:
                rx, sx = augment_per_class(dsa, rx, images, C, gens["aug"])
            loss = dm_loss(net, rx, sx, C)
            (grad,) = torch.autograd.grad(loss, images)
            images.grad = grad
            opt_img.step()
            images.grad = None
            sync(device)
            counters["image_step_s"] += time.perf_counter() - t0
            counters["image_steps"] += 1
            if it % log_every == 0 or it == total - 1:
                value = float(loss.detach())
                bar.set_postfix(loss=f"{value:.4g}")
                context.log(f"{self.name} it {it}/{total} loss {value:.4g}")
            context.iteration_done(it, loop.snapshot(it + 1))
        bar.close()

        cost = meter.figures(
            iterations=total,
            image_steps=counters["image_steps"],
            seconds_per_image_step=counters["image_step_s"] / max(1, counters["image_steps"]),
        )
        cost["wall_time_s"] += loop.elapsed_before
        return self._synset(real, ipc, seed, images.detach(), labels, cost, extra={"dsa_strategy": strategy})
