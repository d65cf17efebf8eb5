"""DM: Dataset Condensation with Distribution Matching (Zhao & Bilen, WACV 2023), reimplemented.

Reference: ``VICO-UoE/DatasetCondensation:main_DM.py``, described in §6 of ``docs/reference.md``. The outer loop (budget, generators
``init/net/data/aug``, checkpoints, progress, costs) is the shared one of :mod:`methods.loop`;
this file is DM's config, loss and one iteration.

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
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from methods.augment import DSA
from methods.compile import compile_delta, compile_stats, compiled, context_mode, resolve_compile
from methods.config import MethodConfig
from methods.errors import MethodError
from methods.loop import LoopRun, Synthesis
from methods.networks import get_network
from methods.registry import register
from methods.rng import derive_seed
from methods.synthesis import (
    LearnedMethod,
    augment_per_class,
    classes_per_chunk,
    dsa_for,
    image_loop_problems,
    init_synthetic,
    real_batch,
    sync,
)


@dataclass(frozen=True)
class DMConfig(MethodConfig):
    """DM's hyper-parameters; defaults are ``main_DM.py``'s."""

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
        problems = image_loop_problems(self)
        if self.batch_real < 1:
            problems.append(f"batch_real must be >= 1, got {self.batch_real}")
        if problems:
            raise MethodError("invalid DM config: " + "; ".join(problems))


Embed = Callable[[Tensor], Tensor]
"""``x -> net.embed(x)``, eager or a :func:`methods.compile.compiled` call."""


def dm_loss(net: nn.Module, real_x: Tensor, syn_x: Tensor, num_classes: int, *,
            real_embed: Optional[Embed] = None, syn_embed: Optional[Embed] = None) -> Tensor:
    """DM's loss for class-major batches ``real_x`` (C*N) and ``syn_x`` (C*M): the summed squared
    distance between class-mean embeddings; the real branch runs without autograd.
    ``real_embed``/``syn_embed`` replace ``net.embed`` in either branch (the compiled paths)."""
    real_embed = net.embed if real_embed is None else real_embed
    syn_embed = net.embed if syn_embed is None else syn_embed
    n = real_x.shape[0] // num_classes
    m = syn_x.shape[0] // num_classes
    if n * num_classes != real_x.shape[0] or m * num_classes != syn_x.shape[0]:
        raise ValueError("real and synthetic batches must hold the same count for every class")
    step = classes_per_chunk(net, num_classes, n)
    with torch.no_grad():
        chunks = [real_embed(real_x[c0 * n : min(num_classes, c0 + step) * n]) for c0 in range(0, num_classes, step)]
        real_means = torch.cat([e.reshape(-1, n, e.shape[1]).mean(1) for e in chunks])
    syn_means = syn_embed(syn_x).reshape(num_classes, m, -1).mean(1)
    return (real_means - syn_means).pow(2).sum()


@dataclass(kw_only=True)
class DMRun(Synthesis):
    """One DM run's resolved values: real images per class and the DSA module (or None)."""

    per_class: int
    dsa: Optional[DSA]
    compile: bool = False
    """Whether both embeddings run compiled (:mod:`methods.compile`; ``auto`` counts one call
    per iteration)."""
    compile_base: dict[str, float] = field(default_factory=compile_stats, repr=False)


@register("dm", display="DM", family="distribution_matching", order=200, description="DM: distribution matching of class-mean embeddings through random frozen ConvNets")
class DM(LearnedMethod):
    """Distribution Matching (Zhao & Bilen, WACV 2023); see the module docstring. One image
    step per iteration in the shared loop (:mod:`methods.loop`); four random streams."""

    config_class = DMConfig
    eval_epochs_no_aug = 1000  # main_DM.py's epoch_eval_train default
    generator_names = ("init", "net", "data", "aug")

    def start(self, run: LoopRun) -> DMRun:
        cfg: DMConfig = self.config
        real = run.real
        images, labels = init_synthetic(real, run.ipc, cfg.init, run.generators["init"], run.device)
        return DMRun(
            images=images, labels=labels,
            optimizer=torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum_img),
            counters=dict(image_steps=0, image_step_s=0.0, elapsed_s=0.0),
            per_class=min(cfg.batch_real, min(real.class_counts())),
            dsa=dsa_for(real, cfg.dsa, cfg.dsa_strategy),
            compile=resolve_compile(context_mode(run.context), run.device, steps=run.iterations),
        )

    def step(self, run: LoopRun, syn: DMRun, iteration: int) -> Tensor:
        cfg: DMConfig = self.config
        real, gens, device, images = run.real, run.generators, run.device, syn.images
        t0 = time.perf_counter()
        net = get_network(cfg.model, real.channel, real.num_classes, real.im_size,
                          seed=derive_seed(gens["net"]), device=device)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        rx = real_batch(real, syn.per_class, gens["data"], device)
        sx = images
        if syn.dsa is not None:
            rx, sx = augment_per_class(syn.dsa, rx, images, real.num_classes, gens["aug"])
        calls = {}
        if syn.compile:
            C, n = real.num_classes, syn.per_class
            calls = dict(real_embed=compiled(net, "embed", enabled=True, batch=classes_per_chunk(net, C, n) * n),
                         syn_embed=compiled(net, "embed", enabled=True, batch=C * run.ipc))
        loss = dm_loss(net, rx, sx, real.num_classes, **calls)
        (grad,) = torch.autograd.grad(loss, images)
        images.grad = grad
        syn.optimizer.step()
        images.grad = None
        sync(device)
        syn.counters["image_step_s"] += time.perf_counter() - t0
        syn.counters["image_steps"] += 1
        return loss.detach()

    def cost_figures(self, run: LoopRun, syn: DMRun) -> dict[str, float]:
        steps = syn.counters["image_steps"]
        out = {"image_steps": steps, "seconds_per_image_step": syn.counters["image_step_s"] / max(1, steps)}
        return dict(out, **compile_delta(syn.compile_base)) if syn.compile else out

    def extra(self, run: LoopRun, syn: DMRun) -> dict[str, Any]:
        return {"dsa_strategy": None if syn.dsa is None else syn.dsa.strategy}
