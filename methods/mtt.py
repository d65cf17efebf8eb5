"""MTT: Dataset Distillation by Matching Training Trajectories (Cazenavette et al., CVPR 2022),
reimplemented, with TESLA's memory-constant gradient (Cui et al., ICML 2023) as an option and
DATM (Guo et al., ICLR 2024) as a registered variant (config overrides, no second copy).

Why ~590 lines: MTT and DATM are one method (DATM is config overrides of MTT), and the paper's
hyperparameter table, the unrolled student with its two gradient modes (plain and TESLA) and the
DATM switches read best together; the expert stage and the trajectory format live elsewhere.

Reference: ``GeorgeCazenavette/mtt-distillation:distill.py`` (and ``buffer.py`` for the
experts, :mod:`benchmarks.experts`). The outer loop (budget, generators
``init/expert/batch/aug``, checkpoints, progress, costs) is the shared one of
:mod:`methods.loop`; this file is MTT's config, hyper-parameter table, loss and one iteration.

Per iteration (paper §3.2, Algorithm 1):

* pick a random expert and a start epoch ``t`` in ``[min_start_epoch, max_start_epoch)``;
  the student starts from the expert's parameters ``theta*_t``;
* unroll ``N = syn_steps`` SGD steps of the student on minibatches of ``batch_syn`` synthetic
  images (one seeded permutation, cut into chunks and renewed when used up), each minibatch
  DSA-augmented (a fresh non-siamese draw per step), with the **learned** learning rate
  ``syn_lr``: ``theta_{i+1} = theta_i - syn_lr * grad CE(f(theta_i, A(x_i)), y_i)``;
* minimise the normalised parameter distance
  ``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` (``M = expert_epochs``)
  with respect to the images (SGD, ``lr_img``, momentum 0.5) and ``syn_lr`` (SGD, ``lr_lr``,
  momentum 0.5), as ``distill.py`` does.

The student is a functional network: one flat parameter vector through
:func:`torch.func.functional_call`, so the unrolled graph (and its second derivatives) is
explicit. Networks with batch norm are refused (their running statistics are state outside the
flat vector); the paper's ConvNet uses instance norm.

``memory_constant=True`` (TESLA, Cui et al. 2023, §3)
computes the *same* gradient with memory independent of ``syn_steps``: the forward pass keeps
only the student's parameter vectors (no activations), then a reverse sweep recomputes one step
at a time and propagates the adjoint ``lambda_i = dL/dtheta_i``::

    lambda_N = 2 (theta_N - theta*) / ||theta*_t - theta*||^2
    dL/dX   += -syn_lr * (d g_i / dX)^T lambda_{i+1}        (g_i the step-i gradient)
    dL/dlr  += -g_i . lambda_{i+1}
    lambda_i = lambda_{i+1} - syn_lr * H_i lambda_{i+1}     (Hessian-vector product)

(the same minibatches and DSA draws are replayed). :func:`unrolled_match` implements both
modes; ``tests/test_mtt.py`` checks them equal and against a float64 oracle.

Hyper-parameters: :data:`HYPERPARAMETERS` holds the paper's per-dataset, per-IPC settings
(Cazenavette et al. 2022, appendix, hyper-parameter table; see its docstring for the source): ``syn_steps``, ``expert_epochs``, ``max_start_epoch``, ``lr_img``,
``lr_lr``, the initial synthetic lr (``lr_teacher``), ``batch_syn`` (None = every synthetic
image in one batch, the code's default) and ZCA. A config field left at None takes the table's
value; a tabulated dataset at an IPC the table lacks is refused with a message naming the keys
to set. Datasets the paper does not cover (the bundled digits, MNIST, FashionMNIST, SVHN) use
:data:`DEFAULT_ROW`, a small-data setting chosen for this suite (not from the paper).
5000 iterations; experts: 100 ConvNets trained 50 epochs (``num_experts``,
``expert_train_epochs``). Evaluation: DSA, 1000 epochs, the learned lr (the set carries it),
in ZCA space when distilled there.

DATM (Guo et al., "Towards Lossless Dataset Distillation via Difficulty-Aligned Trajectory
Matching", ICLR 2024) is MTT with three changes, all config fields here:

* difficulty-aligned, moving start-epoch window (the paper's matching-range control and
  "sequential generation"): start epochs are drawn from ``[min_start_epoch, upper)`` where
  ``upper`` starts at ``window_start_fraction * max_start_epoch`` and grows linearly to
  ``max_start_epoch`` over the first ``window_growth_end`` fraction of the budget (DATM's
  ``current_max_start_epoch`` -> ``max_start_epoch`` by ``expansion_end_epoch``);
* ``init='correct'``: initial images drawn among the real images that expert 0 at
  ``label_epoch`` (default: the last stored epoch; DATM's ``Label_Model_Timestamp``)
  classifies correctly;
* ``soft_labels=True``: per-image label logits initialised, as DATM's code does, with the mean
  logits of the experts (at ``label_epoch``) that classify the image correctly, and learned with
  their own SGD optimiser (``lr_label``, ``momentum_label``);
  the inner loss is cross-entropy against ``softmax(logits)`` and the set's evaluation plan
  trains on them (``labels='soft'``, ``loss='soft_ce'``).

Deliberate differences: every draw is seeded (CPU generators, never the clock); the synthetic
minibatch chunks are taken in order (the reference pops them from the end; the same
distribution).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.augment import DSA, Draw, default_dsa_strategy, parse_strategy
from methods.config import MethodConfig
from methods.errors import MethodError
from methods.loop import LoopRun, Synthesis
from methods.networks import canonical_network_name, get_network, has_batchnorm, network_skeleton
from methods.protocol import EvalPlan
from methods.realdata import ClassData
from methods.registry import register, register_variant
from methods.synthesis import LearnedMethod, init_synthetic, sync
from methods.trajectories import RESOURCE, TrajectoryKey, Trajectories
from methods.zca import ZCA


# --------------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameters:
    """One row of the hyper-parameter table (paper appendix): the unroll length ``syn_steps``
    (N), ``expert_epochs`` (M), ``max_start_epoch`` (T+), the image lr ``lr_img``, the lr of the
    learned lr ``lr_lr``, the initial synthetic lr ``lr_teacher``, ``batch_syn`` (None = all
    synthetic images) and ``zca``."""

    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    lr_img: float
    lr_lr: float
    lr_teacher: float
    batch_syn: Optional[int]
    zca: bool


HYPERPARAMETERS: dict[tuple[str, int], Hyperparameters] = {
    ("cifar10", 1): Hyperparameters(50, 2, 2, 100.0, 1e-7, 0.01, None, True),
    ("cifar10", 10): Hyperparameters(30, 2, 20, 100.0, 1e-5, 0.001, None, True),
    ("cifar10", 50): Hyperparameters(30, 2, 40, 1000.0, 1e-5, 0.001, None, False),
    ("cifar100", 1): Hyperparameters(20, 3, 20, 1000.0, 1e-5, 0.01, None, True),
    ("cifar100", 10): Hyperparameters(20, 2, 20, 1000.0, 1e-5, 0.01, None, False),
    ("cifar100", 50): Hyperparameters(80, 2, 40, 1000.0, 1e-5, 0.01, 125, True),
    ("tinyimagenet", 1): Hyperparameters(10, 2, 10, 10000.0, 1e-4, 0.01, None, False),
    ("tinyimagenet", 10): Hyperparameters(20, 2, 40, 10000.0, 1e-4, 0.01, 200, False),
    ("tinyimagenet", 50): Hyperparameters(20, 2, 40, 10000.0, 1e-4, 0.01, 300, False),
}
"""MTT's per-(dataset, IPC) settings (Cazenavette et al. 2022, appendix hyper-parameter table),
transcribed from the per-setting distillation commands that reproduce it; the CIFAR-100 IPC-1
row is also the example command of the authors' README."""

