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
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from methods.augment import default_dsa_strategy
from methods.config import MethodConfig
from methods.context import RunContext
from methods.loop import LoopState
from methods.realdata import ClassData
from methods.synset import SyntheticSet


class Method(abc.ABC):
    """Base class: subclasses set ``name``, ``config_class`` and implement ``condense``.

    ``eval_epochs_no_aug`` is the number of evaluation epochs the method's paper used when no
    augmentation is active (300 for DC and the coresets, 600 for CAFE); ``uses_dsa_in_eval``
    decides whether evaluation trains with DSA (DSA, DM and the ``dsa=True`` variants).
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

    def eval_defaults(self, real: ClassData) -> dict[str, Any]:
        dsa = self.uses_dsa_in_eval()
        strategy = None
        if dsa:
            strategy = getattr(self.config, "dsa_strategy", None) or default_dsa_strategy(real.name)
        return {"dsa": dsa, "dsa_strategy": strategy, "epochs_no_aug": self.eval_epochs_no_aug}

    @abc.abstractmethod
    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        """Condense ``real`` into ``ipc`` images per class; every draw seeded by ``seed``."""

    def _loop_state(
        self,
        images: Tensor,
        optimizer: torch.optim.Optimizer,
        generators: Mapping[str, torch.Generator],
        counters: dict[str, float],
        *,
        seed: int,
        ipc: int,
        history: Optional[list] = None,
    ) -> "LoopState":
        """The :class:`LoopState` of one run of this method; its checkpoints carry the run's
        identity (method, seed, IPC), so another run's checkpoint is refused on restore."""
        return LoopState(images, optimizer, generators, counters, history=history,
                         identity={"method": self.name, "seed": int(seed), "ipc": int(ipc)})

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
    ) -> SyntheticSet:
        """Package a result with the metadata every method records."""
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
            eval_defaults=self.eval_defaults(real),
            extra=extra or {},
        )
