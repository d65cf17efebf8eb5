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
labels, a learned lr, Adam, cosine, ZCA, best-validation-epoch selection); :class:`EvalResult`
records the effective plan, every field.

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
from benchmarks.eval_networks import NetworkResult, lr_schedule, network_seed, test_accuracy, train_networks
from methods.context import CostMeter
from methods.errors import MethodError
from methods.networks import canonical_network_name
from methods.protocol import EvalPlan, ResolvedPlan, apply_overrides
from methods.rng import make_generator
from methods.synset import SyntheticSet
from methods.zca import ZCA

log = logging.getLogger(__name__)

__all__ = [
    "WHOLE_DATASET_EPOCHS", "EvaluationError", "EvalResult", "NetworkResult", "effective_plan",
    "validation_split", "evaluate_synset", "evaluate_whole_dataset",
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
    used); ``labels`` is ``'hard'`` or ``'soft'``; ``selected_epochs`` the epoch each network's
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
) -> ResolvedPlan:
    """The plan actually run for ``arch`` on ``dataset_name``: the set's plan (or ``EvalPlan()``),
    then ``plan_overrides``, then an explicit ``epochs``, resolved (``'auto'`` augmentation,
    the reference epoch rule, the learned lr). Raises :class:`EvaluationError` listing every
    problem, including what the plan needs that the set lacks (soft labels, lr, ZCA)."""
    synset = synset_or_plan if isinstance(synset_or_plan, SyntheticSet) else None
    plan = synset.eval_plan if synset is not None else (synset_or_plan or EvalPlan())
    try:
        plan = apply_overrides(plan, plan_overrides)
        if epochs is not None:
            plan = dataclasses.replace(plan, epochs=int(epochs))
        plan.validate()  # a plan built in code (not from overrides or a file) is checked here
    except MethodError as exc:
        raise EvaluationError(str(exc)) from None
    problems = plan.set_problems(
        has_soft_labels=synset is not None and synset.soft_labels is not None,
        has_learned_lr=synset is not None and synset.learned_lr is not None,
        has_zca=synset is None or synset.zca is not None,  # the whole-dataset baseline fits its own
    )
    if problems:
        raise EvaluationError("; ".join(problems))
    return plan.resolve(dataset_name, canonical_network_name(arch),
                        learned_lr=None if synset is None else synset.learned_lr)


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
) -> EvalResult:
    """Train ``num_eval`` networks on (``images``, ``labels``) with ``plan``; ``zca`` whitens
    the test (and validation) images, whose training images are already in that space."""
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
    runs = train_networks(
        x, y, tx, ty, arch, net_indices=range(int(num_eval)), num_classes=dataset.num_classes,
        channel=dataset.channel, im_size=dataset.im_size, epochs=plan.epochs, seed=seed,
        augmentation=plan.augmentations, device=device, progress=progress, desc=desc,
        vectorize=vectorize, bf16=bf16, channels_last=channels_last, plan=plan, validation=validation,
    )
    figures = meter.figures()
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
        plan=plan.to_dict(),
        labels=plan.plan.labels,
        selected_epochs=None if validation is None else [r.epoch for r in runs],
    )
    log.info("%s: %.2f ± %.2f %% over %d nets (%d epochs, aug %s, %.1f s)", arch, 100 * result.mean,
             100 * result.std, num_eval, plan.epochs, plan.augmentation, result.wall_time_s)
    return result


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
) -> EvalResult:
    """Evaluate ``synset`` on ``num_eval`` fresh ``arch`` networks with its plan (module doc).

    ``plan_overrides`` change fields of the set's :class:`~methods.protocol.EvalPlan`
    (validated: :func:`methods.protocol.plan_problems`); an explicit ``epochs`` wins over
    both. ``device`` defaults to the dataset's device. Raises :class:`EvaluationError`."""
    arch = canonical_network_name(arch)
    _check_compatible(synset, dataset)
    plan = effective_plan(synset, arch, dataset.name, epochs=epochs, plan_overrides=plan_overrides)
    labels = synset.soft_labels if plan.plan.labels == "soft" else synset.labels
    _keep, validation = _validation(dataset, plan, seed)
    return _evaluate(
        synset.images, labels, dataset, arch, num_eval=num_eval, plan=plan, seed=seed, device=device,
        progress=progress, desc=f"eval {synset.method} on {arch}", vectorize=vectorize, bf16=bf16,
        channels_last=channels_last, zca=synset.zca if plan.plan.zca else None, validation=validation,
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
) -> EvalResult:
    """The "whole dataset" baseline: the same protocol trained on the full training set.

    The plan is the default :class:`~methods.protocol.EvalPlan` (hard labels; augmentation by
    DC's rule, MNIST / ConvNetBN) with ``epochs`` passes (default :data:`WHOLE_DATASET_EPOCHS`,
    None = the plan's rule), then ``plan_overrides``. ``zca=True`` fits ZCA on the training
    images used; ``selection='best_val'`` trains on the training set minus the hold-out."""
    arch = canonical_network_name(arch)
    base = EvalPlan(epochs=None if epochs is None else int(epochs))
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
        channels_last=channels_last, zca=zca, validation=validation,
    )
