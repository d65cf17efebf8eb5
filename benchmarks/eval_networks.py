"""Training and testing the evaluation networks: the inner part of the evaluation protocol
(:mod:`benchmarks.evaluate` resolves the plan and calls :func:`train_networks`).

One network (:func:`train_and_test`): a fresh ``arch`` initialised from its own CPU generator
(:func:`network_seed`), trained for the plan's passes with its optimiser, schedule, loss and
augmentation (:func:`make_augment` builds the callables of the plan's typed augmentations),
optionally scored on a validation hold-out after every pass, then tested once. N networks
(:func:`train_networks`): that loop network after network (the oracle), or, for the published
protocol on a device where it pays, one vectorised ensemble
(:func:`methods.ensemble.train_ensemble`) with the same seeds and draws.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Callable, Iterator, Literal, NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from benchmarks.dc_augment import DCAugment
from methods.compile import compiled, resolve_compile
from methods.ensemble import autocast_context, resolve_mode, train_ensemble
from methods.errors import MethodError
from methods.networks import canonical_network_name, get_network
from methods.protocol import Augmentation, DCAugmentation, DSAAugmentation, EvalPlan, ResolvedPlan, epoch_schedule
from methods.rng import make_generator
from methods.training import Augment, Heartbeat, LossFn, accuracy, make_loss, make_optimizer, train_epoch

log = logging.getLogger("benchmarks.evaluate")  # one logger for the whole protocol (job logs filter on it)


class NetworkResult(NamedTuple):
    """One trained network: its test accuracy, train and test seconds, and the epoch the
    accuracy belongs to (the last one unless the plan selects on validation)."""

    accuracy: float
    train_s: float
    test_s: float
    epoch: int


class Compose:
    """Several augmentations applied in order, each drawing from the same generator."""

    def __init__(self, augments: Sequence[Augment]) -> None:
        self.augments = list(augments)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        for aug in self.augments:
            x = aug(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.augments!r})"


def _build_dc(aug: DCAugmentation) -> Augment:
    return DCAugment(aug.strategy)


def _build_dsa(aug: DSAAugmentation) -> Augment:
    from methods.augment import DSA

    return DSA(aug.strategy)


AUGMENT_BUILDERS: dict[str, Callable[[Any], Augment]] = {"dc": _build_dc, "dsa": _build_dsa}
"""Augmentation kind (:data:`methods.protocol.AUGMENTATIONS`) -> the callable it trains with."""


def make_augment(augmentations: Sequence[Augmentation] | str) -> Optional[Augment]:
    """The training-batch augmentation of resolved augmentations (or of a resolved spec string
    such as ``EvalResult.augmentation``: ``'none'``, ``'dc:crop_noise'``, ``'dsa:color_crop'``)."""
    if isinstance(augmentations, str):
        try:
            augmentations = EvalPlan(augmentation=augmentations).augmentations("", "")
        except MethodError as exc:
            raise MethodError(f"unknown augmentation '{augmentations}': {exc}") from None
    built = []
    for aug in augmentations:
        builder = AUGMENT_BUILDERS.get(aug.name)
        if builder is None:
            raise MethodError(f"augmentation '{aug.name}' has no training callable in benchmarks.eval_networks "
                              "(add a builder to AUGMENT_BUILDERS)")
        built.append(builder(aug))
    if not built:
        return None
    return built[0] if len(built) == 1 else Compose(built)


def network_seed(seed: int, arch: str, net_index: int) -> int:
    """63-bit seed of evaluation network ``net_index`` of ``arch`` under ``seed`` (stable
    across processes and platforms: SHA-256 of ``"condbench-eval|seed|Arch|index"``)."""
    text = f"condbench-eval|{int(seed)}|{canonical_network_name(arch)}|{int(net_index)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def lr_schedule(epochs: int, lr: float = EvalPlan.lr) -> Iterator[tuple[int, float, bool]]:
    """Yield ``(epoch, lr, new_optimizer)`` for the reference loop ``for ep in range(E + 1)``.

    ``new_optimizer`` is True at epoch 0 and at the first epoch after ``E // 2 + 1``: the
    reference multiplies lr by 0.1 *after* training epoch ``E // 2 + 1`` and builds a new SGD
    optimiser then, so momentum starts from zero for the low-lr phase (the plan's
    ``schedule='reference_step'``, :func:`methods.protocol.epoch_schedule`)."""
    for ep, (current, new) in enumerate(epoch_schedule("reference_step", epochs, lr)):
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
    lr: float = EvalPlan.lr,
    momentum: float = EvalPlan.momentum,
    weight_decay: float = EvalPlan.weight_decay,
    batch_size: int = EvalPlan.batch_size,
    bf16: bool = False,
    channels_last: bool = False,
    schedule: Optional[Sequence[tuple[float, bool]]] = None,
    optimizer: str = EvalPlan.optimizer,
    loss_fn: Optional[LossFn] = None,
    validation: Optional[tuple[Tensor, Tensor]] = None,
    compile: str = "off",
) -> NetworkResult:
    """Train one fresh network and test it once; ``images`` etc. must already be on ``device``.

    ``schedule`` (one ``(lr, new_optimizer)`` per pass) defaults to the reference schedule of
    ``epochs`` and ``lr``. ``labels`` are class ids, or what ``loss_fn`` takes (soft-label
    logits). With ``validation`` (images, labels of a held-out part of the training set) the
    network is scored on it after every pass and tested with the weights of the best pass
    (the earliest on ties); otherwise with the final weights. ``compile`` (``auto``/``on``/
    ``off``, :func:`methods.compile.resolve_compile` with this network's minibatch count) runs
    the training forward/backward and the test pass through the shared compiled graphs."""
    device = torch.device(device)
    g = make_generator(network_seed(seed, arch, net_index))
    net = get_network(arch, channel, num_classes, im_size, generator=g, device=device)
    passes = list(schedule) if schedule is not None else [(r, n) for _ep, r, n in lr_schedule(epochs, lr)]
    n_train = images.shape[0]
    use_compile = resolve_compile(compile, device, steps=len(passes) * -(-n_train // max(1, batch_size)))
    forward = (compiled(net, enabled=True, batch=max(1, min(batch_size, n_train)))
               if use_compile and n_train else None)
    opt = None
    best_acc, best_state, chosen = -1.0, None, len(passes) - 1
    start = time.perf_counter()
    heartbeat = Heartbeat(log.info)
    ep = 0

    def beat(done: int, total: int) -> None:
        heartbeat.beat(lambda: f"{arch} network {net_index + 1}: pass {ep + 1}/{len(passes)}"
                               f"{f' ({done}/{total} images)' if total > batch_size else ''}, "
                               f"{time.perf_counter() - start:.0f} s")

    for ep, (ep_lr, new) in enumerate(passes):
        if new or opt is None:
            opt = make_optimizer(optimizer, net.parameters(), ep_lr, momentum=momentum, weight_decay=weight_decay)
        else:  # a schedule that changes lr without a new optimiser (cosine)
            for group in opt.param_groups:
                group["lr"] = ep_lr
        with autocast_context(device, bf16):
            train_epoch(net, images, labels, opt, batch_size=batch_size, generator=g, augment=augment,
                        loss_fn=loss_fn, forward=forward, on_step=beat)
        if validation is not None:
            val_acc = test_accuracy(net, validation[0], validation[1], bf16=bf16, compile=use_compile)
            if val_acc > best_acc:
                best_acc, chosen = val_acc, ep
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    _sync(device)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    acc = test_accuracy(net, test_images, test_labels, bf16=bf16, channels_last=channels_last,
                        compile=use_compile)
    _sync(device)
    return NetworkResult(acc, train_s, time.perf_counter() - start, chosen)


def test_accuracy(net: torch.nn.Module, images: Tensor, labels: Tensor, *, bf16: bool = False,
                  channels_last: bool = False, batch_size: int = 1024, compile: bool = False) -> float:
    """Final test pass (eval mode, no autograd), optionally bf16 autocast / channels-last, or
    through the shared compiled graph (``compile``; not with channels-last)."""
    if channels_last and images.ndim == 4:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
        compile = False
    forward = None
    if compile and images.shape[0]:
        forward = compiled(net, enabled=True, batch=min(batch_size, images.shape[0]))
    with autocast_context(images.device, bf16):
        return accuracy(net, images, labels, batch_size=batch_size, forward=forward)


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
    schedule: Optional[Sequence[tuple[float, bool]]] = None,
    momentum: float = EvalPlan.momentum,
    weight_decay: float = EvalPlan.weight_decay,
    batch_size: int = EvalPlan.batch_size,
) -> list[NetworkResult]:
    """All networks of ``net_indices`` trained in one vectorised ensemble
    (:func:`methods.ensemble.train_ensemble`), same seeds and draws as :func:`train_and_test`;
    train seconds are the ensemble's time split evenly over the networks. SGD on hard labels
    with the final epoch only (the published protocol)."""
    gens = [make_generator(network_seed(seed, arch, i)) for i in net_indices]
    nets = [get_network(arch, channel, num_classes, im_size, generator=g, device=device) for g in gens]
    passes = list(schedule) if schedule is not None else [(r, n) for _ep, r, n in lr_schedule(epochs)]
    start = time.perf_counter()
    train_ensemble(nets, gens, images, labels, passes, momentum=momentum, weight_decay=weight_decay,
                   batch_size=batch_size, augment=augment, mode="vectorized", bf16=bf16)
    _sync(device)
    train_s = (time.perf_counter() - start) / max(1, len(nets))
    out = []
    for net in nets:
        start = time.perf_counter()
        acc = test_accuracy(net, test_images, test_labels, bf16=bf16, channels_last=channels_last)
        _sync(device)
        out.append(NetworkResult(acc, train_s, time.perf_counter() - start, len(passes) - 1))
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
    augmentation: str | Sequence[Augmentation],
    device: torch.device,
    progress: bool = False,
    desc: str = "",
    vectorize: Literal["auto", "sequential", "vectorized"] = "auto",
    bf16: bool = False,
    channels_last: bool = False,
    plan: Optional[ResolvedPlan] = None,
    validation: Optional[tuple[Tensor, Tensor]] = None,
    compile: str = "off",
    workers: int = 1,
) -> list[NetworkResult]:
    """Train and test one network per index, in order.

    ``plan`` (a resolved plan; default: the published protocol with ``epochs`` and
    ``augmentation``) gives the optimiser, schedule, loss and batch size; ``validation`` turns
    on best-validation-epoch selection. The single place that trains "N networks": the
    sequential loop here is the oracle that the vectorised path (``vectorize``, see the module
    docstring; published protocol only) reproduces (same seeds per ``net_index``).

    ``compile``: see :func:`train_and_test`; ``auto`` is resolved once for all networks (their
    total minibatch count), since they share the compiled graphs. ``workers`` > 1 trains the
    sequential networks in that many processes with the threads split between them
    (:func:`benchmarks.workers.map_networks`); every network keeps its seed, so the results are
    those of the one-process loop at the same threads per network."""
    if plan is None:
        base = EvalPlan(epochs=int(epochs))
        plan = ResolvedPlan(base, int(epochs), (), base.lr)
    p = plan.plan
    augment = make_augment(augmentation)
    schedule = epoch_schedule(p.schedule, int(epochs), plan.lr)
    loss_fn = make_loss(p.loss, p.temperature)
    published = p.optimizer == "sgd" and loss_fn is None and validation is None
    probe = get_network(arch, channel, num_classes, im_size, seed=0, device="meta")
    if published and len(net_indices) > 1 and resolve_mode(vectorize, device, probe) == "vectorized":
        return train_networks_vectorized(
            images, labels, test_images, test_labels, arch, net_indices=list(net_indices),
            num_classes=num_classes, channel=channel, im_size=im_size, epochs=epochs, seed=seed,
            augment=augment, device=device, bf16=bf16, channels_last=channels_last, schedule=schedule,
            momentum=p.momentum, weight_decay=p.weight_decay, batch_size=p.batch_size,
        )
    indices = list(net_indices)
    steps = len(indices) * len(schedule) * -(-images.shape[0] // max(1, p.batch_size))
    compile = "on" if resolve_compile(compile, device, steps=steps) else "off"
    if workers > 1 and len(indices) > 1:
        from benchmarks.workers import map_networks

        common = dict(
            images=images, labels=labels, test_images=test_images, test_labels=test_labels, arch=arch,
            num_classes=num_classes, channel=channel, im_size=tuple(im_size), epochs=epochs, seed=seed,
            augmentation=augmentation, device=device, bf16=bf16, channels_last=channels_last, plan=plan,
            validation=validation, compile=compile, vectorize="sequential",
        )
        results = map_networks(train_networks, common, indices, workers=workers)
        out = []
        for n, r in enumerate(tqdm(results, total=len(indices), desc=desc or f"eval {arch}", disable=not progress,
                                   leave=False), 1):
            out.append(r)
            log.info("%s network %d/%d: %.2f %% (train %.1f s, test %.1f s, %d workers)", arch, n, len(indices),
                     100 * r.accuracy, r.train_s, r.test_s, workers)
        return out
    out = []
    for n, i in enumerate(tqdm(indices, desc=desc or f"eval {arch}", disable=not progress, leave=False), 1):
        out.append(
            train_and_test(
                images, labels, test_images, test_labels, arch,
                num_classes=num_classes, channel=channel, im_size=im_size, epochs=epochs,
                seed=seed, net_index=i, augment=augment, device=device, bf16=bf16,
                channels_last=channels_last, schedule=schedule, momentum=p.momentum,
                weight_decay=p.weight_decay, batch_size=p.batch_size, optimizer=p.optimizer,
                loss_fn=loss_fn, validation=validation, compile=compile,
            )
        )
        r = out[-1]
        # one line per network: a long run (e.g. the whole-dataset baseline) shows its progress in job logs
        log.info("%s network %d/%d: %.2f %% (train %.1f s, test %.1f s)", arch, n, len(indices), 100 * r.accuracy,
                 r.train_s, r.test_s)
    return out
