"""The evaluation protocol shared by DC/DSA/DM/CAFE: the reference ``evaluate_synset`` (notes §2.9).

For one architecture, ``num_eval`` fresh networks are trained on the synthetic set and tested
once on the full test set:

* SGD, lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, shuffled every epoch;
* ``E + 1`` epochs (``ep = 0 .. E``); after epoch ``E // 2 + 1`` the lr is multiplied by 0.1 and
  the optimiser is **re-created** (momentum buffers reset) -- see :func:`lr_schedule`;
* training augmentation: DSA (per-sample parameters) when the method's paper evaluated with
  it, else DC's augmentation where the reference turns it on (MNIST, ``ConvNetBN``), else none;
* the **final-epoch** test accuracy (eval mode, no autograd) is recorded, not the best.

The epoch count ``E`` follows the reference (:func:`evaluation_plan`): 1000 with any
augmentation, otherwise the method's ``epochs_no_aug`` (300 for DC and the coresets, 600 for
CAFE); an explicit ``epochs`` overrides it.

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
  networks always run sequentially.
* ``bf16``: bfloat16 autocast for the forward passes (training and test), default off; it
  changes the arithmetic, so accuracies move slightly (measured in ``tests/perf``).
* ``channels_last``: the test pass in channels-last memory format (default off; see the perf
  table for its effect on this machine).
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmarks import UserError
from benchmarks.data import Dataset
from benchmarks.dc_augment import DCAugment, dc_strategy
from methods.context import CostMeter
from methods.rng import make_generator
from methods.synset import SyntheticSet
from methods.ensemble import autocast_context, resolve_mode, train_ensemble
from methods.networks import canonical_network_name, get_network
from methods.training import Augment, accuracy, sgd, train_epoch

log = logging.getLogger(__name__)

LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH_SIZE = 256
EPOCHS_WITH_AUG = 1000
DEFAULT_EPOCHS_NO_AUG = 300
WHOLE_DATASET_EPOCHS = 20
"""Default epochs of the whole-dataset baseline. The reference has no fixed value for it (the
papers train on the full set "to convergence"); 20 epochs of the evaluation schedule bring a
ConvNet close to its plateau on the 60k-image sets while staying affordable on a CPU. Override
with ``epochs=`` for a longer run."""


class EvaluationError(UserError):
    """A synthetic set that cannot be evaluated on the given dataset (shape/class mismatch)."""


@dataclass
class EvalResult:
    """All test accuracies (fractions in [0, 1]) of one architecture's ``num_eval`` networks."""

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
# Plan: epochs and augmentation
# --------------------------------------------------------------------------------------------


def evaluation_plan(
    synset_or_eval_defaults: SyntheticSet | Mapping[str, Any] | None,
    arch: str,
    dataset_name: str,
    epochs: Optional[int] = None,
) -> tuple[int, str]:
    """``(epochs, augmentation)`` for evaluating on ``arch`` (reference ``main.py`` rule).

    ``augmentation`` is ``'dsa:<strategy>'`` when the method's eval defaults ask for DSA,
    ``'dc:<strategy>'`` when DC's augmentation applies (:func:`dc_strategy`), else ``'none'``.
    Epochs: 1000 with augmentation, else ``eval_defaults['epochs_no_aug']`` (default 300);
    an explicit ``epochs`` wins."""
    if isinstance(synset_or_eval_defaults, SyntheticSet):
        defaults: Mapping[str, Any] = synset_or_eval_defaults.eval_defaults
    else:
        defaults = synset_or_eval_defaults or {}
    arch = canonical_network_name(arch)
    if defaults.get("dsa"):
        from methods.augment import default_dsa_strategy

        strategy = defaults.get("dsa_strategy") or default_dsa_strategy(dataset_name)
        augmentation = f"dsa:{strategy}"
    else:
        dc = dc_strategy(dataset_name, arch)
        augmentation = f"dc:{dc}" if dc else "none"
    if epochs is None:
        epochs = EPOCHS_WITH_AUG if augmentation != "none" else int(defaults.get("epochs_no_aug") or DEFAULT_EPOCHS_NO_AUG)
    if int(epochs) < 0:
        raise EvaluationError(f"evaluation epochs must be >= 0, got {epochs}")
    return int(epochs), augmentation


def make_augment(augmentation: str) -> Optional[Augment]:
    """The training-batch augmentation named by :func:`evaluation_plan`."""
    if augmentation == "none":
        return None
    kind, _, strategy = augmentation.partition(":")
    if kind == "dc":
        return DCAugment(strategy)
    if kind == "dsa":
        try:
            from methods.augment import DSA
        except ImportError as exc:  # the DSA module arrives with the DSA method
            raise EvaluationError(
                "this synthetic set is evaluated with DSA augmentation, but methods.augment is not "
                "available in this installation"
            ) from exc
        return DSA(strategy)
    raise EvaluationError(f"unknown augmentation '{augmentation}'")


