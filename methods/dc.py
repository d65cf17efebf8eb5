"""DC: dataset condensation with gradient matching, and DSA as its ``dsa=True`` variant.

References: Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021)
and Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation" (ICML 2021);
official code ``VICO-UoE/DatasetCondensation:main.py`` / ``utils.py``, described in §5 of
``docs/reference.md``. The outer loop (budget,
the one generator ``data``, checkpoints, progress, costs) is the shared one of
:mod:`methods.loop`; this file is DC's config, gradient distances and one outer iteration.
Algorithm, per outer iteration ``it`` (DC paper, Algorithm 1):

1. a fresh ConvNet seeded from the run's generator, ``net.train()``, an SGD optimiser for it
   (``lr_net``, no momentum) created once for this iteration;
2. ``outer_loop`` times: if the net has BatchNorm, forward ``bn_real_per_class`` real images
   per class in train mode to set the running statistics, then freeze every BN module (eval)
   for the step; for every class c, the gradient of the cross-entropy on ``batch_real`` real
   images of c (no graph kept) and on c's synthetic images (graph kept), their distance summed
   over classes; one SGD step on the images (``lr_img``, ``momentum_img``; the image optimiser
   is created ONCE per run, as in the reference, so its momentum carries across iterations);
   then, except after the last image step, ``inner_loop`` epochs of training the net on the
   (detached) synthetic set, batch ``batch_train``, with non-siamese DSA when ``dsa``.
3. With ``dsa``: per class and per step one siamese draw is applied to that class's real and
   synthetic batch (:meth:`methods.augment.DSA.siamese`).

Deliberate differences from the reference (none changes the algorithm):

* Every draw (initial noise/real images, network seeds, real batches, DSA draws, inner-loop
  shuffles) comes from one seeded CPU generator; the reference seeds from the clock and
  reseeds the global RNG for DSA.
* ``iterations`` counts outer iterations run (the reference's ``range(Iteration + 1)`` runs
  1001 for ``Iteration=1000``).
* The per-class matching loss is back-propagated class by class (the gradient of the summed
  loss is the same) and only into the synthetic images (``backward(inputs=...)``), so the
  double-backward graph of one class is freed before the next is built and no parameter
  gradients are accumulated; the reference keeps all classes' graphs until one backward.
* (outer_loop, inner_loop) for IPCs outside the reference table (which exits): the entry of the
  largest tabulated IPC not above the requested one, i.e. IPC 2-9 -> (1, 1), 11-19 -> (10, 50),
  ..., IPC > 50 -> (50, 10) (the authors' choice for large IPCs, issue #2; issue #18).

Two computational paths give the same loss and image gradient (tested against a plain
per-class oracle in ``tests/oracles.py``):

* ``per_class``: the reference's loop, one real and one synthetic forward/backward per class.
  On a CPU the 256-image per-class batches already keep the cores busy, and this is the
  faster path there (README, Performance).
* ``batched``: ``torch.func.vmap`` of ``torch.func.grad`` over the classes: one vectorised
  computation of every class's real gradient and one of every class's synthetic gradient
  (kept differentiable), with the distance vectorised over classes. On CUDA the per-class
  kernels are small and launch-bound, so batching the classes is the better choice there;
  on the CPU the grouped weight-gradient kernels vmap produces are slower than the loop.
* ``auto`` (default) picks ``batched`` on CUDA devices and ``per_class`` everywhere else.

Networks with ``nn.LayerNorm`` (``ConvNetLN``) always use ``per_class``: with torch 2.14 the
double backward of ``layer_norm`` under ``vmap`` returns wrong image gradients (the loss is
exact; the gradients differ from the oracle's), so :func:`batched_supported` rejects them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.augment import DSA
from methods.compile import compile_delta, compile_stats, compiled, context_mode, resolve_compile
from methods.config import MethodConfig
from methods.errors import MethodError
from methods.loop import LoopRun, Synthesis
from methods.networks import get_network, has_batchnorm
from methods.realdata import ClassData
from methods.registry import register, register_variant
from methods.rng import derive_seed
from methods.synthesis import LearnedMethod, dsa_for, get_loops, image_loop_problems, init_synthetic, sync
from methods.training import sgd, train_epoch

DISTANCES = ("layerwise", "mse", "cos")
PATHS = ("auto", "per_class", "batched")
_EPS = 1e-6


def resolve_path(path: str, device: torch.device | str) -> str:
    """The matching path to use: ``auto`` -> ``batched`` on CUDA, ``per_class`` otherwise."""
    if path not in PATHS:
        raise MethodError(f"unknown DC path '{path}'; valid paths: {', '.join(PATHS)}")
    if path != "auto":
        return path
    return "batched" if torch.device(device).type == "cuda" else "per_class"


# --------------------------------------------------------------------------------------------
# Gradient distances (the reference's ``match_loss`` / ``distance_wb``, docs/reference.md §5.1)
# --------------------------------------------------------------------------------------------


def _rowwise_cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """Sum over the rows (last dim = features) of 1 - cos, with the reference's 1e-6 guard."""
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1) + _EPS
    return (1.0 - num / den).sum()


