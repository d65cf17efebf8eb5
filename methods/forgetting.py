"""Forgetting coreset: per class, the training images the network forgets most often while it
trains on the full training set (Toneva et al., "An Empirical Study of Example Forgetting during
Deep Neural Network Learning", ICLR 2019), as the "Forgetting" coreset baseline of DC's Table 1
(Zhao et al., ICLR 2021, §4.1; docs/reference.md §8).

Statistic (Toneva et al., §2). Each training image is *presented* once per epoch, in its
minibatch; at presentation t it is correct when the arg-max of that forward pass (before the
update) is its label. A *forgetting event* is a presentation t+1 at which the image is wrong
although it was correct at presentation t (a correct -> wrong transition between consecutive
presentations). An image that is never correct at any presentation was never learned; Toneva's
convention counts it as forgotten infinitely often, so it ranks above every learned image.
:func:`count_forgetting_events` computes the counts from the ``(presentations, N)`` history.

Which end. DC's baseline keeps the *most* forgotten images per class. DC §4.1 lists Forgetting
(Toneva et al., 2019) among its four coreset baselines as the one that selects the training
samples that are easy to forget; that wording is recalled from the paper, not confirmed here:
the stored copy of the DC paper text reachable from this project (the ICLR 2021 OpenReview
text, ``mSAKhLYLSsl``) is retrievable only up to its introduction. docs/reference.md §8 states
the same end, and it is the end Toneva et al. argue for (the frequently forgotten examples are
the informative ones; removing unforgettable examples costs little accuracy). The opposite end
(``keep='least'``) is an ablation.

Deliberate choices:

* The network and budget are those of the herding/k-center feature network
  (:class:`~methods.coreset_features.FeatureNetConfig`: the reference ConvNet, 20 epochs, SGD
  0.01 / 0.9 / 5e-4, batch 256, lr x0.1 at half), recorded in the same training run and cached
  in the same entry (:func:`methods.coreset_features.presentation_history`), so forgetting,
  herding and k-center on the same data, seed and budget train one network. Toneva et al.
  count over a ResNet18's whole CIFAR-10 training and DeepCore's implementation defaults to
  200 epochs; DC does not state its forgetting network. Raise ``feature_epochs`` to count over
  more presentations.
* Ties (equal counts, e.g. all the unforgettable images, or all the never-learned ones) are
  broken by a seeded random order: per class, in class order, a permutation of the class's
  images drawn from the third seed of the run seed's stream
  (:func:`methods.coreset_features.feature_seeds`), followed by a stable sort on the count. A
  tie is therefore not resolved by the dataset's file order, and the same seed gives the same
  selection.

Coresets are evaluated with DC's protocol (300 epochs when no augmentation is active).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor

from methods.base import Method
from methods.context import CostMeter, RunContext
from methods.coreset_features import FeatureNetConfig, feature_seeds, presentation_history
from methods.errors import MethodError
from methods.realdata import ClassData
from methods.registry import register
from methods.rng import make_generator
from methods.synset import SyntheticSet


def count_forgetting_events(correct: Tensor) -> tuple[Tensor, Tensor]:
    """Forgetting events per image from a ``(presentations, N)`` boolean history
    (``correct[t, i]``: image ``i`` classified correctly at its presentation ``t``).

    Returns ``(events, learned)``: ``events[i]`` (int64) counts the t with ``correct[t, i]``
    and not ``correct[t + 1, i]``; ``learned[i]`` is whether image ``i`` was ever correct."""
    if correct.ndim != 2:
        raise MethodError(
            f"the presentation history must be a 2-D (presentations, images) matrix, "
            f"got shape {tuple(correct.shape)}"
        )
    c = correct.bool()
    if c.shape[0] < 2:
        events = torch.zeros(c.shape[1], dtype=torch.long, device=c.device)
    else:
        events = (c[:-1] & ~c[1:]).sum(0)
    return events, c.any(0)


def forgetting_scores(correct: Tensor) -> Tensor:
    """Float64 forgetting count per image, +inf for the never-learned ones (Toneva's
    convention: forgotten infinitely often)."""
    events, learned = count_forgetting_events(correct)
    scores = events.double()
    return torch.where(learned, scores, torch.full_like(scores, float("inf")))


def forgetting_select(
    scores: Tensor,
    k: int,
    *,
    keep: Literal["most", "least"],
    generator: torch.Generator,
    demote: Optional[Tensor] = None,
) -> Tensor:
    """Indices (LongTensor, selection order) of ``k`` of the ``n`` entries of ``scores`` with
    the largest (``keep='most'``) or smallest (``'least'``) scores. Ties keep the order of a
    random permutation drawn from ``generator`` (one ``randperm(n)``), so they are broken
    randomly and reproducibly. ``demote`` (boolean, ``n``): those entries rank after every
    other one, in the same order among themselves (``never_learned='last'``); ``None`` leaves
    the ranking as it is."""
    if scores.ndim != 1:
        raise MethodError(f"forgetting scores must be a 1-D vector, got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise MethodError(f"the number of images to select must be a positive integer, got {k!r}")
    if k > n:
        raise MethodError(f"cannot select {k} images from {n} candidates")
    if keep not in ("most", "least"):
        raise MethodError(f"keep must be 'most' or 'least', got {keep!r}")
    perm = torch.randperm(n, generator=generator)
    ranked = torch.sort(scores.cpu()[perm], descending=keep == "most", stable=True).indices
    if demote is not None:
        if demote.shape != scores.shape:
            raise MethodError(f"demote must have the scores' shape {tuple(scores.shape)}, got {tuple(demote.shape)}")
        last = demote.cpu().bool()[perm][ranked].to(torch.int8)
        ranked = ranked[torch.sort(last, stable=True).indices]
    return perm[ranked[:k]].to(scores.device)


@dataclass(frozen=True)
class ForgettingConfig(FeatureNetConfig):
    """Forgetting coreset settings.

    * the network and its budget (:class:`~methods.coreset_features.FeatureNetConfig`: the
      reference ConvNet, ``feature_epochs=20``, SGD 0.01 / 0.9 / 5e-4, batch 256; the same
      run as the herding/k-center feature network). A forgetting event compares two
      presentations, so ``feature_epochs`` must be at least 2.
    * ``keep``: ``'most'`` (default, DC's baseline: the most forgotten images, never-learned
      first) or ``'least'`` (the unforgettable end; an ablation).
    * ``never_learned``: ``'infinite'`` (default, Toneva's convention: an image never correct
      counts as forgotten infinitely often) or ``'last'`` (such images rank after every learned
      one, at either end, and are chosen only when a class has fewer learned images than
      ``ipc``). Where every class has at least ``ipc`` never-learned images, the default
      selects only those (the README's fidelity section measures both on FashionMNIST).
    """

    keep: Literal["most", "least"] = "most"
    never_learned: Literal["infinite", "last"] = "infinite"

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.keep not in ("most", "least"):
            problems.append(f"keep must be 'most' or 'least', got {self.keep!r}")
        if self.never_learned not in ("infinite", "last"):
            problems.append(f"never_learned must be 'infinite' or 'last', got {self.never_learned!r}")
        if 0 <= self.feature_epochs < 2:
            problems.append(
                f"the forgetting coreset needs feature_epochs >= 2 (a forgetting event compares "
                f"two presentations of an image), got {self.feature_epochs}"
            )
        return problems


@register(
    "forgetting",
    display="Forgetting",
    family="coreset",
    order=40,
    description="Forgetting coreset: per class, the images most often forgotten while training on the full set (Toneva et al.)",
)
class Forgetting(Method):
    """Forgetting coreset (Toneva et al., ICLR 2019; DC's Table 1 baseline): per class, the
    ``ipc`` images with the most forgetting events in the cached full-data training run."""

    config_class = ForgettingConfig
    learned = False
    eval_epochs_no_aug = 300

    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        """Select ``ipc`` real images per class by forgetting count (class-major, each class
        in selection order); ``context.iterations`` does not apply and is ignored. Cost
        figures: the feature stage's (``feature_cache_hit``, ``feature_train_time_s``, ...),
        ``selection_time_s``, and ``never_learned`` / ``unforgettable`` (images of the whole
        training set never correct / learned and never forgotten)."""
        real.validate_ipc(ipc)
        context = context or RunContext(device=real.device)
        meter = CostMeter(context.device)
        history, figures = presentation_history(real, seed, self.config, context)
        start = time.perf_counter()
        events, learned = count_forgetting_events(history)
        scores = forgetting_scores(history)
        generator = make_generator(feature_seeds(seed)[2])
        chosen = []
        for c in range(real.num_classes):
            idx = real.indices_by_class[c].cpu()
            demote = ~learned[idx] if self.config.never_learned == "last" else None
            local = forgetting_select(scores[idx], ipc, keep=self.config.keep, generator=generator, demote=demote)
            chosen.append(idx[local])
        indices = torch.cat(chosen).to(real.device)
        figures["selection_time_s"] = time.perf_counter() - start
        figures["never_learned"] = float((~learned).sum())
        figures["unforgettable"] = float((learned & (events == 0)).sum())
        return self._selection(real, ipc, seed, indices, meter.figures(iterations=0, **figures))