# --------------------------------------------------------------------------------------------
# One network
# --------------------------------------------------------------------------------------------


def network_seed(seed: int, arch: str, net_index: int) -> int:
    """63-bit seed of evaluation network ``net_index`` of ``arch`` under ``seed`` (stable
    across processes and platforms: SHA-256 of ``"condbench-eval|seed|Arch|index"``)."""
    text = f"condbench-eval|{int(seed)}|{canonical_network_name(arch)}|{int(net_index)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def lr_schedule(epochs: int, lr: float = LR) -> Iterator[tuple[int, float, bool]]:
    """Yield ``(epoch, lr, new_optimizer)`` for the reference loop ``for ep in range(E + 1)``.

    ``new_optimizer`` is True at epoch 0 and at the first epoch after ``E // 2 + 1``: the
    reference multiplies lr by 0.1 *after* training epoch ``E // 2 + 1`` and builds a new SGD
    optimiser then, so momentum starts from zero for the low-lr phase."""
    drop_after = epochs // 2 + 1
    current = lr
    for ep in range(epochs + 1):
        new = ep == 0
        if ep == drop_after + 1:
            current = current * 0.1
            new = True
        yield ep, current, new


def train_and_test(
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    arch: str,
    *,
    num_classes: int,
    channel: int,
    im_size: Sequence[int],
    epochs: int,
    seed: int,
    net_index: int,
    augment: Optional[Augment],
    device: torch.device | str,
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
    batch_size: int = BATCH_SIZE,
    bf16: bool = False,
    channels_last: bool = False,
) -> tuple[float, float, float]:
    """Train one fresh network with the reference schedule; return (final test accuracy,
    train seconds, test seconds). ``images`` etc. must already be on ``device``."""
    device = torch.device(device)
    g = make_generator(network_seed(seed, arch, net_index))
    net = get_network(arch, channel, num_classes, im_size, generator=g, device=device)
    optimizer = None
    start = time.perf_counter()
    for _ep, ep_lr, new in lr_schedule(epochs, lr):
        if new or optimizer is None:
            optimizer = sgd(net.parameters(), ep_lr, momentum=momentum, weight_decay=weight_decay)
        with autocast_context(device, bf16):
            train_epoch(net, images, labels, optimizer, batch_size=batch_size, generator=g, augment=augment)
    _sync(device)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    acc = test_accuracy(net, test_images, test_labels, bf16=bf16, channels_last=channels_last)
    _sync(device)
    return acc, train_s, time.perf_counter() - start


def test_accuracy(net: torch.nn.Module, images: Tensor, labels: Tensor, *, bf16: bool = False,
                  channels_last: bool = False, batch_size: int = 1024) -> float:
    """Final test pass (eval mode, no autograd), optionally bf16 autocast / channels-last."""
    if channels_last and images.ndim == 4:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(images.device, bf16):
        return accuracy(net, images, labels, batch_size=batch_size)


test_accuracy.__test__ = False  # not a pytest test


