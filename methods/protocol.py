"""The evaluation plan: how a synthetic set is evaluated, as one typed, frozen object.

A method declares how its paper evaluated its sets (:meth:`methods.base.Method.eval_plan`);
the :class:`~methods.synset.SyntheticSet` carries that :class:`EvalPlan` in its file and the
evaluator (``benchmarks.evaluate``) executes it. A user changes any field for a comparison
(``condbench evaluate --eval-set key=value``, the ``eval:`` key of a sweep) through
:func:`plan_problems` (every problem at once) and :func:`apply_overrides`.

The defaults are the protocol shared by DC, DSA, DM and CAFE, as each paper's experimental
settings describe it (Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching",
ICLR 2021; Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation",
ICML 2021; Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023; Wang et
al., "CAFE: Learning to Condense Dataset by Aligning Features", CVPR 2022) and as their
released ``evaluate_synset`` runs it:

* fresh randomly initialised networks trained on the synthetic set with **hard labels** and
  cross-entropy; SGD with learning rate 0.01, momentum 0.9, weight decay 5e-4, batch 256;
* ``E + 1`` epochs; after epoch ``E // 2 + 1`` the learning rate is multiplied by 0.1 and the
  optimiser is re-created, so momentum restarts (``schedule='reference_step'``);
* ``E`` = 1000 when any training augmentation is active, otherwise the method's
  ``epochs_no_aug`` (300 for DC and the coresets, 600 in CAFE's code, 1000 for DM, whose
  script sets ``epoch_eval_train`` to 1000);
* augmentation ``'auto'``: DSA when the method's paper evaluated with it (DSA, DM and the
  ``dsa=True`` variants; ``dsa`` / ``dsa_strategy`` below), else DC's augmentation where the
  reference turns it on (MNIST, or any dataset on ``ConvNetBN``), else none;
* the test accuracy of the **final** epoch is reported (``selection='final'``).

Fields beyond the published protocol, for methods the four papers do not cover:

* ``labels='soft'`` with ``loss='soft_ce'`` or ``'kl'`` and a ``temperature`` train on the
  set's per-image soft labels (logits; the target distribution is ``softmax(logits / T)``),
  as label-learning methods do (Cazenavette et al., "Dataset Distillation by Matching Training
  Trajectories", CVPR 2022, and its soft-label follow-ups; the KL form with the ``T**2``
  factor is Hinton et al., "Distilling the Knowledge in a Neural Network", 2015, §2);
* ``lr_source='learned'`` uses the learning rate stored with the set (trajectory matching
  learns one alongside the images, Cazenavette et al. 2022);
* ``optimizer='adam'`` and the ``'cosine'`` / ``'constant'`` schedules;
* ``zca``: the set lives in ZCA-whitened space (whitening stored with the set, see
  :mod:`methods.zca`); the evaluator whitens the test images and any real training images with
  it, as KIP and MTT evaluate their ZCA sets;
* ``selection='best_val'``: the test accuracy at the epoch with the best accuracy on a seeded,
  stratified ``val_fraction`` of the **training** set (never the test set). Deliberate
  difference from the papers, which report the final epoch; it is off by default. The
  synthetic set was condensed from the full training set, so these validation images were
  seen by the method: the selection is optimistic about the epoch, never about the test set.

Augmentations are composable typed objects (:class:`Augmentation`, one registry): a plan's
``augmentation`` string is ``'auto'``, ``'none'`` or terms joined by ``+``, each
``name[:argument]`` (``'dsa:color_crop'``, ``'dc:crop_noise'``, ``'dc'``, ``'dsa'``).
:meth:`EvalPlan.resolve` turns the plan into concrete objects for one dataset and
architecture; new kinds (CutMix, Mixup) register with :func:`register_augmentation`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Optional

from methods.errors import MethodError
from methods.registry import Registry

SCHEDULES = ("reference_step", "cosine", "constant")

REFERENCE_LR = 0.01
REFERENCE_EPOCHS_WITH_AUG = 1000
REFERENCE_EPOCHS_NO_AUG = 300


# --------------------------------------------------------------------------------------------
# Augmentations
# --------------------------------------------------------------------------------------------


AUGMENTATIONS: Registry[type] = Registry("augmentation", MethodError)
"""Augmentation kinds by name (``dc``, ``dsa``); an entry is an :class:`Augmentation` subclass."""


def register_augmentation(name: str):
    """Class decorator: register an :class:`Augmentation` subclass under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        AUGMENTATIONS.add(name, cls)
        return cls

    return deco