def match_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], distance: str) -> Tensor:
    """Distance between two lists of parameter gradients (one class).

    ``layerwise`` (the reference's ``ours``): per parameter tensor with >= 2 dims, rows are the
    output units (conv (out, in*h*w), LayerNorm (C, h*w), linear as is), summed 1 - cosine;
    1-D tensors (biases, norm scales/shifts) contribute 0. ``mse``: summed squared difference
    of all concatenated entries. ``cos``: 1 - cosine of the whole concatenated vectors.
    """
    if distance == "layerwise":
        total = gw_syn[0].new_zeros(())
        for gs, gr in zip(gw_syn, gw_real):
            if gs.dim() < 2:
                continue
            total = total + _rowwise_cosine_distance(gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1))
        return total
    vs = torch.cat([g.reshape(-1) for g in gw_syn])
    vr = torch.cat([g.reshape(-1) for g in gw_real])
    if distance == "mse":
        return ((vs - vr) ** 2).sum()
    if distance == "cos":
        return 1.0 - (vs * vr).sum() / (vs.norm() * vr.norm() + _EPS)
    raise MethodError(f"unknown gradient distance '{distance}'; valid: {', '.join(DISTANCES)}")


def batched_match_distance(gw_syn: Sequence[Tensor], gw_real: Sequence[Tensor], distance: str) -> Tensor:
    """:func:`match_distance` summed over classes, for gradients with a leading class dim."""
    if distance == "layerwise":
        total = gw_syn[0].new_zeros(())
        for gs, gr in zip(gw_syn, gw_real):
            if gs.dim() < 3:  # class dim + a 1-D parameter
                continue
            c, rows = gs.shape[0], gs.shape[1]
            total = total + _rowwise_cosine_distance(gs.reshape(c, rows, -1), gr.reshape(c, rows, -1))
        return total
    c = gw_syn[0].shape[0]
    vs = torch.cat([g.reshape(c, -1) for g in gw_syn], 1)
    vr = torch.cat([g.reshape(c, -1) for g in gw_real], 1)
    if distance == "mse":
        return ((vs - vr) ** 2).sum()
    if distance == "cos":
        return _rowwise_cosine_distance(vs, vr)
    raise MethodError(f"unknown gradient distance '{distance}'; valid: {', '.join(DISTANCES)}")


# --------------------------------------------------------------------------------------------
# One image step's matching loss, back-propagated into the synthetic images
# --------------------------------------------------------------------------------------------

ClassBatches = Iterable[tuple[int, Tensor, Tensor]]
"""(class label, real batch of that class, synthetic batch of that class) per class."""


def batched_supported(net: nn.Module) -> bool:
    """Whether the ``batched`` path gives correct gradients for ``net`` (no LayerNorm)."""
    return not any(isinstance(m, nn.LayerNorm) for m in net.modules())