def train_networks_vectorized(
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    arch: str,
    *,
    net_indices: Sequence[int],
    num_classes: int,
    channel: int,
    im_size: Sequence[int],
    epochs: int,
    seed: int,
    augment: Optional[Augment],
    device: torch.device,
    bf16: bool = False,
    channels_last: bool = False,
) -> list[tuple[float, float, float]]:
    """All networks of ``net_indices`` trained in one vectorised ensemble
    (:func:`methods.ensemble.train_ensemble`), same seeds and draws as :func:`train_and_test`;
    train seconds are the ensemble's time split evenly over the networks."""
    gens = [make_generator(network_seed(seed, arch, i)) for i in net_indices]
    nets = [get_network(arch, channel, num_classes, im_size, generator=g, device=device) for g in gens]
    schedule = [(ep_lr, new) for _ep, ep_lr, new in lr_schedule(epochs, LR)]
    start = time.perf_counter()
    train_ensemble(nets, gens, images, labels, schedule, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                   batch_size=BATCH_SIZE, augment=augment, mode="vectorized", bf16=bf16)
    _sync(device)
    train_s = (time.perf_counter() - start) / max(1, len(nets))
    out = []
    for net in nets:
        start = time.perf_counter()
        acc = test_accuracy(net, test_images, test_labels, bf16=bf16, channels_last=channels_last)
        _sync(device)
        out.append((acc, train_s, time.perf_counter() - start))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_networks(
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    arch: str,
    *,
    net_indices: Sequence[int],
    num_classes: int,
    channel: int,
    im_size: Sequence[int],
    epochs: int,
    seed: int,
    augmentation: str,
    device: torch.device,
    progress: bool = False,
    desc: str = "",
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
) -> list[tuple[float, float, float]]:
    """Train and test one network per index; ``(acc, train_s, test_s)`` each, in order.

    The single place that trains "N networks": the sequential loop here is the oracle that the
    vectorised path (``vectorize``, see the module docstring) reproduces (same seeds per
    ``net_index``)."""
    augment = make_augment(augmentation)
    probe = get_network(arch, channel, num_classes, im_size, seed=0, device="meta")
    if len(net_indices) > 1 and resolve_mode(vectorize, device, probe) == "vectorized":
        return train_networks_vectorized(
            images, labels, test_images, test_labels, arch, net_indices=list(net_indices),
            num_classes=num_classes, channel=channel, im_size=im_size, epochs=epochs, seed=seed,
            augment=augment, device=device, bf16=bf16, channels_last=channels_last,
        )
    out = []
    indices = list(net_indices)
    for n, i in enumerate(tqdm(indices, desc=desc or f"eval {arch}", disable=not progress, leave=False), 1):
        out.append(
            train_and_test(
                images, labels, test_images, test_labels, arch,
                num_classes=num_classes, channel=channel, im_size=im_size, epochs=epochs,
                seed=seed, net_index=i, augment=augment, device=device, bf16=bf16,
                channels_last=channels_last,
            )
        )
        acc, train_s, test_s = out[-1]
        # one line per network: a long run (e.g. the whole-dataset baseline) shows its progress in job logs
        log.info("%s network %d/%d: %.2f %% (train %.1f s, test %.1f s)", arch, n, len(indices), 100 * acc,
                 train_s, test_s)
    return out


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
    epochs: int,
    augmentation: str,
    seed: int,
    device: Optional[torch.device | str],
    progress: bool,
    desc: str,
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
) -> EvalResult:
    if int(num_eval) <= 0:
        raise EvaluationError(f"num_eval must be a positive number of networks, got {num_eval}")
    arch = canonical_network_name(arch)
    device = torch.device(device) if device is not None else dataset.device
    meter = CostMeter(device)
    x = images.detach().to(device=device, dtype=torch.float32).contiguous()
    y = labels.detach().to(device=device, dtype=torch.long)
    tx, ty = dataset.test_images.to(device), dataset.test_labels.to(device)
    runs = train_networks(
        x, y, tx, ty, arch, net_indices=range(int(num_eval)), num_classes=dataset.num_classes,
        channel=dataset.channel, im_size=dataset.im_size, epochs=epochs, seed=seed,
        augmentation=augmentation, device=device, progress=progress, desc=desc,
        vectorize=vectorize, bf16=bf16, channels_last=channels_last,
    )
    figures = meter.figures()
    result = EvalResult(
        arch=arch,
        accuracies=[r[0] for r in runs],
        epochs=int(epochs),
        num_eval=int(num_eval),
        augmentation=augmentation,
        train_time_s=sum(r[1] for r in runs),
        test_time_s=sum(r[2] for r in runs),
        wall_time_s=figures["wall_time_s"],
        peak_memory_mb=figures["peak_memory_mb"],
        device=str(device),
        seed=int(seed),
    )
    log.info("%s: %.2f ± %.2f %% over %d nets (%d epochs, aug %s, %.1f s)", arch, 100 * result.mean,
             100 * result.std, num_eval, epochs, augmentation, result.wall_time_s)
    return result


def evaluate_synset(
    synset: SyntheticSet,
    dataset: Dataset,
    arch: str,
    *,
    num_eval: int = 20,
    epochs: Optional[int] = None,
    seed: int = 0,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
) -> EvalResult:
    """Reference ``evaluate_synset`` for ``num_eval`` fresh ``arch`` networks (see module doc).

    ``device`` defaults to the dataset's device."""
    arch = canonical_network_name(arch)
    _check_compatible(synset, dataset)
    n_epochs, augmentation = evaluation_plan(synset, arch, dataset.name, epochs)
    return _evaluate(
        synset.images, synset.labels, dataset, arch, num_eval=num_eval, epochs=n_epochs,
        augmentation=augmentation, seed=seed, device=device, progress=progress,
        desc=f"eval {synset.method} on {arch}", vectorize=vectorize, bf16=bf16, channels_last=channels_last,
    )


def evaluate_whole_dataset(
    dataset: Dataset,
    arch: str,
    *,
    num_eval: int = 5,
    epochs: int = WHOLE_DATASET_EPOCHS,
    seed: int = 0,
    device: Optional[torch.device | str] = None,
    progress: bool = False,
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
) -> EvalResult:
    """The "whole dataset" baseline: the same protocol trained on the full training set.

    Augmentation follows DC's rule (MNIST / ConvNetBN); the default epoch count is
    :data:`WHOLE_DATASET_EPOCHS`."""
    arch = canonical_network_name(arch)
    _, augmentation = evaluation_plan(None, arch, dataset.name, epochs)
    return _evaluate(
        dataset.train.images, dataset.train.labels, dataset, arch, num_eval=num_eval, epochs=epochs,
        augmentation=augmentation, seed=seed, device=device, progress=progress,
        desc=f"whole {dataset.name} on {arch}", vectorize=vectorize, bf16=bf16, channels_last=channels_last,
    )