@dataclass(frozen=True)
class Augmentation(abc.ABC):
    """One training-minibatch augmentation of the evaluation, fully resolved (no 'auto').

    Subclasses are frozen dataclasses registered with :func:`register_augmentation`; they
    describe the augmentation (its ``spec`` string is what records show) and the evaluator
    builds the callable from it. ``from_argument`` parses the part after ``name:`` (None when
    absent) for a dataset and architecture and returns None when the augmentation does not
    apply there; ``argument_problem`` checks that part without any dataset."""

    name: ClassVar[str] = ""

    @property
    @abc.abstractmethod
    def spec(self) -> str:
        """``name:argument`` as records show it."""

    @classmethod
    def argument_problem(cls, argument: Optional[str]) -> Optional[str]:
        return None

    @classmethod
    @abc.abstractmethod
    def from_argument(cls, argument: Optional[str], plan: "EvalPlan", dataset_name: str,
                      arch: str) -> Optional["Augmentation"]:
        """The augmentation for ``dataset_name`` / ``arch`` (None: it does not apply there)."""


DC_STRATEGIES = ("crop_scale_rotate", "crop_noise")


def dc_strategy(dataset_name: str, arch: str) -> Optional[str]:
    """The reference ``get_daparam`` rule for DC's evaluation augmentation; None = none.

    ``'crop_noise'`` on ``ConvNetBN`` (checked last in the reference, so it wins), else
    ``'crop_scale_rotate'`` for MNIST, else none. The bundled ``digits`` dataset gets none: the
    rule names MNIST only."""
    if str(arch).lower() == "convnetbn":
        return "crop_noise"
    if str(dataset_name).lower() == "mnist":
        return "crop_scale_rotate"
    return None


@register_augmentation("dc")
@dataclass(frozen=True)
class DCAugmentation(Augmentation):
    """DC's non-differentiable evaluation augmentation (Zhao et al. 2021, reference
    ``augment``): one op per image from ``strategy``. Without an argument the reference rule
    (:func:`dc_strategy`) picks the strategy, or no augmentation."""

    strategy: str = "crop_scale_rotate"

    @property
    def spec(self) -> str:
        return f"dc:{self.strategy}"

    @classmethod
    def argument_problem(cls, argument: Optional[str]) -> Optional[str]:
        if argument is None:
            return None
        ops = ("crop", "scale", "rotate", "noise")
        bad = [op for op in argument.split("_") if op not in ops]
        if bad or not argument:
            return (f"unknown DC augmentation op(s) {bad or [argument]} in 'dc:{argument}'; ops: "
                    f"{', '.join(ops)} joined with '_' (e.g. {', '.join(DC_STRATEGIES)})")
        return None

    @classmethod
    def from_argument(cls, argument, plan, dataset_name, arch):
        strategy = argument if argument is not None else dc_strategy(dataset_name, arch)
        return None if strategy is None else cls(strategy)


@register_augmentation("dsa")
@dataclass(frozen=True)
class DSAAugmentation(Augmentation):
    """Differentiable siamese augmentation used as a plain training augmentation (Zhao &
    Bilen, ICML 2021; :mod:`methods.augment`): one op per minibatch, parameters per image. Without an argument
    the plan's ``dsa_strategy``, else DSA's per-dataset default."""

    strategy: str = "color_crop_cutout_flip_scale_rotate"

    @property
    def spec(self) -> str:
        return f"dsa:{self.strategy}"

    @classmethod
    def argument_problem(cls, argument: Optional[str]) -> Optional[str]:
        if argument is None:
            return None
        from methods.augment import parse_strategy

        try:
            if not parse_strategy(argument):
                return "augmentation 'dsa:' needs a strategy (e.g. dsa:color_crop_cutout); use 'none' for none"
        except MethodError as exc:
            return str(exc)
        return None

    @classmethod
    def from_argument(cls, argument, plan, dataset_name, arch):
        from methods.augment import default_dsa_strategy

        return cls(argument or plan.dsa_strategy or default_dsa_strategy(dataset_name))