def match_step(
    net: nn.Module,
    batches: ClassBatches,
    *,
    distance: str,
    path: str,
    inputs: Sequence[Tensor],
    real_forward: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """Sum over classes of the gradient distance; back-propagates it into ``inputs`` (the
    synthetic leaf tensor(s), whose ``.grad`` accumulates) and returns the detached loss.

    ``real_forward`` (``per_class`` path only) replaces ``net`` for the real batches, whose
    gradients need one backward only: a :func:`methods.compile.compiled` call of ``net``. The
    synthetic side needs ``create_graph`` (double backward), which cannot be compiled, and stays
    eager.

    ``batches`` may be a lazy iterator: the ``per_class`` path consumes it one class at a time
    (one class's graphs alive at once), the ``batched`` path collects it first. ``path`` must be
    resolved (``per_class`` or ``batched``); ``batched`` on a net :func:`batched_supported`
    rejects runs ``per_class``."""
    if path == "per_class" or (path == "batched" and not batched_supported(net)):
        return _match_per_class(net, batches, distance, inputs, real_forward)
    if path == "batched":
        return _match_batched(net, batches, distance, inputs)
    raise MethodError(f"match_step needs a resolved path ('per_class' or 'batched'), got '{path}'")


def _match_per_class(net: nn.Module, batches: ClassBatches, distance: str, inputs: Sequence[Tensor],
                     real_forward: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    params = [p for p in net.parameters() if p.requires_grad]
    forward = real_forward or net
    total: Optional[Tensor] = None
    for c, x_real, x_syn in batches:
        y_real = torch.full((x_real.shape[0],), c, dtype=torch.long, device=x_real.device)
        gw_real = torch.autograd.grad(F.cross_entropy(forward(x_real), y_real), params)
        y_syn = torch.full((x_syn.shape[0],), c, dtype=torch.long, device=x_syn.device)
        gw_syn = torch.autograd.grad(F.cross_entropy(net(x_syn), y_syn), params, create_graph=True)
        loss = match_distance(gw_syn, gw_real, distance)
        loss.backward(inputs=list(inputs))
        total = loss.detach() if total is None else total + loss.detach()
    if total is None:
        raise MethodError("gradient matching got no classes")
    return total


def _stack_padded(xs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-class batches of possibly different sizes into (C, B, ...) plus a (C, B)
    weight mask (1 for real entries, 0 for padding). Padding repeats the class's first image;
    its zero weight removes it from the class's mean loss exactly."""
    b = max(x.shape[0] for x in xs)
    if all(x.shape[0] == b for x in xs):
        return torch.stack(list(xs)), xs[0].new_ones(len(xs), b)
    rows, masks = [], []
    for x in xs:
        pad = b - x.shape[0]
        rows.append(torch.cat([x, x[:1].expand(pad, *x.shape[1:])]) if pad else x)
        m = x.new_zeros(b)
        m[: x.shape[0]] = 1.0
        masks.append(m)
    return torch.stack(rows), torch.stack(masks)


def _match_batched(net: nn.Module, batches: ClassBatches, distance: str, inputs: Sequence[Tensor]) -> Tensor:
    from torch.func import functional_call, grad, vmap

    items = list(batches)
    if not items:
        raise MethodError("gradient matching got no classes")
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    buffers = dict(net.named_buffers())
    device = items[0][1].device
    labels = torch.tensor([c for c, _, _ in items], dtype=torch.long, device=device)

    def class_loss(params: dict[str, Tensor], x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        out = functional_call(net, (params, buffers), (x,))
        return (F.cross_entropy(out, y, reduction="none") * w).sum() / w.sum()

    per_class_grad = vmap(grad(class_loss), in_dims=(None, 0, 0, 0))

    x_real, w_real = _stack_padded([r for _, r, _ in items])
    y_real = labels[:, None].expand(w_real.shape)
    with torch.no_grad():  # real gradients are targets: no graph (torch.func.grad still runs)
        g_real = per_class_grad({n: p.detach() for n, p in named}, x_real, y_real, w_real)
    x_syn, w_syn = _stack_padded([s for _, _, s in items])
    y_syn = labels[:, None].expand(w_syn.shape)
    g_syn = per_class_grad(dict(named), x_syn, y_syn, w_syn)
    loss = batched_match_distance([g_syn[n] for n in names], [g_real[n] for n in names], distance)
    loss.backward(inputs=list(inputs))
    return loss.detach()


# --------------------------------------------------------------------------------------------
# Config and method
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCConfig(MethodConfig):
    """DC/DSA hyper-parameters; defaults are the DC paper's (DSA: ``dsa=True, init='real'``).

    ``outer_loop``/``inner_loop`` None take :func:`get_loops` of the IPC. ``dsa_strategy`` None
    uses DSA's per-dataset default (no flip for digit datasets). ``path`` chooses how the
    per-class gradients are computed (see the module docstring); it never changes results
    beyond floating-point rounding.
    """

    iterations: int = 1000
    outer_loop: Optional[int] = None
    inner_loop: Optional[int] = None
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_net: float = 0.01
    batch_real: int = 256
    batch_train: int = 256
    init: Literal["noise", "real"] = "noise"
    distance: Literal["layerwise", "mse", "cos"] = "layerwise"
    model: str = "ConvNet"
    dsa: bool = False
    dsa_strategy: Optional[str] = None
    bn_real_per_class: int = 16
    path: Literal["auto", "per_class", "batched"] = "auto"

    def validate(self) -> None:
        problems = image_loop_problems(self)
        if self.outer_loop is not None and self.outer_loop < 1:
            problems.append(f"outer_loop must be >= 1 (or None for the IPC table), got {self.outer_loop}")
        if self.inner_loop is not None and self.inner_loop < 0:
            problems.append(f"inner_loop must be >= 0 (or None for the IPC table), got {self.inner_loop}")
        if not self.lr_net > 0:
            problems.append(f"lr_net must be > 0, got {self.lr_net}")
        for key in ("batch_real", "batch_train", "bn_real_per_class"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.distance not in DISTANCES:
            problems.append(f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")
        if self.path not in PATHS:
            problems.append(f"path must be one of {', '.join(PATHS)}, got {self.path!r}")
        if self.dsa_strategy is not None and not self.dsa:
            problems.append(
                "dsa_strategy is set but dsa is False; set dsa=True (or use method 'dsa') or drop dsa_strategy"
            )
        if problems:
            raise MethodError("invalid DC config: " + "; ".join(problems))


@dataclass(kw_only=True)
class DCRun(Synthesis):
    """One DC/DSA run's resolved values: the loop counts, the matching path (``batched`` falls
    back to ``per_class`` for LayerNorm networks) and the DSA module (or None)."""

    outer_loop: int
    inner_loop: int
    path: str
    dsa: Optional[DSA]
    compile: bool = False
    """Whether the real batches' forward runs compiled (``per_class`` path; :mod:`methods.compile`,
    ``auto`` counts one call per class and image step)."""
    compile_base: dict[str, float] = field(default_factory=compile_stats, repr=False)


@register("dc", display="DC", family="gradient_matching", order=100, description="DC: gradient matching (Zhao et al., ICLR 2021)")
class DC(LearnedMethod):
    """Dataset condensation with gradient matching; ``dsa=True`` gives DSA (see module doc).
    Runs in the shared loop (:mod:`methods.loop`) with one random stream, ``data``, from which
    every draw comes in the reference's order."""

    config_class = DCConfig
    learned = True
    eval_epochs_no_aug = 300
    generator_names = ("data",)
    loss_label = "matching loss"
    real_on_device = True

    def uses_dsa_in_eval(self) -> bool:
        return bool(self.config.dsa)

    def loops(self, ipc: int) -> tuple[int, int]:
        """(outer_loop, inner_loop) this config uses at ``ipc``."""
        outer, inner = get_loops(ipc)
        cfg = self.config
        return (cfg.outer_loop if cfg.outer_loop is not None else outer,
                cfg.inner_loop if cfg.inner_loop is not None else inner)

    def augmentation(self, real: ClassData) -> Optional[DSA]:
        """The DSA module used for matching and the inner loop (None without ``dsa``)."""
        return dsa_for(real, self.config.dsa, self.config.dsa_strategy)

    def start(self, run: LoopRun) -> DCRun:
        cfg: DCConfig = self.config
        outer_loop, inner_loop = self.loops(run.ipc)
        # initial synthetic set (class-major labels, as the reference), from the one stream
        images, labels = init_synthetic(run.real, run.ipc, cfg.init, run.generators["data"], run.device,
                                        dtype=torch.float32)
        return DCRun(
            images=images, labels=labels,
            optimizer=torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum_img),
            counters={"image_steps": 0, "inner_epochs": 0, "matching_time_s": 0.0, "inner_time_s": 0.0},
            history=[], outer_loop=outer_loop, inner_loop=inner_loop,
            path=resolve_path(cfg.path, run.device), dsa=self.augmentation(run.real),
            compile=resolve_compile(context_mode(run.context), run.device,
                                    steps=run.iterations * outer_loop * run.real.num_classes),
        )

    def step(self, run: LoopRun, syn: DCRun, iteration: int) -> float:
        cfg: DCConfig = self.config
        real, gen, device, ipc = run.real, run.generators["data"], run.device, run.ipc
        image_syn, counters = syn.images, syn.counters
        num_classes = real.num_classes

        def class_batches() -> ClassBatches:
            for c in range(num_classes):
                x_real = real.sample(c, cfg.batch_real, gen)
                x_syn = image_syn[c * ipc : (c + 1) * ipc]
                if syn.dsa is not None:
                    x_real, x_syn = syn.dsa.siamese([x_real, x_syn], gen)
                yield c, x_real, x_syn

        net = get_network(cfg.model, real.channel, num_classes, real.im_size, seed=derive_seed(gen), device=device)
        if syn.path == "batched" and not batched_supported(net):
            syn.path = "per_class"
            run.context.log(f"{self.name}: {cfg.model} has LayerNorm; using the per_class path")
        net.train()
        opt_net = sgd(net.parameters(), cfg.lr_net)
        batchnorm = has_batchnorm(net)
        real_forward = (compiled(net, "forward", enabled=True, batch=cfg.batch_real)
                        if syn.compile and syn.path == "per_class" else None)
        loss_sum = torch.zeros((), device=device)
        for ol in range(syn.outer_loop):
            if batchnorm:
                freeze_batchnorm(net, real, gen, cfg.bn_real_per_class)
            t0 = time.perf_counter()
            syn.optimizer.zero_grad(set_to_none=True)
            loss_sum += match_step(net, class_batches(), distance=cfg.distance, path=syn.path, inputs=[image_syn],
                                   real_forward=real_forward)
            syn.optimizer.step()
            sync(device)
            counters["matching_time_s"] += time.perf_counter() - t0
            counters["image_steps"] += 1
            run.heartbeat()
            if ol == syn.outer_loop - 1:
                break  # the reference does not train the net after the last image step
            t0 = time.perf_counter()
            syn_train = image_syn.detach()
            for _ in range(syn.inner_loop):
                train_epoch(net, syn_train, syn.labels, opt_net, batch_size=cfg.batch_train,
                            generator=gen, augment=syn.dsa)
            sync(device)
            counters["inner_time_s"] += time.perf_counter() - t0
            counters["inner_epochs"] += syn.inner_loop
            run.heartbeat()
        syn.history.append(float(loss_sum) / (num_classes * syn.outer_loop))
        return syn.history[-1]

    def cost_figures(self, run: LoopRun, syn: DCRun) -> dict[str, float]:
        c = syn.counters
        return dict(
            image_steps=c["image_steps"], inner_epochs=c["inner_epochs"],
            matching_time_s=c["matching_time_s"], inner_time_s=c["inner_time_s"],
            seconds_per_image_step=c["matching_time_s"] / max(1.0, c["image_steps"]),
            outer_loop=syn.outer_loop, inner_loop=syn.inner_loop,
            **(compile_delta(syn.compile_base) if syn.compile else {}),
        )

    def extra(self, run: LoopRun, syn: DCRun) -> dict[str, Any]:
        return {"loss_history": syn.history, "path": syn.path,
                "dsa_strategy": None if syn.dsa is None else syn.dsa.strategy}


def freeze_batchnorm(net: nn.Module, real: ClassData, gen: torch.Generator, per_class: int) -> None:
    """The reference's BN handling (DC code ``main.py``): running statistics from ``per_class``
    real images per class (one train-mode forward, ``torch.no_grad``), then every BN module in
    eval mode, so the image step's forwards normalise with those frozen statistics and do not
    update them."""
    x = torch.cat([real.sample(c, per_class, gen) for c in range(real.num_classes)])
    net.train()
    with torch.no_grad():
        net(x)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


register_variant(
    "dsa",
    "dc",
    {"dsa": True, "init": "real"},
    display="DSA",
    order=110,
    description="DSA: DC with differentiable siamese augmentation (Zhao & Bilen, ICML 2021)",
)