DEFAULT_ROW = Hyperparameters(syn_steps=20, expert_epochs=2, max_start_epoch=10, lr_img=100.0, lr_lr=1e-5,
                              lr_teacher=0.01, batch_syn=None, zca=False)
"""The row for datasets the paper does not tabulate (digits, MNIST, FashionMNIST, SVHN), at
any IPC: this suite's choice, not the paper's. The unroll length and lr of the learned lr of the
CIFAR-100 IPC-10 row, the image lr of the CIFAR-10 IPC-1/10 rows (the README's digits runs
say why not 1000), a start window of 10 epochs (experts of at least 12 epochs) and no ZCA."""

ROW_KEYS = tuple(Hyperparameters.__dataclass_fields__)
REQUIRED_KEYS = tuple(k for k in ROW_KEYS if k != "batch_syn")
"""The row fields a config must set to run without a table row (``batch_syn`` may stay None)."""


def table_row(dataset: str, ipc: int) -> Hyperparameters:
    """The table's row for ``dataset`` at ``ipc`` (:data:`DEFAULT_ROW` for an untabulated
    dataset); :class:`MethodError` for a tabulated dataset at an IPC the table lacks."""
    name = str(dataset).lower()
    tabulated = sorted(i for d, i in HYPERPARAMETERS if d == name)
    if not tabulated:
        return DEFAULT_ROW
    if (name, int(ipc)) not in HYPERPARAMETERS:
        raise MethodError(
            f"MTT's hyper-parameter table has no row for {dataset} at IPC {ipc} (rows: IPC "
            f"{', '.join(map(str, tabulated))}); set each of {', '.join(REQUIRED_KEYS)} (and optionally batch_syn) "
            f"with --set KEY=VALUE"
        )
    return HYPERPARAMETERS[(name, int(ipc))]