def _terms(spec: str) -> list[tuple[str, Optional[str]]]:
    out = []
    for term in spec.split("+"):
        name, sep, argument = term.strip().partition(":")
        out.append((name.strip().lower(), argument.strip() if sep else None))
    return out


def augmentation_problems(spec: str) -> list[str]:
    """Every problem with an augmentation string (unknown kinds, bad arguments)."""
    if not isinstance(spec, str):
        return [f"augmentation must be a string, got {spec!r}"]
    if spec.strip().lower() in ("auto", "none"):
        return []
    problems = []
    for name, argument in _terms(spec):
        if name not in AUGMENTATIONS:
            problems.append(f"unknown augmentation '{name}' in '{spec}'; valid: auto, none, or "
                            + " / ".join(f"{n}[:...]" for n in AUGMENTATIONS.names()) + " joined with '+'")
            continue
        problem = AUGMENTATIONS.get(name).argument_problem(argument)
        if problem:
            problems.append(problem)
    return problems


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPlan:
    """How to evaluate a synthetic set (module docstring: the protocol and its citations).

    ``labels``: ``'hard'`` (class ids) or ``'soft'`` (the set's soft-label logits);
    ``loss``: ``'ce'`` (hard labels) or ``'soft_ce'`` / ``'kl'`` (soft labels) with
    ``temperature``; ``lr`` with ``lr_source`` (``'fixed'`` = ``lr``; ``'learned'`` = the
    set's learned learning rate); ``optimizer`` (``momentum`` is SGD's; Adam keeps its default
    betas), ``weight_decay``, ``batch_size``; ``schedule``; ``epochs`` (None = the reference
    rule: ``epochs_with_aug`` with any augmentation, else ``epochs_no_aug``; training runs
    ``epochs + 1`` passes); ``augmentation`` (see the module docstring); ``dsa`` /
    ``dsa_strategy``: whether the method's paper evaluated with DSA and with which strategy
    (None = DSA's per-dataset default), read by ``augmentation='auto'``; ``zca``; ``selection``
    with ``val_fraction``."""

    labels: Literal["hard", "soft"] = "hard"
    loss: Literal["ce", "soft_ce", "kl"] = "ce"
    temperature: float = 1.0
    lr: float = REFERENCE_LR
    lr_source: Literal["fixed", "learned"] = "fixed"
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: Literal["reference_step", "cosine", "constant"] = "reference_step"
    epochs: Optional[int] = None
    epochs_no_aug: int = REFERENCE_EPOCHS_NO_AUG
    epochs_with_aug: int = REFERENCE_EPOCHS_WITH_AUG
    augmentation: str = "auto"
    dsa: bool = False
    dsa_strategy: Optional[str] = None
    zca: bool = False
    selection: Literal["final", "best_val"] = "final"
    val_fraction: float = 0.1

    # -- validation -------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every value problem of this plan (types are checked by :func:`plan_problems`)."""
        p: list[str] = []
        if self.loss == "ce" and self.labels == "soft":
            p.append("loss 'ce' trains on class ids; with labels=soft use loss=soft_ce or loss=kl")
        if self.loss != "ce" and self.labels == "hard":
            p.append(f"loss '{self.loss}' trains on soft labels; with labels=hard use loss=ce")
        if not self.temperature > 0:
            p.append(f"temperature must be > 0, got {self.temperature}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            p.append(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            p.append(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            p.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size <= 0:
            p.append(f"batch_size must be a positive integer, got {self.batch_size}")
        for name in ("epochs", "epochs_no_aug", "epochs_with_aug"):
            value = getattr(self, name)
            if value is not None and value < 0:
                p.append(f"{name} must be >= 0, got {value}")
        if not 0 < self.val_fraction < 1:
            p.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        p.extend(augmentation_problems(self.augmentation))
        strategy_problem = DSAAugmentation.argument_problem(self.dsa_strategy)
        if strategy_problem:
            p.append(f"dsa_strategy: {strategy_problem}")
        return p

    def validate(self) -> None:
        """Raise :class:`MethodError` listing every problem (called by ``build_config``)."""
        problems = self.problems()
        if problems:
            raise MethodError("invalid evaluation plan: " + "; ".join(problems))

    def set_problems(self, *, has_soft_labels: bool, has_learned_lr: bool, has_zca: bool) -> list[str]:
        """What this plan needs from the synthetic set that the set lacks."""
        p = []
        if self.labels == "soft" and not has_soft_labels:
            p.append("the plan trains on soft labels (labels=soft) but the set stores none; use labels=hard")
        if self.lr_source == "learned" and not has_learned_lr:
            p.append("the plan uses the set's learned lr (lr_source=learned) but the set stores none; "
                     "use lr_source=fixed")
        if self.zca and not has_zca:
            p.append("the plan evaluates in ZCA space (zca=true) but the set stores no ZCA whitening; use zca=false")
        return p

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain value (what the synthetic-set file and records store)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EvalPlan":
        """The plan of a stored dict (missing fields take the defaults); raises
        :class:`MethodError` on unknown keys, wrong types or invalid values."""
        problems = plan_problems(d)
        if problems:
            raise MethodError("invalid evaluation plan: " + "; ".join(problems))
        return _merged(cls(), _plan_overrides(d))

    @classmethod
    def from_eval_defaults(cls, eval_defaults: Mapping[str, Any]) -> "EvalPlan":
        """The plan equivalent to a format-1 file's ``eval_defaults`` (``dsa``, ``dsa_strategy``,
        ``epochs_no_aug``); evaluates exactly as format 1 did."""
        d = dict(eval_defaults or {})
        return cls(dsa=bool(d.get("dsa")), dsa_strategy=d.get("dsa_strategy") or None,
                   epochs_no_aug=int(d.get("epochs_no_aug") or REFERENCE_EPOCHS_NO_AUG))

    def eval_defaults(self) -> dict[str, Any]:
        """The format-1 summary of this plan (``dsa``, ``dsa_strategy``, ``epochs_no_aug``)."""
        return {"dsa": self.dsa, "dsa_strategy": self.dsa_strategy, "epochs_no_aug": self.epochs_no_aug}

    # -- resolution -------------------------------------------------------------------------
    def augmentations(self, dataset_name: str, arch: str) -> tuple[Augmentation, ...]:
        """The concrete augmentations for ``dataset_name`` and ``arch`` ('auto' resolved)."""
        spec = self.augmentation.strip()
        if spec.lower() == "none":
            return ()
        if spec.lower() == "auto":
            terms: list[tuple[str, Optional[str]]] = [("dsa", None)] if self.dsa else [("dc", None)]
        else:
            terms = _terms(spec)
        out = []
        for name, argument in terms:
            aug = AUGMENTATIONS.get(name).from_argument(argument, self, dataset_name, arch)
            if aug is not None:
                out.append(aug)
        return tuple(out)

    def resolve(self, dataset_name: str, arch: str, *, learned_lr: Optional[float] = None) -> "ResolvedPlan":
        """This plan made concrete for one dataset and architecture (epochs, augmentations,
        the learning rate actually used)."""
        augs = self.augmentations(dataset_name, arch)
        epochs = self.epochs
        if epochs is None:
            epochs = self.epochs_with_aug if augs else self.epochs_no_aug
        if int(epochs) < 0:
            raise MethodError(f"evaluation epochs must be >= 0, got {epochs}")
        if self.lr_source == "learned":
            if learned_lr is None:
                raise MethodError("the plan uses the set's learned lr (lr_source=learned) but the set stores "
                                  "none; use lr_source=fixed")
            lr = float(learned_lr)
        else:
            lr = float(self.lr)
        return ResolvedPlan(plan=self, epochs=int(epochs), augmentations=augs, lr=lr)


@dataclass(frozen=True)
class ResolvedPlan:
    """An :class:`EvalPlan` made concrete for one dataset and architecture."""

    plan: EvalPlan
    epochs: int
    augmentations: tuple[Augmentation, ...]
    lr: float

    @property
    def augmentation(self) -> str:
        """``'none'`` or the specs joined by ``+`` (``'dsa:color_crop'``, ``'dc:crop_noise'``)."""
        return "+".join(a.spec for a in self.augmentations) or "none"

    def schedule(self) -> list[tuple[float, bool]]:
        """One ``(lr, new_optimizer)`` per training pass (``epochs + 1`` of them).

        ``reference_step``: ``lr`` until epoch ``E // 2 + 1``, then ``0.1 * lr`` with a new
        optimiser (reference ``evaluate_synset``); ``cosine``: ``lr * (1 + cos(pi * ep /
        (E + 1))) / 2``, one optimiser; ``constant``: ``lr`` throughout."""
        return epoch_schedule(self.plan.schedule, self.epochs, self.lr)

    def to_dict(self) -> dict[str, Any]:
        """The effective plan, every field: epochs, augmentation and lr as actually used."""
        d = self.plan.to_dict()
        d.update(epochs=self.epochs, augmentation=self.augmentation, lr=self.lr)
        return d


def epoch_schedule(schedule: str, epochs: int, lr: float) -> list[tuple[float, bool]]:
    """``(lr, new_optimizer)`` for each of the ``epochs + 1`` passes (see :meth:`ResolvedPlan.schedule`)."""
    if schedule == "reference_step":
        drop_after = epochs // 2 + 1
        out, current = [], lr
        for ep in range(epochs + 1):
            new = ep == 0
            if ep == drop_after + 1:
                current = current * 0.1
                new = True
            out.append((current, new))
        return out
    if schedule == "cosine":
        return [(lr * 0.5 * (1.0 + math.cos(math.pi * ep / (epochs + 1))), ep == 0) for ep in range(epochs + 1)]
    if schedule == "constant":
        return [(lr, ep == 0) for ep in range(epochs + 1)]
    raise MethodError(f"unknown schedule '{schedule}'; valid: {', '.join(SCHEDULES)}")


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def plan_keys() -> list[str]:
    """The field names a user may override."""
    return [f.name for f in dataclasses.fields(EvalPlan)]


def _plan_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in dict(overrides or {}).items()}


