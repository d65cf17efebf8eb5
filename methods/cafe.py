"""CAFE: Condensing dataset by Aligning FEatures (Wang et al., CVPR 2022), reimplemented.

(Over the suite's ~500 lines per file because of the fidelity notes below; the code is CAFE's
config, loss, probe and loops only: the outer loop and the shared helpers live elsewhere.)

Reference: the paper's method section and the released code ``kaiwang960112/CAFE``
(``distill.py``, ``networks.py``), described in §7 of ``docs/reference.md``. Every component is a config field so the paper's ablations
are configs, not copies (``discrimination_weight=0`` is "without discrimination loss",
``dynamic_bilevel=False`` is "fixed bi-level loops", ...). The outer loop (budget, lr
schedule, generators ``init/net/data/aug/train``, checkpoints, progress) is the shared one of
:mod:`methods.loop`; this file is CAFE's config, loss, probe and one outer iteration.

Loss of one image step (reference §7.3), for C classes, N real images and M = IPC synthetic images per class,
through one network theta, with class means ``mean_c``:

* layer-wise alignment: ``sum_l w_l * D_l``, ``D_l = sum_c || mean_c f_l(R_c) - mean_c f_l(S_c) ||^2``
  (squared error summed over every feature element and class, no averaging: the released
  ``MSELoss(reduction='sum')`` on class means). The aligned maps are chosen by name or index
  from ``net.feature_names`` (ConvNet: ``block1..blockD`` before pooling, then ``pooled``);
* ``embedding_weight * D_5``: the same squared error on the flattened embedding. It equals
  ``D_pooled`` (f5 is f4 flattened), so with the defaults the deepest map counts twice, exactly
  as in the released code;
* ``discrimination_weight * sum_i CE(<f5(x_i), mu^S_c>_c, y_i)`` over every real image, with
  ``mu^S_c`` the mean synthetic embedding of class c: un-normalised inner products, no
  temperature, summed (not averaged) cross-entropy.

Deliberate differences from the released code (none changes the image gradient):

* The real branch runs under ``torch.no_grad``: its features are targets and, in the
  discrimination term, its embeddings are constants (the logits are bilinear in ``f5(x_i)``
  and ``mu^S``; the gradient reaches the images only through ``mu^S``). The released code keeps
  the whole real graph and backpropagates into the weights (reference §7.6; README, Performance).
  ``tests/test_cafe.py`` checks that the gradient equals the one with the real graph kept.
* The released loss also adds ``CE(net(R), y)`` of the real images. It does not depend on the
  synthetic images and its weight gradients are zeroed before any network step: left out.
* The image gradient is taken with ``torch.autograd.grad`` w.r.t. the images only.
* The real batch is stacked class-major and forwarded without autograd, for networks without
  batch norm in chunks of whole classes (:func:`methods.synthesis.classes_per_chunk`; exact
  because every layer acts per sample), with batch norm in one pass, so batch statistics are
  those of the full real batch as released. The synthetic batch always goes through one pass.
* Randomness comes from seeded CPU generators (net init, batches, probes, DSA), not the clock.
* The released code runs iterations 0..2000 (2001); here ``iterations`` iterations are run and
  the lr milestones are fractions of that count (0.6/0.8/0.9 of 2000 = 1200/1600/1800). The
  schedule depends on the budget, so a checkpoint records it and is refused by a run with
  another budget.
* The unbounded ``while`` loops are capped at ``max_loop_steps`` passes (None = unbounded as
  released). Each firing is counted in the cost figures (``cap_fired_outer/inner``).
* The released inner loop also evaluates the network on the synthetic set after every epoch
  and discards the result; that pass is skipped.
* Window entries are Python floats (the released code aliases one tensor on the CPU and hangs).

Dynamic bi-level optimisation (reference §7.4), per iteration: a fresh seeded network and its SGD (``lr_net``,
no momentum); OUTER loop: image step, probe, append to the window, break when the window is
full and its range is ``< lambda_outer`` (checked after the image step and before the inner
loop, so the last pass updates the images but not the network); INNER loop: one epoch of CE
training of the network on the detached synthetic set (batch ``batch_train``, per-sample DSA if
``dsa``), probe, break when the window is full and its range is ``> lambda_inner``.

The probe measures the network's accuracy on ``probe_per_class`` random real *training* images
per class, in train mode (as released), without autograd; the value is the mean per-class
accuracy. With ``probe_carryover`` the released code's accumulation is reproduced: the watched
value is ``(previous + sum_c acc_c) / C``, reset only when a loop breaks. It is on by default
because it changes the loops and hence the result: once the probe accuracy a exceeds ~0.3 the
ramp of the carried value alone (a -> 1.11a) spans more than ``lambda_inner`` and every inner
loop stops after exactly ``window`` epochs (README, Fidelity notes, gives the loop counts with
and without it; ``tests/test_cafe.py::test_probe_carryover_changes_the_loops`` checks it).

``dynamic_bilevel=False`` replaces both loops by DC's fixed counts: ``outer_loop`` image steps
with ``inner_loop`` epochs after every step but the last (None = DC's table by IPC,
:func:`methods.synthesis.get_loops`; IPC > 50 uses (50, 10) as the DC authors did).

Default layer weights (``layer_weights=None``): the deepest block and the pooled map weigh 1.0,
every shallower block 0.1. For the default depth-3 ConvNet this is the released 0.1/0.1/1/1
(f1..f4); for ConvNetD4 (64x64 inputs) it is 0.1/0.1/0.1/1/1, keeping the 0.1 weight on maps of
16 px and more, as on 32x32 inputs.

CAFE+DSA (``dsa=True``, registered as ``cafe_dsa``): each class's real and synthetic batch get
one shared (siamese) DSA draw per image step; inner-loop training uses per-sample DSA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.augment import DSA
from methods.compile import compile_delta, compile_stats, compiled, context_mode, resolve_compile
from methods.config import MethodConfig
from methods.errors import MethodError
from methods.loop import LoopRun, Synthesis
from methods.networks import get_network, has_batchnorm, network_skeleton
from methods.registry import register, register_variant
from methods.rng import derive_seed
from methods.synthesis import (
    LearnedMethod,
    augment_per_class,
    chunk_images,
    classes_per_chunk,
    dsa_for,
    get_loops,
    image_loop_problems,
    init_synthetic,
    real_batch,
    sync,
)
from methods.training import sgd, train_epoch

LayerWeightSpec = Union[tuple[tuple[Union[str, int], float], ...], dict[Union[str, int], float]]


def feature_names_of(model: str, channel: int = 3, im_size: tuple[int, int] = (32, 32)) -> list[str]:
    """``feature_names`` of architecture ``model`` (built on the meta device: no compute)."""
    net = network_skeleton(model, channel, 10, im_size)
    names = getattr(net, "feature_names", None)
    if names is None or not hasattr(net, "feature_maps"):
        raise MethodError(
            f"CAFE aligns intermediate feature maps, which architecture '{model}' does not expose; "
            "use a ConvNet variant (ConvNet, ConvNetD1..D4, ConvNetW*, ConvNetBN, ...)"
        )
    return list(names)


def default_layer_weights(feature_names: Sequence[str]) -> list[tuple[str, float]]:
    """The deepest block and the pooled map weigh 1.0, every shallower block 0.1 (released
    0.1/0.1/1/1 at depth 3)."""
    names = list(feature_names)
    out = []
    for i, name in enumerate(names):
        out.append((name, 1.0 if i >= len(names) - 2 else 0.1))
    return out


def resolve_layer_weights(spec: Optional[LayerWeightSpec], feature_names: Sequence[str]) -> list[tuple[int, float]]:
    """``[(feature index, weight), ...]`` for the aligned maps (zero weights dropped).

    ``spec``: None (default rule), a mapping or a sequence of (name or index, weight) pairs;
    indices follow Python rules (-1 is ``pooled``; digit strings, as JSON turns mapping keys,
    count as indices). Raises :class:`MethodError` naming the valid
    layer names for an unknown name or index, a repeated layer or a negative weight."""
    names = list(feature_names)
    if spec is None:
        pairs: list[tuple[Union[str, int], float]] = list(default_layer_weights(names))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for item in spec:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise MethodError(
                    f"layer_weights entries must be (layer, weight) pairs, got {item!r}; "
                    f"valid layers: {', '.join(names)} (or indices 0..{len(names) - 1})"
                )
            pairs.append((item[0], item[1]))
    resolved: dict[int, float] = {}
    for key, weight in pairs:
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)  # an index that went through JSON/YAML as a mapping key
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise MethodError(f"layer_weights key {key!r} must be a layer name or index; valid layers: {', '.join(names)}")
        if isinstance(key, str):
            if key not in names:
                raise MethodError(
                    f"unknown layer '{key}' in layer_weights; valid layers of this network: "
                    f"{', '.join(names)} (or indices 0..{len(names) - 1})"
                )
            idx = names.index(key)
        else:
            if not -len(names) <= key < len(names):
                raise MethodError(
                    f"layer index {key} in layer_weights is out of range for {len(names)} feature "
                    f"maps ({', '.join(names)})"
                )
            idx = key % len(names)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise MethodError(f"layer weight for '{names[idx]}' must be a number >= 0, got {weight!r}")
        if idx in resolved:
            raise MethodError(f"layer '{names[idx]}' appears twice in layer_weights")
        resolved[idx] = float(weight)
    return [(i, w) for i, w in sorted(resolved.items()) if w != 0.0]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CAFEConfig(MethodConfig):
    """CAFE's hyper-parameters; defaults are the released code's (``distill.py``)."""

    iterations: int = 2000
    lr_img: float = 0.1
    momentum_img: float = 0.5
    lr_milestones: tuple[float, ...] = (0.6, 0.8, 0.9)
    """Fractions of ``iterations`` at which the image lr is halved (1200/1600/1800 of 2000)."""
    lr_net: float = 0.01
    batch_real: int = 256
    batch_train: int = 256
    probe_per_class: int = 128
    init: str = "noise"
    model: str = "ConvNet"
    layer_weights: Optional[LayerWeightSpec] = None
    """(layer, weight) pairs or a mapping; layers by name or index of ``net.feature_names``.
    None: deepest block and ``pooled`` 1.0, shallower blocks 0.1 (0.1/0.1/1/1 at depth 3)."""
    embedding_weight: float = 1.0
    discrimination_weight: float = 0.01
    dynamic_bilevel: bool = True
    window: int = 10
    lambda_outer: float = 0.04
    lambda_inner: float = 0.03
    probe_carryover: bool = True
    max_loop_steps: Optional[int] = 100
    outer_loop: Optional[int] = None
    inner_loop: Optional[int] = None
    dsa: bool = False
    dsa_strategy: Optional[str] = None

    def validate(self) -> None:
        problems = image_loop_problems(self)
        for name in ("batch_real", "batch_train", "probe_per_class"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr_net > 0:
            problems.append(f"lr_net must be > 0, got {self.lr_net}")
        if any(not 0 < m < 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(self.lr_milestones):
            problems.append(f"lr_milestones must be increasing fractions in (0, 1), got {self.lr_milestones}")
        for name in ("embedding_weight", "discrimination_weight", "lambda_outer", "lambda_inner"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.window < 2:
            problems.append(f"window must be >= 2 (a range needs two probes), got {self.window}")
        if self.max_loop_steps is not None and self.max_loop_steps < 1:
            problems.append(f"max_loop_steps must be >= 1 or null (unbounded), got {self.max_loop_steps}")
        for name in ("outer_loop", "inner_loop"):
            v = getattr(self, name)
            if v is not None and v < 1:
                problems.append(f"{name} must be >= 1 or null (DC's table by IPC), got {v}")
        if problems:
            raise MethodError("invalid CAFE config: " + "; ".join(problems))
        try:
            names = feature_names_of(self.model)
        except MethodError as exc:
            raise MethodError(f"invalid CAFE config: {exc}") from None
        weights = resolve_layer_weights(self.layer_weights, names)
        if not weights and self.embedding_weight == 0 and self.discrimination_weight == 0:
            raise MethodError(
                "invalid CAFE config: every loss term has weight 0 (layer_weights, embedding_weight, "
                "discrimination_weight), so the images would never change"
            )


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


FeatureMaps = Callable[[Tensor], Sequence[Tensor]]
"""``x -> net.feature_maps(x)``, eager or a :func:`methods.compile.compiled` call."""


@torch.no_grad()
def real_targets(
    net: nn.Module, real_x: Tensor, num_classes: int, layers: Sequence[int],
    feature_maps: Optional[FeatureMaps] = None,
) -> tuple[dict[int, Tensor], Tensor]:
    """Class means of the feature maps ``layers`` and the embeddings f5 of a class-major real
    batch, without autograd. Returns ({layer index: (C, ...) means}, (C*N, D) embeddings); the
    pooled map's means are always included (under index ``len(feature_names) - 1``).
    ``feature_maps`` replaces ``net.feature_maps`` (the compiled real branch)."""
    feature_maps = net.feature_maps if feature_maps is None else feature_maps
    n = real_x.shape[0] // num_classes
    last = len(net.feature_names) - 1
    wanted = sorted(set(layers) | {last})
    step = classes_per_chunk(net, num_classes, n)
    means: dict[int, list[Tensor]] = {i: [] for i in wanted}
    embeds = []
    for c0 in range(0, num_classes, step):
        k = min(step, num_classes - c0)
        feats = feature_maps(real_x[c0 * n : (c0 + k) * n])
        for i in wanted:
            f = feats[i]
            means[i].append(f.reshape(k, n, *f.shape[1:]).mean(1))
        embeds.append(feats[last].flatten(1))
    return {i: torch.cat(v) for i, v in means.items()}, torch.cat(embeds)


def cafe_loss(
    net: nn.Module,
    real_x: Tensor,
    syn_x: Tensor,
    num_classes: int,
    *,
    layer_weights: Sequence[tuple[int, float]],
    embedding_weight: float = 1.0,
    discrimination_weight: float = 0.01,
    real_features: Optional[FeatureMaps] = None,
    syn_features: Optional[FeatureMaps] = None,
) -> Tensor:
    """CAFE's image loss (module docstring) for class-major batches ``real_x`` (C*N) and
    ``syn_x`` (C*M); ``layer_weights`` are resolved (feature index, weight) pairs.

    The real branch is computed without autograd; the gradient reaches ``syn_x`` through the
    synthetic class means only. ``real_features``/``syn_features`` replace ``net.feature_maps``
    in either branch (the compiled paths)."""
    n = real_x.shape[0] // num_classes
    m = syn_x.shape[0] // num_classes
    if n * num_classes != real_x.shape[0] or m * num_classes != syn_x.shape[0]:
        raise ValueError("real and synthetic batches must hold the same count for every class")
    last = len(net.feature_names) - 1
    layer_idx = [i for i, _ in layer_weights]
    real_means, real_embed = real_targets(net, real_x, num_classes, layer_idx, real_features)
    syn_feats = (net.feature_maps if syn_features is None else syn_features)(syn_x)
    loss = syn_x.new_zeros(())
    for i, w in layer_weights:
        f = syn_feats[i]
        syn_mean = f.reshape(num_classes, m, *f.shape[1:]).mean(1)
        loss = loss + w * (real_means[i] - syn_mean).pow(2).sum()
    syn_centres = syn_feats[last].flatten(1).reshape(num_classes, m, -1).mean(1)  # mu^S, (C, D)
    if embedding_weight:
        loss = loss + embedding_weight * (real_means[last].flatten(1) - syn_centres).pow(2).sum()
    if discrimination_weight:
        logits = real_embed @ syn_centres.t()  # (C*N, C): <f5(x_i), mu^S_c>
        targets = torch.arange(num_classes, device=real_x.device).repeat_interleave(n)
        loss = loss + discrimination_weight * F.cross_entropy(logits, targets, reduction="sum")
    return loss


# --------------------------------------------------------------------------------------------
# Probe
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def probe_class_accuracy(net: nn.Module, images: Tensor, labels: Tensor, num_classes: int,
                         forward: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """Per-class accuracy (C,) of ``net`` on a probe batch, in train mode (as released) and
    without autograd. Batch-norm networks are probed one class at a time like the released code
    (their batch statistics depend on the batch); others in chunks (exact: per-sample layers),
    through ``forward`` when given (the compiled probe)."""
    net.train()
    if has_batchnorm(net):
        correct = torch.zeros(num_classes, device=images.device)
        counts = torch.zeros(num_classes, device=images.device)
        for c in range(num_classes):
            sel = labels == c
            x = images[sel]
            if x.shape[0]:
                correct[c] = (net(x).argmax(1) == c).float().sum()
                counts[c] = x.shape[0]
    else:
        step = chunk_images(net)
        fwd = net if forward is None else forward
        preds = torch.cat([fwd(images[i : i + step]).argmax(1) for i in range(0, images.shape[0], step)])
        correct = torch.bincount(labels, weights=(preds == labels).float(), minlength=num_classes)
        counts = torch.bincount(labels, minlength=num_classes).float()
    return correct / counts.clamp_min(1)


class Window:
    """The released code's sliding window of probe values (Python floats)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: list[float] = []

    def push(self, value: float) -> Optional[float]:
        """Append; return the range once the window is full (the caller pops on no-break)."""
        self.values.append(float(value))
        if len(self.values) == self.size:
            return max(self.values) - min(self.values)
        return None

    def pop(self) -> None:
        self.values.pop(0)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------


