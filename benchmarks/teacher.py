"""Soft-label evaluation with a teacher: any synthetic set relabelled by a network trained on
the whole training set.

The 2025 debate about what distilled sets buy (Li et al., "DD-Ranking: Rethinking the
Evaluation of Dataset Distillation", arXiv 2505.13300) is that soft labels from a trained
teacher, not the synthetic images, explain much of the recent gains: random real images
evaluated with the same teacher's labels come close. This module makes that a protocol option
for every set, so a method's gain over random can be measured under both label types.

An evaluation-plan override ``labels: teacher`` (``condbench evaluate --eval-set
labels=teacher``, the ``eval:`` key of a sweep) asks for it; the teacher's own keys are

* ``teacher_arch``: the teacher network (default: the evaluated architecture);
* ``teacher_epochs``: its training passes over the whole training set (default
  :data:`DEFAULT_TEACHER_EPOCHS`, the whole-dataset baseline's);
* ``teacher_per_view``: ``true`` relabels every augmented training batch (one label per
  augmented view, as DD-Ranking's and SRe2L-style pipelines do); ``false`` (default) labels
  each synthetic image once, before training.

:func:`split_overrides` turns such overrides into an :class:`methods.protocol.EvalPlan`
override (``labels='soft'`` with the plan's soft-label loss, ``'kl'`` unless ``loss`` is given,
and its ``temperature``) plus a :class:`TeacherSpec`. The teacher is trained once per
(dataset, data fingerprint, architecture, seed, epochs) and cached like the herding feature
network (a ``cache(key, compute)`` callable, :func:`benchmarks.storage.disk_cache`); its
logits at the plan's temperature are the targets (Hinton et al., "Distilling the Knowledge in
a Neural Network", 2015, §2). The record says ``labels: teacher`` and stores the teacher's
fields and test accuracy in the effective plan.

The teacher trains with the published evaluation protocol (SGD, lr 0.01, momentum 0.9, weight
decay 5e-4, batch 256, the reference step schedule, DC's augmentation rule) on hard labels.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn

from benchmarks import UserError

log = logging.getLogger("benchmarks.teacher")

TEACHER_LABELS = "teacher"
TEACHER_KEYS = ("teacher_arch", "teacher_epochs", "teacher_per_view")
DEFAULT_TEACHER_EPOCHS = 20
"""Teacher training passes by default: the whole-dataset baseline's (``benchmarks.evaluate``)."""

Cache = Callable[[str, Callable[[], dict]], dict]


class TeacherError(UserError):
    """A teacher that cannot label this set (another dataset, another class count, a bad spec)."""


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher labels the set: ``arch`` (None = the evaluated architecture), ``epochs``
    of training on the whole training set, and ``per_view`` (relabel every augmented batch)."""

    arch: Optional[str] = None
    epochs: int = DEFAULT_TEACHER_EPOCHS
    per_view: bool = False

    def plan_fields(self, arch: str) -> dict[str, Any]:
        """The fields a record's effective plan carries for this teacher."""
        return {"teacher_arch": self.arch or arch, "teacher_epochs": int(self.epochs),
                "teacher_per_view": bool(self.per_view)}


def _spec_problems(values: Mapping[str, Any]) -> list[str]:
    problems = []
    arch = values.get("teacher_arch")
    if arch is not None:
        from methods.networks import canonical_network_name

        try:
            canonical_network_name(arch)
        except Exception as exc:  # MethodError: unknown network
            problems.append(f"teacher_arch: {exc}")
    epochs = values.get("teacher_epochs", DEFAULT_TEACHER_EPOCHS)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        problems.append(f"teacher_epochs must be an integer >= 1, got {epochs!r}")
    per_view = values.get("teacher_per_view", False)
    if not isinstance(per_view, bool):
        problems.append(f"teacher_per_view must be true or false, got {per_view!r}")
    return problems


def split_overrides(overrides: Optional[Mapping[str, Any]]) -> tuple[dict[str, Any], Optional[TeacherSpec], list[str]]:
    """``(plan overrides, teacher spec or None, problems)`` of evaluation-plan overrides that
    may ask for teacher labels (module doc). ``labels: teacher`` becomes ``labels: soft`` with
    ``loss: kl`` unless a soft-label loss is given; the ``teacher_*`` keys are taken out.
    Problems: ``teacher_*`` keys without ``labels: teacher``, bad values, ``loss: ce``."""
    values = {str(k): v for k, v in dict(overrides or {}).items()}
    teacher_values = {k: values.pop(k) for k in TEACHER_KEYS if k in values}
    if values.get("labels") != TEACHER_LABELS:
        if teacher_values:
            return values, None, [f"{', '.join(sorted(teacher_values))} only apply with labels=teacher; "
                                  "add labels=teacher or remove them"]
        return values, None, []
    problems = _spec_problems(teacher_values)
    if values.get("loss") == "ce":
        problems.append("loss 'ce' trains on class ids; with labels=teacher use loss=kl or loss=soft_ce")
    values["labels"] = "soft"
    values.setdefault("loss", "kl")
    if problems:
        return values, None, problems
    arch = teacher_values.get("teacher_arch")
    if arch is not None:
        from methods.networks import canonical_network_name

        arch = canonical_network_name(arch)
    spec = TeacherSpec(arch=arch, epochs=int(teacher_values.get("teacher_epochs", DEFAULT_TEACHER_EPOCHS)),
                       per_view=bool(teacher_values.get("teacher_per_view", False)))
    return values, spec, []