@dataclass(frozen=True)
class MTTConfig(MethodConfig):
    """MTT's hyper-parameters (module docstring). Fields of :class:`Hyperparameters` left at
    None take the table's value for the run's dataset and IPC (:meth:`resolve`)."""

    iterations: int = 5000
    syn_steps: Optional[int] = None
    expert_epochs: Optional[int] = None
    max_start_epoch: Optional[int] = None
    lr_img: Optional[float] = None
    lr_lr: Optional[float] = None
    lr_teacher: Optional[float] = None
    batch_syn: Optional[int] = None
    zca: Optional[bool] = None
    min_start_epoch: int = 0
    window_start_fraction: Optional[float] = None
    """None: a fixed window. Else DATM's moving upper bound starts at this fraction of max_start_epoch."""
    window_growth_end: float = 0.1
    """Fraction of the budget after which DATM's window reaches max_start_epoch."""
    momentum_img: float = 0.5
    momentum_lr: float = 0.5
    init: str = "real"
    """'real' (random real images), 'noise', or 'correct' (DATM: real images the expert classifies correctly)."""
    soft_labels: bool = False
    label_epoch: Optional[int] = None
    """DATM: the expert epoch whose networks pick the initial images and give the label logits (None = the last stored)."""
    lr_label: float = 2.0
    momentum_label: float = 0.9
    model: str = "ConvNet"
    dsa: bool = True
    dsa_strategy: Optional[str] = None
    memory_constant: bool = False
    num_experts: int = 100
    expert_train_epochs: int = 50
    expert_seed: int = 0

    def validate(self) -> None:
        problems = []
        for name in ("iterations", "num_experts", "expert_train_epochs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("syn_steps", "expert_epochs", "max_start_epoch", "batch_syn"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1, got {value}")
        for name in ("lr_img", "lr_lr", "lr_teacher", "lr_label"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} must be > 0, got {value}")
        for name in ("momentum_img", "momentum_lr", "momentum_label"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.min_start_epoch < 0:
            problems.append(f"min_start_epoch must be >= 0, got {self.min_start_epoch}")
        if self.window_start_fraction is not None and not 0 < self.window_start_fraction <= 1:
            problems.append(f"window_start_fraction must be in (0, 1], got {self.window_start_fraction}")
        if not 0 < self.window_growth_end <= 1:
            problems.append(f"window_growth_end must be in (0, 1], got {self.window_growth_end}")
        if self.init not in ("real", "noise", "correct"):
            problems.append(f"init must be 'real', 'noise' or 'correct', got {self.init!r}")
        try:
            arch = canonical_network_name(self.model)
            if has_batchnorm(network_skeleton(arch, 3, 10, (32, 32))):
                problems.append(f"model '{arch}' has batch norm, which the functional student does not carry; "
                                f"use a network without it (e.g. ConvNet)")
        except MethodError as exc:
            problems.append(str(exc))
        if self.dsa and self.dsa_strategy is not None:
            try:
                parse_strategy(self.dsa_strategy)
            except MethodError as exc:
                problems.append(str(exc))
        if problems:
            raise MethodError("invalid MTT config: " + "; ".join(problems))

    def resolve(self, dataset: str, ipc: int) -> Hyperparameters:
        """The effective row: the config's non-None fields over the table's row. With every
        row field set, no table lookup happens (an untabulated IPC is then fine)."""
        own = {k: getattr(self, k) for k in ROW_KEYS}
        if all(own[k] is not None for k in REQUIRED_KEYS):
            try:
                row = table_row(dataset, ipc)
            except MethodError:
                return Hyperparameters(**own)
        else:
            row = table_row(dataset, ipc)
        return replace(row, **{k: v for k, v in own.items() if v is not None})

    def trajectory_key(self, dataset: str, ipc: int) -> TrajectoryKey:
        """The key of the expert trajectories a run on ``dataset`` at ``ipc`` needs."""
        row = self.resolve(dataset, ipc)
        return TrajectoryKey(dataset=str(dataset), arch=canonical_network_name(self.model), zca=bool(row.zca),
                             epochs=int(self.expert_train_epochs), seed=int(self.expert_seed))


def experts_command(key: TrajectoryKey, num_experts: int) -> str:
    """The command that trains (or finishes) the experts of ``key``."""
    return (f"condbench experts --dataset {key.dataset} --arch {key.arch} --num-experts {int(num_experts)} "
            f"--epochs {key.epochs} --seed {key.seed}{' --zca' if key.zca else ''}")


# --------------------------------------------------------------------------------------------
# The functional student and the unrolled matching loss
# --------------------------------------------------------------------------------------------


class FunctionalNet:
    """``forward(flat_params, x)``: ``net`` evaluated with its parameters taken from one flat
    vector (in ``net.parameters()`` order) through :func:`torch.func.functional_call`."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        named = list(net.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.num_params = int(sum(self.sizes))

    def __call__(self, flat: Tensor, x: Tensor) -> Tensor:
        chunks = torch.split(flat, self.sizes)
        params = {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}
        return torch.func.functional_call(self.net, params, (x,))


def inner_loss(outputs: Tensor, labels: Tensor) -> Tensor:
    """The student's training loss: cross-entropy with class ids, or against
    ``softmax(labels)`` when ``labels`` are per-image logits (DATM), in the inputs' dtype."""
    if labels.is_floating_point():
        return -(F.softmax(labels, dim=1) * F.log_softmax(outputs, dim=1)).sum(1).mean()
    return F.cross_entropy(outputs, labels)


@dataclass
class StepPlan:
    """The minibatch indices and DSA draw (None: no augmentation) of one student step."""

    indices: Tensor
    draw: Optional[Draw]


def plan_steps(num_images: int, steps: int, batch: int, shape: Sequence[int], dsa: Optional[DSA],
               batch_gen: torch.Generator, aug_gen: torch.Generator) -> list[StepPlan]:
    """``steps`` minibatches of ``batch`` synthetic images (chunks of one seeded permutation,
    renewed when used up; the last chunk may be smaller) and one DSA draw per step."""
    plans: list[StepPlan] = []
    chunks: list[Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(num_images, generator=batch_gen).split(batch))
        idx = chunks.pop(0)
        draw = None if dsa is None or dsa.identity else dsa.sample(aug_gen, idx.numel(), shape, siamese=False)
        plans.append(StepPlan(idx, draw))
    return plans


def _batch(images: Tensor, labels: Tensor, step: StepPlan, dsa: Optional[DSA]) -> tuple[Tensor, Tensor]:
    idx = step.indices.to(images.device)
    x = images[idx]
    if step.draw is not None:
        x = dsa.apply(x, step.draw)
    return x, labels[idx]


def unrolled_match(
    forward: Callable[[Tensor, Tensor], Tensor],
    start: Tensor,
    target: Tensor,
    images: Tensor,
    labels: Tensor,
    syn_lr: Tensor,
    steps: Sequence[StepPlan],
    dsa: Optional[DSA] = None,
    *,
    memory_constant: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """MTT's loss for one expert segment and its gradients: ``(loss, dL/dimages, dL/dsyn_lr,
    dL/dlabels or None)``; ``labels`` get a gradient when they are a float tensor that requires
    it (learned soft labels). ``memory_constant`` selects TESLA's reverse sweep (module
    docstring) instead of one autograd graph through every step; both give the same values."""
    learn_labels = labels.is_floating_point() and labels.requires_grad
    start = start.detach().to(images.dtype)
    target = target.detach().to(images.dtype)
    dist = (start - target).pow(2).sum()
    if not memory_constant:
        theta = start.clone().requires_grad_(True)
        for step in steps:
            x, y = _batch(images, labels, step, dsa)
            (g,) = torch.autograd.grad(inner_loss(forward(theta, x), y), theta, create_graph=True)
            theta = theta - syn_lr * g
        loss = (theta - target).pow(2).sum() / dist
        leaves = [images, syn_lr] + ([labels] if learn_labels else [])
        grads = torch.autograd.grad(loss, leaves)
        return loss.detach(), grads[0], grads[1], grads[2] if learn_labels else None

    lr = syn_lr.detach()
    thetas = [start]
    theta = start
    for step in steps:
        p = theta.detach().requires_grad_(True)
        x, y = _batch(images.detach(), labels.detach(), step, dsa)
        (g,) = torch.autograd.grad(inner_loss(forward(p, x), y), p)
        theta = (p - lr * g).detach()
        thetas.append(theta)
    loss = (theta - target).pow(2).sum() / dist
    lam = 2.0 * (theta - target) / dist
    g_images = torch.zeros_like(images)
    g_labels = torch.zeros_like(labels) if learn_labels else None
    g_lr = torch.zeros_like(lr)
    for i in range(len(steps) - 1, -1, -1):
        p = thetas[i].detach().requires_grad_(True)
        x, y = _batch(images, labels, steps[i], dsa)
        (g,) = torch.autograd.grad(inner_loss(forward(p, x), y), p, create_graph=True)
        wrt = [p, images] + ([labels] if learn_labels else [])
        parts = torch.autograd.grad((g * lam).sum(), wrt, allow_unused=True)
        g_lr = g_lr - (g.detach() * lam).sum()
        g_images = g_images - lr * parts[1]
        if learn_labels:
            g_labels = g_labels - lr * parts[2]
        lam = lam - lr * parts[0]
    return loss.detach(), g_images, g_lr, g_labels


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class MTTRun(Synthesis):
    """One MTT run's resolved values: the table row, the trajectories, the functional student,
    the (whitened) real data, DSA, ZCA, the learned lr and (DATM) the learned label logits."""

    row: Hyperparameters
    trajectories: Trajectories
    forward: FunctionalNet
    real: ClassData
    dsa: Optional[DSA]
    zca: Optional[ZCA]
    syn_lr: Tensor
    label_logits: Optional[Tensor]
    key: TrajectoryKey


def _start_window(cfg: MTTConfig, row: Hyperparameters, iteration: int, total: int) -> tuple[int, int]:
    """``[low, high)`` of the start epochs at ``iteration``: fixed for MTT, DATM's growing
    upper bound when ``window_start_fraction`` is set."""
    low, high = int(cfg.min_start_epoch), int(row.max_start_epoch)
    if cfg.window_start_fraction is not None:
        first = max(low + 1, int(round(cfg.window_start_fraction * high)))
        end = max(1, int(round(cfg.window_growth_end * total)))
        high = min(high, first + (high - first) * iteration // end)
    return low, max(low + 1, high)


@register("mtt", display="MTT", family="trajectory_matching", order=400,
          description="MTT: match expert training trajectories by unrolling student SGD steps on the synthetic set")
class MTT(LearnedMethod):
    """Matching Training Trajectories (Cazenavette et al., CVPR 2022); see the module
    docstring. Needs ``context.resources['expert_trajectories']`` (:mod:`benchmarks.experts`)."""

    config_class = MTTConfig
    eval_epochs_no_aug = 1000
    generator_names = ("init", "expert", "batch", "aug")

    def uses_dsa_in_eval(self) -> bool:
        return True  # distill.py evaluates with DSA whatever the distillation used

    def eval_plan(self, real: ClassData) -> EvalPlan:
        """DSA, 1000 epochs, the set's learned lr (``distill.py``'s ``lr_net = syn_lr``); the set
        adds ZCA and soft labels where it carries them (:meth:`Method._synset`)."""
        return replace(super().eval_plan(real), lr_source="learned")

    def start(self, run: LoopRun) -> MTTRun:
        cfg: MTTConfig = self.config
        real, device = run.real, run.device
        row = cfg.resolve(real.name, run.ipc)
        key = cfg.trajectory_key(real.name, run.ipc)
        how = f"run `{experts_command(key, cfg.num_experts)}` first"
        trajectories: Trajectories = run.context.resource(RESOURCE, how=how)
        if not isinstance(trajectories, Trajectories):
            raise MethodError(f"resources['{RESOURCE}'] must be a methods.trajectories.Trajectories, "
                              f"got {type(trajectories).__name__}")
        if trajectories.num_experts < 1:
            raise MethodError(f"the expert trajectories hold no experts; {how}")
        net = get_network(cfg.model, real.channel, real.num_classes, real.im_size, seed=0, device=device)
        net.train()
        forward = FunctionalNet(net)
        trajectories.check_for(dataset=real.name, arch=key.arch, zca=row.zca, num_params=forward.num_params,
                               max_start_epoch=row.max_start_epoch, expert_epochs=row.expert_epochs, how=how)
        if cfg.min_start_epoch >= row.max_start_epoch:
            raise MethodError(f"min_start_epoch {cfg.min_start_epoch} must be below max_start_epoch "
                              f"{row.max_start_epoch}")
        zca = None
        if row.zca:
            zca = ZCA.fit(real.images.detach().cpu())
            real = replace(real, images=zca.whiten(real.images), indices_by_class=list(real.indices_by_class))
        dtype = torch.float32
        label_epoch = trajectories.stored_epochs if cfg.label_epoch is None else int(cfg.label_epoch)
        if not 0 <= label_epoch <= trajectories.stored_epochs:
            raise MethodError(f"label_epoch {label_epoch} is outside the 0..{trajectories.stored_epochs} stored epochs")
        label_params = [e[label_epoch].to(device=device, dtype=dtype) for e in trajectories.experts]
        gen = run.generators["init"]
        if cfg.init == "correct":
            images, labels = _correct_init(real, run.ipc, forward, label_params[0], gen, device)
        else:
            images, labels = init_synthetic(real, run.ipc, cfg.init, gen, device)
        syn_lr = torch.tensor(float(row.lr_teacher), device=device, requires_grad=True)
        tensors: dict[str, Tensor] = {"syn_lr": syn_lr}
        optimizers = {"syn_lr": torch.optim.SGD([syn_lr], lr=row.lr_lr, momentum=cfg.momentum_lr)}
        label_logits = None
        if cfg.soft_labels:
            label_logits = _expert_logits(forward, label_params, images.detach(), labels).requires_grad_(True)
            tensors["label_logits"] = label_logits
            optimizers["label_logits"] = torch.optim.SGD([label_logits], lr=cfg.lr_label, momentum=cfg.momentum_label)
        dsa = DSA(cfg.dsa_strategy or default_dsa_strategy(real.name, real.flip_preserves_label)) if cfg.dsa else None
        return MTTRun(
            images=images, labels=labels,
            optimizer=torch.optim.SGD([images], lr=row.lr_img, momentum=cfg.momentum_img),
            counters=dict(iterations_run=0, step_s=0.0, elapsed_s=0.0, budget=float(run.iterations)),
            history=[], tensors=tensors, optimizers=optimizers,
            row=row, trajectories=trajectories, forward=forward, real=real, dsa=dsa, zca=zca,
            syn_lr=syn_lr, label_logits=label_logits, key=key,
        )

    def step(self, run: LoopRun, syn: MTTRun, iteration: int) -> Tensor:
        cfg: MTTConfig = self.config
        if cfg.window_start_fraction is not None and int(syn.counters["budget"]) != run.iterations:
            raise MethodError(f"the checkpoint was written with a budget of {int(syn.counters['budget'])} iterations, "
                              f"this run has {run.iterations}; DATM's start window depends on it: use the same "
                              f"budget or delete the checkpoint")
        gens, device, row = run.generators, run.device, syn.row
        t0 = time.perf_counter()
        low, high = _start_window(cfg, row, iteration, run.iterations)
        expert = int(torch.randint(syn.trajectories.num_experts, (1,), generator=gens["expert"]).item())
        start_epoch = int(torch.randint(low, high, (1,), generator=gens["expert"]).item())
        theta0, target = syn.trajectories.segment(expert, start_epoch, row.expert_epochs)
        n = syn.images.shape[0]
        steps = plan_steps(n, row.syn_steps, min(n, row.batch_syn or n), syn.images.shape, syn.dsa,
                           gens["batch"], gens["aug"])
        labels = syn.label_logits if syn.label_logits is not None else syn.labels
        loss, g_img, g_lr, g_lab = unrolled_match(
            syn.forward, theta0.to(device), target.to(device), syn.images, labels, syn.syn_lr, steps, syn.dsa,
            memory_constant=cfg.memory_constant,
        )
        if not torch.isfinite(loss) or not torch.isfinite(g_img).all():
            raise MethodError(f"MTT diverged at iteration {iteration + 1}: matching loss {float(loss):.4g}, learned lr "
                              f"{float(syn.syn_lr.detach()):.4g}; lower lr_img, lr_lr or syn_steps (--set KEY=VALUE)")
        syn.images.grad = g_img
        syn.syn_lr.grad = g_lr.reshape(syn.syn_lr.shape)
        syn.optimizer.step()
        syn.optimizers["syn_lr"].step()
        if syn.label_logits is not None:
            syn.label_logits.grad = g_lab
            syn.optimizers["label_logits"].step()
            syn.label_logits.grad = None
        syn.images.grad = None
        syn.syn_lr.grad = None
        if not float(syn.syn_lr.detach()) > 0:
            raise MethodError(f"MTT's learned lr became {float(syn.syn_lr.detach()):.4g} at iteration {iteration + 1} "
                              f"(it must stay positive to train the student); lower lr_lr or syn_steps (--set KEY=VALUE)")
        sync(device)
        syn.counters["step_s"] += time.perf_counter() - t0
        syn.counters["iterations_run"] += 1
        syn.history.append(float(loss))
        return loss

    def progress_note(self, run: LoopRun, syn: MTTRun) -> str:
        return f"syn_lr {float(syn.syn_lr.detach()):.4g}"

    def cost_figures(self, run: LoopRun, syn: MTTRun) -> dict[str, float]:
        steps = syn.counters["iterations_run"]
        return {"seconds_per_iteration": syn.counters["step_s"] / max(1, steps),
                "student_steps": steps * syn.row.syn_steps}

    def finish(self, run: LoopRun, syn: MTTRun, cost: dict[str, float]):
        extra = {
            "dsa_strategy": None if syn.dsa is None else syn.dsa.strategy,
            "hyperparameters": asdict(syn.row),
            "trajectory_key": syn.key.to_dict(),
            "num_experts_used": syn.trajectories.num_experts,
            "final_matching_loss": syn.history[-1] if syn.history else None,
        }
        return self._synset(
            run.real, run.ipc, run.seed, syn.images.detach(), syn.labels, cost, extra=extra,
            soft_labels=None if syn.label_logits is None else syn.label_logits.detach(),
            learned_lr=float(syn.syn_lr.detach()), zca=syn.zca,
        )


def _correct_init(real: ClassData, ipc: int, forward: FunctionalNet, params: Tensor, gen: torch.Generator,
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """DATM's initialisation: per class, a seeded permutation of its real images, keeping the
    first ``ipc`` the expert (``params``) classifies correctly; a class with fewer correct
    images is filled with the next ones of the permutation."""
    picked = []
    for c in range(real.num_classes):
        idx = real.indices_by_class[c]
        order = idx[torch.randperm(idx.numel(), generator=gen).to(idx.device)]
        with torch.no_grad():
            pred = torch.cat([forward(params, real.images[chunk].to(device)).argmax(1).cpu()
                              for chunk in order.split(512)])
        correct = order[(pred == c).to(order.device)]
        rest = order[(pred != c).to(order.device)]
        picked.append(torch.cat([correct, rest])[:ipc])
    images = real.images[torch.cat(picked)].detach().to(device).clone().requires_grad_(True)
    labels = torch.arange(real.num_classes).repeat_interleave(ipc).to(device)
    return images, labels


@torch.no_grad()
def _expert_logits(forward: FunctionalNet, params: Sequence[Tensor], images: Tensor, labels: Tensor) -> Tensor:
    """DATM's soft-label initialisation: per image, the mean logits of the experts that classify
    it correctly (all experts' mean where none does)."""
    logits = torch.stack([forward(p, images) for p in params])  # (experts, N, C)
    correct = (logits.argmax(2) == labels.view(1, -1)).to(logits.dtype)  # (experts, N)
    count = correct.sum(0)
    mean_correct = (logits * correct.unsqueeze(2)).sum(0) / count.clamp_min(1).unsqueeze(1)
    return torch.where((count > 0).unsqueeze(1), mean_correct, logits.mean(0)).detach().clone()


register_variant(
    "datm", "mtt",
    {"init": "correct", "soft_labels": True, "window_start_fraction": 0.5, "window_growth_end": 0.1},
    display="DATM", order=410,
    description="DATM: MTT with a difficulty-aligned moving start-epoch window, correctly classified "
                "initial images and learned soft labels from expert logits",
)