def plan_problems(overrides: Mapping[str, Any], base: Optional[EvalPlan] = None) -> list[str]:
    """Every problem with ``overrides`` of an evaluation plan, at once: unknown keys (the
    message lists the valid ones), wrong types, invalid values and inconsistent combinations
    (checked on ``base``, default :class:`EvalPlan`, with the overrides applied)."""
    from methods.config import config_problems

    if not isinstance(overrides, Mapping):
        return [f"evaluation plan overrides must be a mapping of key: value, got {type(overrides).__name__}"]
    overrides = _plan_overrides(overrides)
    problems = [p.replace("config key", "eval plan key", 1).replace(" for EvalPlan", "", 1)
                for p in config_problems(EvalPlan, overrides)]
    if problems:
        return problems
    return _merged(base or EvalPlan(), overrides).problems()


def _merged(base: EvalPlan, overrides: Mapping[str, Any]) -> EvalPlan:
    """``base`` with type-checked ``overrides`` applied, unvalidated. Overriding ``labels``
    without ``loss`` switches the loss with it (hard -> ce, soft -> soft_ce)."""
    from methods.config import build_config

    values = dict(overrides)
    if "labels" in values and "loss" not in values:
        if values["labels"] == "hard":
            values["loss"] = "ce"
        elif values["labels"] == "soft" and base.loss == "ce":
            values["loss"] = "soft_ce"
    coerced = dataclasses.asdict(build_config(_Unvalidated, values))
    return dataclasses.replace(base, **{k: coerced[k] for k in values})


@dataclass(frozen=True)
class _Unvalidated(EvalPlan):
    """EvalPlan without the value check, to coerce override values field by field."""

    def validate(self) -> None:
        return None


def apply_overrides(plan: EvalPlan, overrides: Optional[Mapping[str, Any]]) -> EvalPlan:
    """``plan`` with ``overrides`` applied; raises :class:`MethodError` listing every problem."""
    if not overrides:
        return plan
    problems = plan_problems(overrides, plan)
    if problems:
        raise MethodError("; ".join(problems))
    return _merged(plan, _plan_overrides(overrides))