def _number(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def _aligned_layer_count(spec: Any) -> int:
    """How many layers a ``layer_weights`` value (as read back from JSON) aligns with a non-zero
    weight: None is the paper's default (every block and the pooled features)."""
    if spec is None:
        return 4
    if isinstance(spec, Mapping):
        weights = list(spec.values())
    elif isinstance(spec, (list, tuple)):
        weights = [w[1] if isinstance(w, (list, tuple)) and len(w) == 2 else w for w in spec]
    else:
        weights = [spec]
    return sum(1 for w in weights if _number(w) > 0)


@dataclass(kw_only=True)
class CAFERun(Synthesis):
    """One CAFE run's resolved values: the aligned layers and weights, real images per class,
    the fixed loop counts (``dynamic_bilevel=False``) and the DSA module (or None)."""

    feature_names: list[str]
    layer_weights: list[tuple[int, float]]
    per_class: int
    outer_loop: int
    inner_loop: int
    dsa: Optional[DSA]
    compile: bool = False
    """Whether the real/synthetic branches, the probe and the inner epochs run compiled
    (:mod:`methods.compile`; ``auto`` counts ``window`` image steps per iteration)."""
    calls: dict[str, Callable] = field(default_factory=dict, repr=False)
    """The current network's compiled calls (rebuilt with every network; empty when eager)."""
    compile_base: dict[str, float] = field(default_factory=compile_stats, repr=False)
    """The process's compilation counters when the run started (cost figures are the run's share)."""


@register("cafe", display="CAFE", family="feature_alignment", order=300, description="CAFE: layer-wise feature alignment + discrimination loss, dynamic bi-level loops")
class CAFE(LearnedMethod):
    """CAFE (Wang et al., CVPR 2022); see the module docstring for fidelity notes."""

    config_class = CAFEConfig
    eval_epochs_no_aug = 600  # CAFE's code: 600 epochs without augmentation, 1000 with DSA
    generator_names = ("init", "net", "data", "aug", "train")

    @classmethod
    def components(cls, config: Mapping[str, Any]) -> dict[str, bool]:
        """CAFE's ablation switches (paper Table 5) read from a recorded config; keys missing
        from ``config`` take :class:`CAFEConfig`'s defaults. Layer-wise alignment is on when
        more than one depth is aligned with a non-zero weight (aligning only the last block is
        the "without layer-wise alignment" variant)."""
        defaults = CAFEConfig()
        cfg = {"layer_weights": defaults.layer_weights, "embedding_weight": defaults.embedding_weight,
               "discrimination_weight": defaults.discrimination_weight,
               "dynamic_bilevel": defaults.dynamic_bilevel, "dsa": defaults.dsa}
        cfg.update({k: v for k, v in (config or {}).items() if k in cfg})
        return {
            "Layer-wise": _aligned_layer_count(cfg["layer_weights"]) >= 2,
            "Embedding": _number(cfg["embedding_weight"]) > 0,
            "Discrimination": _number(cfg["discrimination_weight"]) > 0,
            "Dynamic bi-level": bool(cfg["dynamic_bilevel"]),
            "DSA": bool(cfg["dsa"]),
        }

    def lr_milestones(self) -> Sequence[float]:
        return tuple(self.config.lr_milestones)

    def start(self, run: LoopRun) -> CAFERun:
        cfg: CAFEConfig = self.config
        real = run.real
        names = feature_names_of(cfg.model, real.channel, real.im_size)
        if cfg.dynamic_bilevel:
            outer_loop = inner_loop = 0
        else:
            table = get_loops(run.ipc)
            outer_loop = cfg.outer_loop or table[0]
            inner_loop = cfg.inner_loop or table[1]
        images, labels = init_synthetic(real, run.ipc, cfg.init, run.generators["init"], run.device)
        return CAFERun(
            images=images, labels=labels,
            optimizer=torch.optim.SGD([images], lr=cfg.lr_img, momentum=cfg.momentum_img),
            counters=dict(
                image_steps=0, inner_epochs=0, inner_loops=0, cap_fired_outer=0, cap_fired_inner=0,
                image_step_s=0.0, inner_epoch_s=0.0, probe_s=0.0, probes=0, elapsed_s=0.0,
            ),
            feature_names=names, layer_weights=resolve_layer_weights(cfg.layer_weights, names),
            per_class=min(cfg.batch_real, min(real.class_counts())),
            outer_loop=outer_loop, inner_loop=inner_loop, dsa=dsa_for(real, cfg.dsa, cfg.dsa_strategy),
            compile=resolve_compile(context_mode(run.context), run.device, steps=run.iterations * cfg.window),
        )

    def _compiled_calls(self, run: LoopRun, syn: CAFERun, net: nn.Module) -> dict[str, Callable]:
        """The compiled calls of a fresh network: the real branch in chunks of whole classes,
        the synthetic branch (image gradient only), the probe and the inner-epoch forward."""
        if not syn.compile:
            return {}
        C, n = run.num_classes, syn.per_class
        n_syn = C * run.ipc
        return {
            "real": compiled(net, "feature_maps", enabled=True, batch=classes_per_chunk(net, C, n) * n),
            "syn": compiled(net, "feature_maps", enabled=True, batch=n_syn, param_grads=False),
            "probe": compiled(net, enabled=True, batch=min(chunk_images(net), C * self.config.probe_per_class)),
            "train": compiled(net, enabled=True, batch=min(self.config.batch_train, n_syn)),
        }

    def step(self, run: LoopRun, syn: CAFERun, iteration: int) -> float:
        """One outer iteration: a fresh network, then the dynamic (or fixed) bi-level loops."""
        cfg: CAFEConfig = self.config
        real = run.real
        net = get_network(cfg.model, real.channel, real.num_classes, real.im_size,
                          seed=derive_seed(run.generators["net"]), device=run.device)
        net.train()
        opt_net = sgd(net.parameters(), cfg.lr_net)
        syn.calls = self._compiled_calls(run, syn, net)
        losses = []
        if not cfg.dynamic_bilevel:
            for ol in range(syn.outer_loop):
                losses.append(self._image_step(run, syn, net))
                if ol == syn.outer_loop - 1:
                    break
                images = syn.images.detach().clone()
                for _ in range(syn.inner_loop):
                    self._inner_epoch(run, syn, net, opt_net, images)
                syn.counters["inner_loops"] += 1
            return sum(losses) / len(losses)
        window, acc, steps = Window(cfg.window), 0.0, 0
        while True:
            losses.append(self._image_step(run, syn, net))
            steps += 1
            acc = self._probe(run, syn, net, acc)
            spread = window.push(acc)
            if spread is not None:
                if spread < cfg.lambda_outer:
                    break
                window.pop()
            if cfg.max_loop_steps is not None and steps >= cfg.max_loop_steps:
                syn.counters["cap_fired_outer"] += 1
                break
            images = syn.images.detach().clone()
            inner_window, inner_acc, epochs = Window(cfg.window), 0.0, 0
            while True:
                self._inner_epoch(run, syn, net, opt_net, images)
                epochs += 1
                inner_acc = self._probe(run, syn, net, inner_acc)
                spread = inner_window.push(inner_acc)
                if spread is not None:
                    if spread > cfg.lambda_inner:
                        break
                    inner_window.pop()
                if cfg.max_loop_steps is not None and epochs >= cfg.max_loop_steps:
                    syn.counters["cap_fired_inner"] += 1
                    break
            syn.counters["inner_loops"] += 1
        return sum(losses) / len(losses)

    def _probe(self, run: LoopRun, syn: CAFERun, net: nn.Module, carried: float) -> float:
        cfg: CAFEConfig = self.config
        t0 = time.perf_counter()
        px, py = run.real.sample_per_class(cfg.probe_per_class, run.generators["data"])
        accs = probe_class_accuracy(net, px.to(run.device), py.to(run.device), run.num_classes,
                                    forward=syn.calls.get("probe"))
        total_acc = float(accs.sum())
        syn.counters["probe_s"] += time.perf_counter() - t0
        syn.counters["probes"] += 1
        return (carried + total_acc) / run.num_classes if cfg.probe_carryover else total_acc / run.num_classes

    def _image_step(self, run: LoopRun, syn: CAFERun, net: nn.Module) -> float:
        cfg: CAFEConfig = self.config
        t0 = time.perf_counter()
        images, C = syn.images, run.num_classes
        rx = real_batch(run.real, syn.per_class, run.generators["data"], run.device)
        sx = images
        if syn.dsa is not None:
            rx, sx = augment_per_class(syn.dsa, rx, images, C, run.generators["aug"])
        loss = cafe_loss(
            net, rx, sx, C, layer_weights=syn.layer_weights,
            embedding_weight=cfg.embedding_weight, discrimination_weight=cfg.discrimination_weight,
            real_features=syn.calls.get("real"), syn_features=syn.calls.get("syn"),
        )
        (grad,) = torch.autograd.grad(loss, images)
        images.grad = grad
        syn.optimizer.step()
        images.grad = None
        sync(run.device)
        syn.counters["image_step_s"] += time.perf_counter() - t0
        syn.counters["image_steps"] += 1
        run.heartbeat()
        return float(loss.detach())

    def _inner_epoch(self, run: LoopRun, syn: CAFERun, net: nn.Module, opt_net: torch.optim.Optimizer,
                     images: Tensor) -> None:
        t0 = time.perf_counter()
        train_epoch(net, images, syn.labels, opt_net, batch_size=self.config.batch_train,
                    generator=run.generators["train"], augment=syn.dsa, forward=syn.calls.get("train"))
        sync(run.device)
        syn.counters["inner_epoch_s"] += time.perf_counter() - t0
        syn.counters["inner_epochs"] += 1
        run.heartbeat()

    def progress_note(self, run: LoopRun, syn: CAFERun) -> str:
        c = syn.counters
        return (f"image steps {c['image_steps']} inner epochs {c['inner_epochs']} "
                f"caps {c['cap_fired_outer']}/{c['cap_fired_inner']}")

    def cost_figures(self, run: LoopRun, syn: CAFERun) -> dict[str, float]:
        c, n = syn.counters, run.iterations
        return dict(
            image_steps=c["image_steps"], inner_epochs=c["inner_epochs"], inner_loops=c["inner_loops"],
            mean_image_steps_per_iteration=c["image_steps"] / n,
            mean_inner_epochs_per_iteration=c["inner_epochs"] / n,
            cap_fired_outer=c["cap_fired_outer"], cap_fired_inner=c["cap_fired_inner"],
            seconds_per_image_step=c["image_step_s"] / max(1, c["image_steps"]),
            seconds_per_inner_epoch=c["inner_epoch_s"] / max(1, c["inner_epochs"]),
            probe_seconds=c["probe_s"],
            probe_share=c["probe_s"] / max(1e-9, c["image_step_s"] + c["inner_epoch_s"] + c["probe_s"]),
            **(compile_delta(syn.compile_base) if syn.compile else {}),
        )

    def extra(self, run: LoopRun, syn: CAFERun) -> dict[str, Any]:
        extra = {"dsa_strategy": None if syn.dsa is None else syn.dsa.strategy,
                 "layer_weights": [[syn.feature_names[i], w] for i, w in syn.layer_weights]}
        if not self.config.dynamic_bilevel:
            extra.update(outer_loop=syn.outer_loop, inner_loop=syn.inner_loop)
        return extra


register_variant("cafe_dsa", "cafe", {"dsa": True}, display="CAFE+DSA", order=310,
                 description="CAFE+DSA: CAFE with per-class siamese DSA and DSA in inner-loop training")
