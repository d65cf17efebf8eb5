"""The evaluation protocol shared by DC/DSA/DM/CAFE: the reference ``evaluate_synset``, run
from the synthetic set's :class:`~methods.protocol.EvalPlan`.

For one architecture, ``num_eval`` fresh networks are trained on the synthetic set and tested
once on the full test set. The plan (:mod:`methods.protocol`, where the protocol and its
citations are written down) says how; its defaults are the published protocol:

* SGD, lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, shuffled every epoch, hard labels
  and cross-entropy;
* ``E + 1`` epochs (``ep = 0 .. E``); after epoch ``E // 2 + 1`` the lr is multiplied by 0.1 and
  the optimiser is **re-created** (momentum buffers reset) -- see :func:`lr_schedule`;
* training augmentation: DSA (per-sample parameters) when the method's paper evaluated with
  it, else DC's augmentation where the reference turns it on (MNIST, ``ConvNetBN``), else none;
* the **final-epoch** test accuracy (eval mode, no autograd) is recorded, not the best.

``E`` follows the reference: 1000 with any augmentation, otherwise the plan's
``epochs_no_aug`` (300 for DC and the coresets, 600 for CAFE, 1000 for DM); an explicit
``epochs`` overrides it. ``plan_overrides`` change any other field for a comparison (soft
labels, a learned lr, Adam, cosine, ZCA, best-validation-epoch selection); ``labels=teacher``
relabels any set with a teacher network trained on the whole training set
(:mod:`benchmarks.teacher`: DD-Ranking's soft-label protocol, optionally one label per
augmented view); :class:`EvalResult` records the effective plan, every field.

This module resolves the plan and runs it; :mod:`benchmarks.eval_networks` trains and tests
the networks (one at a time, or as a vectorised ensemble).

Deliberate differences from the reference (none changes the protocol's statistics):

* networks are seeded, never clock-seeded: network ``i`` for architecture ``a`` under seed
  ``s`` is initialised, shuffled and augmented from one CPU generator seeded with
  :func:`network_seed` ``(s, a, i)`` (a SHA-256 of the three values), so any single network
  can be re-run on its own and results are bit-identical on the same CPU setup;
* data stay as tensors on the device (no DataLoader, no per-sample transforms);
* the DC rotate op uses bilinear ``grid_sample`` instead of scipy (see :mod:`benchmarks.dc_augment`).

Speed options (same results up to float rounding unless noted):

* ``vectorize``: ``'auto'`` (default: vectorised on CUDA, sequential on CPU, the rule of
  :func:`methods.ensemble.resolve_mode`, measured in ``tests/perf``), ``'sequential'`` (one
  network after the other, the oracle) or ``'vectorized'`` (all networks in one ``vmap``; same
  per-network seeds and draws, parameters equal to ~1e-4 relative). Batch-norm/dropout
  networks always run sequentially, and so do plans with Adam, soft labels or
  ``selection='best_val'`` (the vectorised ensemble implements the published protocol only).
* ``bf16``: bfloat16 autocast for the forward passes (training and test), default off; it
  changes the arithmetic, so accuracies move slightly (measured in ``tests/perf``).
* ``channels_last``: the test pass in channels-last memory format (default off; see the perf
  table for its effect on this machine).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Optional

import torch
from torch import Tensor

from benchmarks import UserError
from benchmarks.data import Dataset
from benchmarks.eval_networks import (
    NetworkResult, lr_schedule, make_augment, network_seed, test_accuracy, train_and_test, train_networks,
)
from benchmarks.teacher import Cache, PerViewLabels, Teacher, TeacherError, memory_cache, split_overrides
from benchmarks.teacher import train_teacher, with_teacher_fields
from methods.context import CostMeter
from methods.errors import MethodError
from methods.networks import canonical_network_name
from methods.protocol import EvalPlan, ResolvedPlan, apply_overrides, epoch_schedule
from methods.rng import make_generator
from methods.synset import SyntheticSet
from methods.training import make_loss
from methods.zca import ZCA

log = logging.getLogger(__name__)

__all__ = [
    "WHOLE_DATASET_EPOCHS", "EvaluationError", "EvalResult", "NetworkResult", "effective_plan",
    "validation_split", "evaluate_synset", "evaluate_whole_dataset", "explained_plan", "teacher_for",
    # the per-network side of the protocol, from benchmarks.eval_networks
    "lr_schedule", "network_seed", "test_accuracy", "train_networks",
]

WHOLE_DATASET_EPOCHS = 20
"""Default epochs of the whole-dataset baseline. The reference has no fixed value for it (the
papers train on the full set "to convergence"); 20 epochs of the evaluation schedule bring a
ConvNet close to its plateau on the 60k-image sets while staying affordable on a CPU. Override
with ``epochs=`` for a longer run."""


class EvaluationError(UserError):
    """A synthetic set that cannot be evaluated on the given dataset (shape/class mismatch) or
    with the given plan."""


@dataclass
class EvalResult:
    """All test accuracies (fractions in [0, 1]) of one architecture's ``num_eval`` networks.

    ``plan`` is the effective evaluation plan, every field (epochs, augmentation and lr as
    used, and the teacher's fields for teacher labels); ``labels`` is ``'hard'``, ``'soft'`` (the
    set's own) or ``'teacher'``; ``selected_epochs`` the epoch each network's
    accuracy comes from under ``selection='best_val'`` (None for the final epoch)."""

    arch: str
    accuracies: list[float]
    epochs: int
    num_eval: int
    augmentation: str
    train_time_s: float
    test_time_s: float
    wall_time_s: float
    peak_memory_mb: float
    device: str
    seed: int = 0
    plan: dict[str, Any] = field(default_factory=dict)
    labels: str = "hard"
    selected_epochs: Optional[list[int]] = None

    @property
    def mean(self) -> float:
        return float(statistics.fmean(self.accuracies)) if self.accuracies else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's default, which the reference reports)."""
        return float(statistics.pstdev(self.accuracies)) if self.accuracies else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = self.mean
        d["std"] = self.std
        return d


# --------------------------------------------------------------------------------------------
# The effective plan
# --------------------------------------------------------------------------------------------


def effective_plan(
    synset_or_plan: SyntheticSet | EvalPlan | None,
    arch: str,
    dataset_name: str,
    *,
    epochs: Optional[int] = None,
    plan_overrides: Optional[Mapping[str, Any]] = None,
    teacher_labels: bool = False,
) -> ResolvedPlan:
    """The plan actually run for ``arch`` on ``dataset_name``: the set's plan (or ``EvalPlan()``),
    then ``plan_overrides``, then an explicit ``epochs``, resolved (``'auto'`` augmentation,
    the reference epoch rule, the learned lr). Raises :class:`EvaluationError` listing every
    problem, including what the plan needs that the set lacks (soft labels, lr, ZCA).
    ``plan_overrides`` may ask for teacher labels (``labels: teacher``, the ``teacher_*``
    keys: :func:`benchmarks.teacher.split_overrides`); the plan then trains on soft labels that
    the teacher provides (``teacher_labels`` says so when the overrides are already split)."""
    synset = synset_or_plan if isinstance(synset_or_plan, SyntheticSet) else None
    plan = synset.eval_plan if synset is not None else (synset_or_plan or EvalPlan())
    plan_overrides, spec, problems = split_overrides(plan_overrides)
    if problems:
        raise EvaluationError("; ".join(problems))
    teacher_labels = teacher_labels or spec is not None
    try:
        plan = apply_overrides(plan, plan_overrides)
        if epochs is not None:
            plan = dataclasses.replace(plan, epochs=int(epochs))
        plan.validate()  # a plan built in code (not from overrides or a file) is checked here
    except MethodError as exc:
        raise EvaluationError(str(exc)) from None
    problems = plan.set_problems(
        has_soft_labels=teacher_labels or (synset is not None and synset.soft_labels is not None),
        has_learned_lr=synset is not None and synset.learned_lr is not None,
        has_zca=synset is None or synset.zca is not None,  # the whole-dataset baseline fits its own
    )
    if problems:
        raise EvaluationError("; ".join(problems))
    return plan.resolve(dataset_name, canonical_network_name(arch),
                        learned_lr=None if synset is None else synset.learned_lr)


def explained_plan(
    synset_or_plan: SyntheticSet | EvalPlan | None,
    arch: str,
    dataset_name: str,
    *,
    epochs: Optional[int] = None,
    plan_overrides: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """Every field of the plan :func:`effective_plan` resolves, as ``condbench evaluate
    --explain`` shows it: with teacher labels, ``labels='teacher'`` and the teacher's fields
    (architecture, epochs, per-view) as the evaluation will record them."""
    plan = effective_plan(synset_or_plan, arch, dataset_name, epochs=epochs, plan_overrides=plan_overrides).to_dict()
    _plan, spec, _problems = split_overrides(plan_overrides)
    if spec is not None:
        plan.update(spec.plan_fields(canonical_network_name(arch)), labels="teacher")
    return plan


def validation_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(train_indices, val_indices)`` of a stratified hold-out: in every class, a seeded
    ``round(fraction * n_c)`` (at least 1, at most ``n_c - 1``) of the images go to validation.
    Drawn from a CPU generator seeded by SHA-256 of ``"condbench-val|seed"``."""
    text = f"condbench-val|{int(seed)}"
    g = make_generator(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1))
    y = labels.detach().cpu()
    train, val = [], []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        k = min(max(1, round(fraction * idx.numel())), idx.numel() - 1)
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _check_compatible(synset: SyntheticSet, dataset: Dataset) -> None:
    shape = tuple(synset.images.shape[1:])
    want = (dataset.channel, *dataset.im_size)
    problems = []
    if synset.images.ndim != 4 or shape != want:
        problems.append(f"images are {shape}, the dataset's are {want}")
    if synset.num_classes != dataset.num_classes:
        problems.append(f"{synset.num_classes} classes, the dataset has {dataset.num_classes}")
    if synset.labels.numel() and (int(synset.labels.min()) < 0 or int(synset.labels.max()) >= dataset.num_classes):
        problems.append("labels outside the dataset's classes")
    if problems:
        raise EvaluationError(
            f"synthetic set of '{synset.dataset}' cannot be evaluated on dataset '{dataset.name}': "
            + "; ".join(problems)
        )
    if synset.dataset.lower() != dataset.name.lower():
        log.warning("synthetic set was made from '%s' but is evaluated on '%s'", synset.dataset, dataset.name)


def _evaluate(
    images: Tensor,
    labels: Tensor,
    dataset: Dataset,
    arch: str,
    *,
    num_eval: int,
    plan: ResolvedPlan,
    seed: int,
    device: Optional[torch.device | str],
    progress: bool,
    desc: str,
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
    zca: Optional[ZCA] = None,
    validation: Optional[tuple[Tensor, Tensor]] = None,
    teacher: Optional[tuple[Teacher, Any]] = None,
    compile: str = "off",
    workers: int = 1,
) -> EvalResult:
    """Train ``num_eval`` networks on (``images``, ``labels``) with ``plan``; ``zca`` whitens
    the test (and validation) images, whose training images are already in that space.
    ``teacher`` (a teacher and its :class:`~benchmarks.teacher.TeacherSpec`) records teacher
    labels; with ``per_view`` the teacher relabels every augmented batch."""
    if int(num_eval) <= 0:
        raise EvaluationError(f"num_eval must be a positive number of networks, got {num_eval}")
    arch = canonical_network_name(arch)
    device = torch.device(device) if device is not None else dataset.device
    meter = CostMeter(device)
    x = images.detach().to(device=device, dtype=torch.float32).contiguous()
    y = labels.detach().to(device=device, dtype=torch.float32 if labels.is_floating_point() else torch.long)
    tx, ty = dataset.test_images.to(device), dataset.test_labels.to(device)
    if zca is not None:
        tx = zca.whiten(tx)
    if validation is not None:
        vx, vy = validation[0].to(device), validation[1].to(device)
        validation = (zca.whiten(vx) if zca is not None else vx, vy)
    if teacher is not None and teacher[1].per_view:
        runs = _train_per_view(x, y, tx, ty, arch, teacher[0], dataset=dataset, num_eval=int(num_eval), plan=plan,
                               seed=seed, device=device, bf16=bf16, channels_last=channels_last,
                               validation=validation, zca=zca, compile=compile)
    else:
        runs = train_networks(
            x, y, tx, ty, arch, net_indices=range(int(num_eval)), num_classes=dataset.num_classes,
            channel=dataset.channel, im_size=dataset.im_size, epochs=plan.epochs, seed=seed,
            augmentation=plan.augmentations, device=device, progress=progress, desc=desc,
            vectorize=vectorize, bf16=bf16, channels_last=channels_last, plan=plan, validation=validation,
            compile=compile, workers=workers,
        )
    figures = meter.figures()
    plan_dict = plan.to_dict()
    if teacher is not None:
        plan_dict = with_teacher_fields(plan_dict, teacher[1], teacher[0])
    result = EvalResult(
        arch=arch,
        accuracies=[r.accuracy for r in runs],
        epochs=plan.epochs,
        num_eval=int(num_eval),
        augmentation=plan.augmentation,
        train_time_s=sum(r.train_s for r in runs),
        test_time_s=sum(r.test_s for r in runs),
        wall_time_s=figures["wall_time_s"],
        peak_memory_mb=figures["peak_memory_mb"],
        device=str(device),
        seed=int(seed),
        plan=plan_dict,
        labels=str(plan_dict["labels"]),
        selected_epochs=None if validation is None else [r.epoch for r in runs],
    )
    log.info("%s: %.2f ± %.2f %% over %d nets (%d epochs, aug %s, %.1f s)", arch, 100 * result.mean,
             100 * result.std, num_eval, plan.epochs, plan.augmentation, result.wall_time_s)
    return result


def _train_per_view(x: Tensor, y: Tensor, tx: Tensor, ty: Tensor, arch: str, teacher: Teacher, *,
                    dataset: Dataset, num_eval: int, plan: ResolvedPlan, seed: int, device: torch.device,
                    bf16: bool, channels_last: bool, validation: Optional[tuple[Tensor, Tensor]],
                    zca: Optional[ZCA], compile: str = "off") -> list[NetworkResult]:
    """The networks of a per-view teacher plan, one after the other: every augmented batch is
    labelled by the teacher (in pixel space: a ZCA set's batch is unwhitened for it)."""
    p = plan.plan
    loss = make_loss(p.loss, p.temperature)
    to_teacher = teacher if zca is None else _UnwhitenedTeacher(teacher, zca)
    schedule = epoch_schedule(p.schedule, plan.epochs, plan.lr)
    out = []
    for i in range(num_eval):
        views = PerViewLabels(to_teacher, make_augment(plan.augmentations), loss)
        out.append(train_and_test(
            x, y, tx, ty, arch, num_classes=dataset.num_classes, channel=dataset.channel, im_size=dataset.im_size,
            epochs=plan.epochs, seed=seed, net_index=i, augment=views.augment_fn, device=device, bf16=bf16,
            channels_last=channels_last, schedule=schedule, momentum=p.momentum, weight_decay=p.weight_decay,
            batch_size=p.batch_size, optimizer=p.optimizer, loss_fn=views.loss_fn, validation=validation,
            compile=compile,
        ))
    return out


class _UnwhitenedTeacher:
    """A teacher asked about ZCA-space images: it sees them unwhitened (its training space)."""

    def __init__(self, teacher: Teacher, zca: ZCA) -> None:
        self.teacher, self.zca = teacher, zca

    def logits(self, images: Tensor) -> Tensor:
        return self.teacher.logits(self.zca.unwhiten(images))


def teacher_for(dataset: Dataset, arch: str, spec: Any, *, seed: int, device: Optional[torch.device | str] = None,
                cache: Optional[Cache] = None) -> Teacher:
    """The teacher of ``spec`` for ``dataset`` (trained, or from ``cache``; default: a cache
    held by this process)."""
    return train_teacher(dataset, spec.arch or arch, seed=seed, epochs=spec.epochs, device=device,
                         cache=cache or memory_cache)


def _validation(dataset: Dataset, plan: ResolvedPlan, seed: int) -> tuple[Optional[Tensor], Optional[tuple[Tensor, Tensor]]]:
    """(training indices kept, validation images and labels) of the plan; (None, None) for
    ``selection='final'``. The hold-out comes from the training set, never the test set."""
    if plan.plan.selection != "best_val":
        return None, None
    keep, val = validation_split(dataset.train.labels, plan.plan.val_fraction, seed)
    return keep, (dataset.train.images[val.to(dataset.train.images.device)],
                  dataset.train.labels[val.to(dataset.train.labels.device)])


def evaluate_synset(
    synset: SyntheticSet,
    dataset: Dataset,
    arch: str,
    *,
    num_eval: int = 20,
    epochs: Optional[int] = None,
    plan_overrides: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
    teacher: Optional[Teacher] = None,
    cache: Optional[Cache] = None,
    compile: str = "off",
    workers: int = 1,
) -> EvalResult:
    """Evaluate ``synset`` on ``num_eval`` fresh ``arch`` networks with its plan (module doc).

    ``plan_overrides`` change fields of the set's :class:`~methods.protocol.EvalPlan`
    (validated: :func:`methods.protocol.plan_problems`); an explicit ``epochs`` wins over
    both. ``labels: teacher`` in them relabels the set with a teacher (``teacher``, or one
    trained for ``dataset`` and kept in ``cache``, default this process's memory; see
    :mod:`benchmarks.teacher`). ``device`` defaults to the dataset's device. ``compile``
    (``auto``/``on``/``off``, :mod:`methods.compile`) and ``workers`` (evaluation networks in
    that many processes, :mod:`benchmarks.workers`) change speed, not results beyond float
    rounding; ``off`` and 1 are the plain sequential code. Raises :class:`EvaluationError`."""
    arch = canonical_network_name(arch)
    _check_compatible(synset, dataset)
    overrides, spec, problems = split_overrides(plan_overrides)
    if problems:
        raise EvaluationError("; ".join(problems))
    plan = effective_plan(synset, arch, dataset.name, epochs=epochs, plan_overrides=overrides,
                          teacher_labels=spec is not None)
    zca = synset.zca if plan.plan.zca else None
    labels = synset.soft_labels if plan.plan.labels == "soft" else synset.labels
    with_teacher = None
    if spec is not None:
        try:
            if teacher is None:
                teacher = teacher_for(dataset, arch, spec, seed=seed, device=device, cache=cache)
            teacher.check_for(dataset.name, synset.num_classes)
        except TeacherError as exc:
            raise EvaluationError(str(exc)) from None
        images = synset.images.to(next(teacher.net.parameters()).device, torch.float32)
        labels = teacher.logits(images if zca is None else zca.unwhiten(images))
        with_teacher = (teacher, spec)
    _keep, validation = _validation(dataset, plan, seed)
    return _evaluate(
        synset.images, labels, dataset, arch, num_eval=num_eval, plan=plan, seed=seed, device=device,
        progress=progress, desc=f"eval {synset.method} on {arch}", vectorize=vectorize, bf16=bf16,
        channels_last=channels_last, zca=zca, validation=validation, teacher=with_teacher,
        compile=compile, workers=workers,
    )


def evaluate_whole_dataset(
    dataset: Dataset,
    arch: str,
    *,
    num_eval: int = 5,
    epochs: Optional[int] = WHOLE_DATASET_EPOCHS,
    plan_overrides: Optional[Mapping[str, Any]] = None,
    seed: int = 0,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
    compile: str = "off",
    workers: int = 1,
) -> EvalResult:
    """The "whole dataset" baseline: the same protocol trained on the full training set.

    The plan is the default :class:`~methods.protocol.EvalPlan` (hard labels; augmentation by
    DC's rule, MNIST / ConvNetBN) with ``epochs`` passes (default :data:`WHOLE_DATASET_EPOCHS`,
    None = the plan's rule), then ``plan_overrides``. ``zca=True`` fits ZCA on the training
    images used; ``selection='best_val'`` trains on the training set minus the hold-out."""
    arch = canonical_network_name(arch)
    base = EvalPlan(epochs=None if epochs is None else int(epochs))
    if split_overrides(plan_overrides)[1] is not None:
        raise EvaluationError("the whole-dataset baseline trains on the dataset's own labels (hard labels, "
                              "what HLR compares with); remove labels=teacher for it")
    plan = effective_plan(base, arch, dataset.name, plan_overrides=plan_overrides)
    keep, validation = _validation(dataset, plan, seed)
    images, labels = dataset.train.images, dataset.train.labels
    if keep is not None:
        images, labels = images[keep.to(images.device)], labels[keep.to(labels.device)]
    zca = None
    if plan.plan.zca:
        zca = ZCA.fit(images)
        images = zca.whiten(images)
    return _evaluate(
        images, labels, dataset, arch, num_eval=num_eval, plan=plan, seed=seed, device=device,
        progress=progress, desc=f"whole {dataset.name} on {arch}", vectorize=vectorize, bf16=bf16,
        channels_last=channels_last, zca=zca, validation=validation, compile=compile, workers=workers,
    )