def overrides_problems(overrides: Optional[Mapping[str, Any]]) -> list[str]:
    """Every problem of evaluation-plan overrides that may ask for teacher labels: the
    teacher's own (:func:`split_overrides`) and the plan's (:func:`methods.protocol.plan_problems`)."""
    from methods.protocol import plan_problems

    plan, _spec, problems = split_overrides(overrides)
    return problems + plan_problems(plan)


def canonical_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Valid overrides with canonical values (plan fields through the typed plan, the teacher
    architecture by its canonical name); the keys as given."""
    from methods.protocol import EvalPlan, apply_overrides

    plan, spec, problems = split_overrides(overrides)
    if problems:
        raise TeacherError("; ".join(problems))
    full = apply_overrides(EvalPlan(), plan).to_dict()
    out = {}
    for key in overrides:
        key = str(key)
        if key == "labels" and spec is not None:
            out[key] = TEACHER_LABELS
        elif key == "teacher_arch" and spec is not None:
            out[key] = spec.arch
        elif key in TEACHER_KEYS:
            out[key] = overrides[key]
        else:
            out[key] = full[key]
    return out


# --------------------------------------------------------------------------------------------
# The teacher network
# --------------------------------------------------------------------------------------------


def teacher_seed(seed: int, arch: str) -> int:
    """63-bit seed of the teacher network (SHA-256 of ``"condbench-teacher|seed|arch"``)."""
    text = f"condbench-teacher|{int(seed)}|{arch}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def teacher_cache_key(dataset: Any, arch: str, seed: int, epochs: int) -> str:
    """Cache key: dataset name, classes, geometry, training-set size and fingerprint,
    architecture, seed and epochs (everything that changes the teacher)."""
    from methods.coreset_features import data_fingerprint

    train = dataset.train
    geometry = f"{dataset.channel}x{dataset.im_size[0]}x{dataset.im_size[1]}"
    return (f"teacher|{dataset.name}|c{dataset.num_classes}|{geometry}|n{train.images.shape[0]}|"
            f"{data_fingerprint(train)}|{arch}|s{int(seed)}|e{int(epochs)}")


@dataclass
class Teacher:
    """A network trained on the whole training set of ``dataset`` that labels images."""

    net: nn.Module
    dataset: str
    num_classes: int
    arch: str
    seed: int
    epochs: int
    test_accuracy: float
    train_time_s: float
    cache_hit: bool

    def check_for(self, dataset_name: str, num_classes: int) -> None:
        """Raise :class:`TeacherError` when this teacher was trained for another dataset."""
        if self.dataset.lower() != str(dataset_name).lower() or self.num_classes != int(num_classes):
            raise TeacherError(
                f"the teacher was trained on '{self.dataset}' ({self.num_classes} classes) but the set is "
                f"evaluated on '{dataset_name}' ({num_classes} classes); train a teacher for '{dataset_name}'"
            )

    @torch.no_grad()
    def logits(self, images: Tensor, batch_size: int = 1024) -> Tensor:
        """Teacher logits (N, num_classes) of ``images`` (eval mode, no autograd)."""
        was = self.net.training
        self.net.eval()
        out = [self.net(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        self.net.train(was)
        return torch.cat(out).float() if out else images.new_zeros((0, self.num_classes))


def train_teacher(dataset: Any, arch: str, *, seed: int, epochs: int = DEFAULT_TEACHER_EPOCHS,
                  device: Optional[torch.device | str] = None, cache: Optional[Cache] = None) -> Teacher:
    """The teacher for ``dataset`` (a :class:`benchmarks.data.Dataset`): ``arch`` trained on
    the whole training set with the published protocol for ``epochs`` passes, from ``cache``
    when it holds one (the state dict and its figures are cached)."""
    from benchmarks.eval_networks import make_augment, test_accuracy
    from methods.networks import canonical_network_name, get_network
    from methods.protocol import EvalPlan, epoch_schedule
    from methods.rng import make_generator
    from methods.training import Heartbeat, make_optimizer, train_epoch

    arch = canonical_network_name(arch)
    device = torch.device(device) if device is not None else dataset.device
    gen = make_generator(teacher_seed(seed, arch))
    net = get_network(arch, dataset.channel, dataset.num_classes, dataset.im_size, generator=gen, device=device)
    trained: dict[str, float] = {}

    def compute() -> dict:
        plan = EvalPlan(epochs=int(epochs)).resolve(dataset.name, arch)
        augment = make_augment(plan.augmentations)
        x, y = dataset.train.images.to(device), dataset.train.labels.to(device)
        start = time.perf_counter()
        opt = None
        passes = list(epoch_schedule(plan.plan.schedule, plan.epochs, plan.lr))
        heartbeat = Heartbeat(log.info)
        log.info("teacher %s on %s: training %d passes over %d images", arch, dataset.name, len(passes), len(y))
        for ep, (lr, new) in enumerate(passes):
            if new or opt is None:
                opt = make_optimizer("sgd", net.parameters(), lr, momentum=plan.plan.momentum,
                                     weight_decay=plan.plan.weight_decay)
            train_epoch(net, x, y, opt, batch_size=plan.plan.batch_size, generator=gen, augment=augment,
                        on_step=lambda done, total, ep=ep: heartbeat.beat(
                            lambda: f"teacher {arch}: pass {ep + 1}/{len(passes)} ({done}/{total} images), "
                                    f"{time.perf_counter() - start:.0f} s"))
        trained["train_time_s"] = time.perf_counter() - start
        acc = test_accuracy(net, dataset.test_images.to(device), dataset.test_labels.to(device))
        return {"state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                "test_accuracy": torch.tensor(float(acc), dtype=torch.float64),
                "train_time_s": torch.tensor(trained["train_time_s"], dtype=torch.float64)}

    key = teacher_cache_key(dataset, arch, seed, epochs)
    entry = compute() if cache is None else cache(key, compute)
    hit = not trained
    if "state_dict" not in entry:
        raise TeacherError(f"the teacher cache entry for {key} holds no network; delete it and run again")
    if hit:
        try:
            net.load_state_dict({k: v.to(device) for k, v in entry["state_dict"].items()})
        except RuntimeError as exc:
            raise TeacherError(f"the cached teacher for {key} does not fit {arch} "
                               f"({str(exc).splitlines()[0]}); delete that cache entry and run again") from None
    net.eval()
    return Teacher(net=net, dataset=dataset.name, num_classes=dataset.num_classes, arch=arch, seed=int(seed),
                   epochs=int(epochs), test_accuracy=float(entry["test_accuracy"]),
                   train_time_s=float(entry["train_time_s"]), cache_hit=hit)


_MEMORY: dict[str, dict] = {}


def memory_cache(key: str, compute: Callable[[], dict]) -> dict:
    """The in-process cache used when no ``cache`` is given (one teacher per key per process)."""
    if key not in _MEMORY:
        _MEMORY[key] = compute()
    return _MEMORY[key]


class PerViewLabels:
    """One teacher label per augmented view: an augmentation wrapper that remembers the batch
    it produced and a soft-label loss that asks the teacher about exactly that batch (the
    labels passed by the training loop are ignored)."""

    def __init__(self, teacher: Teacher, augment: Optional[Callable], loss: Callable[[Tensor, Tensor], Tensor]):
        self.teacher, self.augment, self.loss = teacher, augment, loss
        self._batch: Optional[Tensor] = None

    def augment_fn(self, x: Tensor, generator: torch.Generator) -> Tensor:
        out = x if self.augment is None else self.augment(x, generator)
        self._batch = out.detach()
        return out

    def loss_fn(self, outputs: Tensor, _labels: Tensor) -> Tensor:
        if self._batch is None:
            raise RuntimeError("PerViewLabels.loss_fn called before augment_fn")
        return self.loss(outputs, self.teacher.logits(self._batch))


def with_teacher_fields(plan: Mapping[str, Any], spec: TeacherSpec, teacher: Teacher) -> dict[str, Any]:
    """The effective plan a record stores for a teacher evaluation: ``labels='teacher'`` and
    the teacher's fields (architecture, epochs, per-view, seed, test accuracy)."""
    out = dict(plan)
    out.update(spec.plan_fields(teacher.arch), labels=TEACHER_LABELS, teacher_arch=teacher.arch,
               teacher_seed=teacher.seed, teacher_test_accuracy=teacher.test_accuracy)
    return out


__all__ = [
    "DEFAULT_TEACHER_EPOCHS", "TEACHER_KEYS", "TEACHER_LABELS", "PerViewLabels", "Teacher", "TeacherError",
    "TeacherSpec", "canonical_overrides", "memory_cache", "overrides_problems", "split_overrides",
    "teacher_cache_key", "teacher_seed", "train_teacher", "with_teacher_fields",
]
