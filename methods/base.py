"""The method interface every condensation method implements (:class:`Method`).

A method is a small object with a ``name``, a typed, frozen ``config`` dataclass holding the
paper's defaults (:mod:`methods.config`), and one call::

    method.condense(real: ClassData, ipc: int, *, seed: int, context: RunContext) -> SyntheticSet

``methods`` works on tensors only: it never opens a dataset or a file by name. Everything a
method needs from the outside (device, progress bars, checkpoint storage, a cache for trained
feature networks) comes in through :class:`~methods.context.RunContext`, which ``benchmarks``
fills in. Methods are registered by name in :mod:`methods.registry`, with the metadata the rest
of the suite reads (display name, family, table order, variants).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Mapping, Optional

from torch import Tensor

from methods.augment import default_dsa_strategy
from methods.config import MethodConfig
from methods.context import RunContext
from methods.protocol import EvalPlan
from methods.realdata import ClassData
from methods.synset import SyntheticSet
from methods.zca import ZCA


class Method(abc.ABC):
    """Base class: subclasses set ``name``, ``config_class`` and implement ``condense``.

    How the method's sets are evaluated is :meth:`eval_plan`. Its default reads two hooks:
    ``eval_epochs_no_aug``, the number of evaluation epochs the method's paper used when no
    augmentation is active (300 for DC and the coresets, 600 for CAFE, 1000 for DM), and
    ``uses_dsa_in_eval``, whether evaluation trains with DSA (DSA, DM and the ``dsa=True``
    variants). A method whose protocol differs in other fields overrides :meth:`eval_plan`.
    """

    name: ClassVar[str] = "method"
    config_class: ClassVar[type] = MethodConfig
    learned: ClassVar[bool] = True
    eval_epochs_no_aug: ClassVar[int] = 300

    def __init__(self, config: Optional[Any] = None, *, name: Optional[str] = None) -> None:
        self.config = config if config is not None else self.config_class()
        if name is not None:
            self.name = name

    @classmethod
    def components(cls, config: Mapping[str, Any]) -> dict[str, bool]:
        """Ablation switches (component name -> on/off) of a recorded ``config``; the
        ablation table has one column per component. Methods without components return {}."""
        return {}

    def uses_dsa_in_eval(self) -> bool:
        return bool(getattr(self.config, "dsa", False))

    def eval_plan(self, real: ClassData) -> EvalPlan:
        """The evaluation plan of this method's paper for sets condensed from ``real``: the
        shared protocol (:mod:`methods.protocol`) with DSA (the config's ``dsa_strategy`` or
        DSA's per-dataset default) when :meth:`uses_dsa_in_eval`, and
        ``eval_epochs_no_aug`` epochs without augmentation."""
        dsa = self.uses_dsa_in_eval()
        strategy = None
        if dsa:
            strategy = getattr(self.config, "dsa_strategy", None) or default_dsa_strategy(real.name, real.flip_preserves_label)
        return EvalPlan(dsa=dsa, dsa_strategy=strategy, epochs_no_aug=int(self.eval_epochs_no_aug))

    def eval_defaults(self, real: ClassData) -> dict[str, Any]:
        """The format-1 summary of :meth:`eval_plan` (``dsa``, ``dsa_strategy``, ``epochs_no_aug``)."""
        return self.eval_plan(real).eval_defaults()

    @abc.abstractmethod
    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        """Condense ``real`` into ``ipc`` images per class; every draw seeded by ``seed``."""

    def _selection(self, real: ClassData, ipc: int, seed: int, indices: Tensor, cost: dict[str, float]) -> SyntheticSet:
        """:meth:`_synset` of a coreset: the training images at ``indices`` (class-major), their
        labels and the indices themselves."""
        return self._synset(real, ipc, seed, real.images[indices], real.labels[indices], cost, indices=indices)

    def _synset(
        self,
        real: ClassData,
        ipc: int,
        seed: int,
        images: Tensor,
        labels: Tensor,
        cost: dict[str, float],
        indices: Optional[Tensor] = None,
        extra: Optional[dict[str, Any]] = None,
        *,
        soft_labels: Optional[Tensor] = None,
        learned_lr: Optional[float] = None,
        zca: Optional[ZCA] = None,
    ) -> SyntheticSet:
        """Package a result with the metadata every method records and its evaluation plan.

        ``soft_labels`` (N, num_classes logits), ``learned_lr`` and ``zca`` are stored with the
        set; each switches the plan of :meth:`eval_plan` to use it unless that plan already
        does (hard labels -> ``labels='soft', loss='soft_ce'``; ``lr_source='learned'``;
        ``zca=True``)."""
        plan = self.eval_plan(real)
        if soft_labels is not None and plan.labels == "hard":
            plan = dataclasses.replace(plan, labels="soft", loss="soft_ce")
        if learned_lr is not None and plan.lr_source == "fixed":
            plan = dataclasses.replace(plan, lr_source="learned")
        if zca is not None and not plan.zca:
            plan = dataclasses.replace(plan, zca=True)
        return SyntheticSet(
            images=images.detach().cpu(),
            labels=labels.detach().cpu().long(),
            method=self.name,
            config=self.config.to_dict(),
            seed=seed,
            ipc=ipc,
            num_classes=real.num_classes,
            cost=cost,
            indices=None if indices is None else indices.detach().cpu().long(),
            dataset=real.name,
            mean=tuple(real.mean),
            std=tuple(real.std),
            class_names=real.class_names,
            eval_plan=plan,
            extra=extra or {},
            soft_labels=None if soft_labels is None else soft_labels.detach().cpu().float(),
            learned_lr=None if learned_lr is None else float(learned_lr),
            zca=zca,
        )
