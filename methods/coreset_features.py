"""Feature space of the herding and k-center coresets.

The DC author's pseudocode for herding and k-center (docs/reference.md §8; issues #15 and #21
of ``VICO-UoE/DatasetCondensation``) runs greedily per class on feature vectors but does not say
which features. We follow the standard choice (DeepCore, Guo et al., DEXA 2022; and the GCond
maintainer's remark cited in docs/reference.md §8): the *embedding* (input of the final linear
layer) of a network trained on the **full** training set, compared with the Euclidean distance. ``feature_space='pixels'`` uses the
flattened normalised images instead (no training; an ablation, and handy in tests).

Feature-network budget (the defaults of :class:`CoresetFeatureConfig`)
----------------------------------------------------------------------
The reference ConvNet (``get_network('ConvNet', ...)``: width 128, depth 3, instance norm, avg
pooling) trained for **20 epochs** on the full training set with the evaluation protocol's
optimiser: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, lr x0.1 after half the
epochs (at epoch ``E // 2``, with the optimiser re-created as in ``evaluate_synset``), no
augmentation. Why 20: on the full training set every epoch is many SGD steps, and the embedding
only has to be class-discriminative, not squeeze out the last percent of accuracy (the README's
fidelity notes give the measured accuracy and time). DeepCore pre-trains a ResNet18 for 200
epochs, ten times the cost for an embedding whose only use is ranking distances, so we
deliberately use the smaller budget (raise ``feature_epochs`` to match DeepCore).
``feature_epochs=0`` gives the embedding of the seeded, untrained network (an ablation).

The trained network is computed once per (dataset name, class count, image geometry, number of
images, data fingerprint, seed, architecture, budget) and memoised through
:meth:`RunContext.cached`; herding, k-center and the forgetting coreset share it. Every random
draw (initialisation, epoch order) comes from generators derived from the run seed, so on a CPU
the trained weights, the embeddings and hence the selection are bit-identical for a given seed.
On CUDA, cuDNN's convolution backward is not deterministic by default, so the trained net can
differ in the last bits between runs.

Forgetting statistics from the same run
---------------------------------------
The same training run also records, for every training image, whether the network classified it
correctly each time it was presented in a minibatch (the forward pass of the training step,
before the update: the "presentation" of Toneva et al., ICLR 2019, §2). That (epochs x N)
boolean history is stored in the same cache entry, so the forgetting coreset
(:mod:`methods.forgetting`) and herding/k-center on the same dataset, seed and budget train one
network between them. Recording changes nothing in the training:
:func:`train_feature_net_tracked` passes :func:`methods.training.train_epoch` an ``(N, 2)`` target of (class id, row index) and a
loss that is the same cross-entropy on the class ids, so the weights are those of plain training
(tested, and pinned by ``tests/test_golden.py``).

Cache entries are versioned (``v2`` holds the history besides the weights; ``v1`` entries, which
lack it, are not read).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.base import Method
from methods.config import MethodConfig
from methods.context import CostMeter, RunContext
from methods.errors import MethodError
from methods.realdata import ClassData
from methods.networks import canonical_network_name, get_network
from methods.rng import derive_seed, make_generator
from methods.synset import SyntheticSet
from methods.compile import compiled, context_mode, resolve_compile
from methods.training import Heartbeat, sgd, train_epoch

EMBED_BATCH = 512
"""Images per forward pass when computing embeddings (no autograd, eval mode)."""

_CACHE_VERSION = "v2"


@dataclass(frozen=True)
class FeatureNetConfig(MethodConfig):
    """The network trained on the full training set and its budget (shared by the herding,
    k-center and forgetting configs; the cache key holds every field).

    * ``feature_net``: architecture (reference ConvNet by default; any name of
      :func:`methods.networks.get_network`, all of which expose ``embed``).
    * ``feature_epochs``: full-training-set epochs (20; 0 = untrained seeded network).
    * ``feature_lr`` / ``feature_momentum`` / ``feature_weight_decay`` / ``feature_batch``:
      SGD settings of the evaluation protocol (0.01 / 0.9 / 5e-4 / 256); lr x0.1 at half.
    """

    feature_net: str = "ConvNet"
    feature_epochs: int = 20
    feature_lr: float = 0.01
    feature_momentum: float = 0.9
    feature_weight_decay: float = 5e-4
    feature_batch: int = 256

    def problems(self) -> list[str]:
        """Every invalid training setting, one message each (empty when valid)."""
        problems = []
        if self.feature_epochs < 0:
            problems.append(f"feature_epochs must be >= 0, got {self.feature_epochs}")
        if self.feature_batch <= 0:
            problems.append(f"feature_batch must be a positive integer, got {self.feature_batch}")
        if not self.feature_lr > 0:
            problems.append(f"feature_lr must be > 0, got {self.feature_lr}")
        if not 0 <= self.feature_momentum < 1:
            problems.append(f"feature_momentum must be in [0, 1), got {self.feature_momentum}")
        if self.feature_weight_decay < 0:
            problems.append(f"feature_weight_decay must be >= 0, got {self.feature_weight_decay}")
        return problems

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise MethodError("; ".join(problems))
        canonical_network_name(self.feature_net)  # raises MethodError listing the valid names


@dataclass(frozen=True)
class CoresetFeatureConfig(FeatureNetConfig):
    """Feature-space settings shared by the herding and k-center configs: the network of
    :class:`FeatureNetConfig` plus

    * ``feature_space``: ``'embedding'`` (default: embedding of ``feature_net`` trained on the
      full training set) or ``'pixels'`` (flattened normalised images, no training).
    """

    feature_space: Literal["embedding", "pixels"] = "embedding"

    def problems(self) -> list[str]:
        problems = super().problems()
        if self.feature_space not in ("embedding", "pixels"):
            problems.insert(
                0, f"feature_space must be 'embedding' or 'pixels', got {self.feature_space!r}"
            )
        return problems


def data_fingerprint(real: ClassData) -> str:
    """A cheap fingerprint of the training data (one pass of sums, rounded so that the tiny
    summation-order differences between devices do not change it): guards the feature cache
    against two different datasets that happen to share name and geometry."""
    x = real.images.detach().flatten(1).double()
    n = x.shape[0]
    weights = torch.arange(1, n + 1, device=x.device, dtype=torch.float64) / max(n, 1)
    stats = torch.stack(
        [
            x.sum(),
            x.square().sum(),
            (x.sum(1) * weights).sum(),
            (real.labels.double() * weights).sum(),
        ]
    ).cpu()
    text = ",".join(f"{v:.6e}" for v in stats.tolist())
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def feature_cache_key(real: ClassData, seed: int, config: FeatureNetConfig) -> str:
    """Cache key of the trained feature network and its presentation history: dataset, class
    count, geometry, number of images, data fingerprint, seed, architecture and the full
    training budget (everything that changes either)."""
    c = config
    geometry = f"{real.channel}x{real.im_size[0]}x{real.im_size[1]}"
    return (
        f"coreset-features/{_CACHE_VERSION}/{real.name}/classes{real.num_classes}/{geometry}"
        f"/n{len(real)}/data{data_fingerprint(real)}/seed{int(seed)}"
        f"/{canonical_network_name(c.feature_net)}/epochs{c.feature_epochs}/lr{c.feature_lr:g}"
        f"/mom{c.feature_momentum:g}/wd{c.feature_weight_decay:g}/batch{c.feature_batch}"
    )


def feature_seeds(seed: int) -> tuple[int, int, int]:
    """The three seeds drawn, in this order, from ``make_generator(seed)``: the feature net's
    initialisation, its epoch order, and the selection draws of a coreset that needs any (the
    forgetting coreset's tie-break). One documented stream per run seed."""
    g = make_generator(seed)
    return derive_seed(g), derive_seed(g), derive_seed(g)


class PresentationRecorder:
    """A ``loss_fn`` for :func:`methods.training.train_epoch` that records, per presentation,
    whether each training image was classified correctly.

    ``train_epoch`` indexes images and targets with the same minibatch indices and hands the
    targets to ``loss_fn``; the targets here are ``(N, 2)`` rows of (class id, row index), so
    the recorder knows which rows each minibatch holds. It returns plain cross-entropy on the
    class ids (what ``train_epoch`` computes without a ``loss_fn``) and stores
    ``out.argmax(1) == class id`` of that forward pass (before the update) in
    ``correct[epoch, row]``. Call :meth:`start_epoch` before each epoch; :meth:`finish_epoch`
    checks that every row was presented exactly once and returns the epoch's accuracy."""

    def __init__(self, labels: Tensor, epochs: int) -> None:
        n = labels.shape[0]
        self.targets = torch.stack([labels.long(), torch.arange(n, device=labels.device)], 1)
        self.correct = torch.zeros(epochs, n, dtype=torch.bool, device=labels.device)
        self._seen = torch.zeros(n, dtype=torch.long, device=labels.device)
        self.epoch = -1

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._seen.zero_()

    def __call__(self, out: Tensor, target: Tensor) -> Tensor:
        y, rows = target[:, 0], target[:, 1]
        self.correct[self.epoch, rows] = out.detach().argmax(1) == y
        self._seen[rows] += 1
        return F.cross_entropy(out, y)

    def finish_epoch(self) -> float:
        if not bool((self._seen == 1).all()):
            raise MethodError(
                f"epoch {self.epoch} of the feature network did not present every training image "
                "exactly once; the per-presentation record needs train_epoch's one-permutation epochs"
            )
        return float(self.correct[self.epoch].sum()) / max(self.correct.shape[1], 1)


def train_feature_net_tracked(
    real: ClassData,
    seed: int,
    config: FeatureNetConfig,
    *,
    device: torch.device,
    progress: bool = False,
    compile: str = "off",
    log: Optional[Callable[[str], None]] = None,
) -> tuple[nn.Module, dict[str, float], Tensor]:
    """Train ``config.feature_net`` on all of ``real`` (no cache), recording every presentation.

    Returns the network (eval mode), figures ``train_time_s`` and ``train_accuracy`` (last
    epoch's accuracy on the minibatch forward passes, -1 when 0 epochs), and the
    ``(feature_epochs, N)`` boolean history ``correct[epoch, row]`` on the CPU (each image is
    presented once per epoch, rows in training-set order)."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    init_seed, order_seed, _ = feature_seeds(seed)
    net = get_network(
        config.feature_net, real.channel, real.num_classes, real.im_size, seed=init_seed, device=device
    )
    images = real.images.to(device)
    epochs = config.feature_epochs
    recorder = PresentationRecorder(real.labels.to(device), epochs)
    order = make_generator(order_seed)
    lr = config.feature_lr
    opt = sgd(net.parameters(), lr, config.feature_momentum, config.feature_weight_decay)
    acc = -1.0
    steps_per_epoch = -(-len(real) // config.feature_batch)
    use_compile = resolve_compile(compile, device, steps=epochs * steps_per_epoch)
    forward = compiled(net, enabled=use_compile, batch=min(config.feature_batch, max(1, len(real))))
    heartbeat = Heartbeat(log or (lambda msg: None))
    bar = tqdm(range(epochs), desc="feature net", disable=not progress, leave=False)
    ep = 0

    def beat(done: int, total: int) -> None:
        heartbeat.beat(lambda: f"feature network: epoch {ep + 1}/{epochs} ({done}/{total} images), "
                               f"{time.perf_counter() - start:.0f} s")

    for ep in bar:
        if ep == epochs // 2 and ep > 0:
            # The evaluation protocol's drop: lr x0.1 with a fresh optimiser (momentum reset).
            lr *= 0.1
            opt = sgd(net.parameters(), lr, config.feature_momentum, config.feature_weight_decay)
        recorder.start_epoch(ep)
        loss, _ = train_epoch(
            net, images, recorder.targets, opt, batch_size=config.feature_batch, generator=order,
            loss_fn=recorder, forward=forward, on_step=beat,
        )
        acc = recorder.finish_epoch()
        heartbeat.beat(lambda: f"feature network: epoch {ep + 1}/{epochs} done, training accuracy "
                               f"{100 * acc:.1f} %, {time.perf_counter() - start:.0f} s")
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
    net.eval()
    figures = {"train_time_s": time.perf_counter() - start, "train_accuracy": float(acc)}
    return net, figures, recorder.correct.cpu()


def train_feature_net(
    real: ClassData,
    seed: int,
    config: FeatureNetConfig,
    *,
    device: torch.device,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``config.feature_net`` on all of ``real`` (no cache). Returns the network (eval
    mode) and figures ``train_time_s`` and ``train_accuracy`` (last epoch, -1 when 0 epochs);
    :func:`train_feature_net_tracked` without the presentation history."""
    net, figures, _ = train_feature_net_tracked(real, seed, config, device=device, progress=progress)
    return net, figures


def _trained_entry(
    real: ClassData, seed: int, config: FeatureNetConfig, context: RunContext, need: str
) -> tuple[dict, str, dict[str, float]]:
    """The cache entry of the trained network (trained here on a miss), its key and the cost
    figures of the stage; raises :class:`MethodError` when the entry lacks ``need``."""
    trained: dict[str, float] = {}

    def compute() -> dict:
        net, figures, history = train_feature_net_tracked(
            real, seed, config, device=context.device, progress=context.progress,
            compile=context_mode(context), log=context.log,
        )
        trained.update(figures)
        return {
            "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
            "presentation_correct": history,
            "train_time_s": torch.tensor(figures["train_time_s"], dtype=torch.float64),
            "train_accuracy": torch.tensor(figures["train_accuracy"], dtype=torch.float64),
        }

    key = feature_cache_key(real, seed, config)
    start = time.perf_counter()
    entry = context.cached(key, compute)
    elapsed = time.perf_counter() - start
    if need not in entry:
        raise MethodError(
            f"the feature cache returned an entry without '{need}' for key {key}; "
            "delete that cache entry and run again"
        )
    hit = not trained
    context.log(f"feature network {'loaded from cache' if hit else 'trained'} ({key})")
    return entry, key, {
        "feature_train_time_s": 0.0 if hit else elapsed,
        "feature_cache_hit": 1.0 if hit else 0.0,
        "feature_net_train_time_s": float(entry.get("train_time_s", torch.tensor(float("nan")))),
        "feature_train_accuracy": float(entry.get("train_accuracy", torch.tensor(float("nan")))),
    }


def feature_network(
    real: ClassData, seed: int, config: FeatureNetConfig, context: RunContext
) -> tuple[nn.Module, dict[str, float]]:
    """The trained feature network for (``real``, ``seed``, budget), from the context's cache
    when present. Figures: ``feature_train_time_s`` (spent in this call; 0 on a cache hit),
    ``feature_cache_hit`` (0/1), ``feature_net_train_time_s`` (when it was trained) and
    ``feature_train_accuracy`` (last-epoch training accuracy)."""
    entry, key, figures = _trained_entry(real, seed, config, context, "state_dict")
    net = get_network(
        config.feature_net, real.channel, real.num_classes, real.im_size, seed=0, device=context.device
    )
    try:
        net.load_state_dict(entry["state_dict"])
    except RuntimeError as exc:
        raise MethodError(
            f"the cached feature network for key {key} does not fit {config.feature_net} "
            f"({str(exc).splitlines()[0]}); delete that cache entry and run again"
        ) from exc
    net.eval()
    return net, figures


def presentation_history(
    real: ClassData, seed: int, config: FeatureNetConfig, context: RunContext
) -> tuple[Tensor, dict[str, float]]:
    """The ``(feature_epochs, N)`` boolean history of the feature network's training run
    (``correct[epoch, row]``, CPU), from the same cache entry as :func:`feature_network`, with
    the same cost figures."""
    entry, key, figures = _trained_entry(real, seed, config, context, "presentation_correct")
    history = entry["presentation_correct"]
    expected = (config.feature_epochs, len(real))
    if not isinstance(history, Tensor) or tuple(history.shape) != expected:
        shape = tuple(history.shape) if isinstance(history, Tensor) else type(history).__name__
        raise MethodError(
            f"the cached presentation history for key {key} has shape {shape}, expected "
            f"{expected}; delete that cache entry and run again"
        )
    return history.bool().cpu(), figures


@torch.no_grad()
def embeddings(net: nn.Module, images: Tensor, *, batch_size: int = EMBED_BATCH, compile: bool = False) -> Tensor:
    """``net.embed`` of ``images`` in eval mode without autograd, ``batch_size`` at a time,
    on the network's device (through the shared compiled graph with ``compile``). Returns (N, d)."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    embed = compiled(net, "embed", enabled=compile, batch=batch_size)
    chunks = [
        embed(images[i : i + batch_size].to(device)) for i in range(0, images.shape[0], batch_size)
    ]
    net.train(was_training)
    if not chunks:
        return torch.empty(0, 0, device=device)
    return torch.cat(chunks)


def coreset_features(
    real: ClassData, seed: int, config: CoresetFeatureConfig, context: Optional[RunContext] = None
) -> tuple[Tensor, dict[str, float]]:
    """Feature vectors (N, d) for every training image of ``real`` (rows in training-set order)
    on ``context.device``, plus cost figures of the feature stage."""
    context = context or RunContext(device=real.device)
    if config.feature_space == "pixels":
        return real.images.to(context.device).flatten(1), {
            "feature_train_time_s": 0.0,
            "feature_cache_hit": 0.0,
        }
    net, figures = feature_network(real, seed, config, context)
    start = time.perf_counter()
    steps = -(-len(real) // EMBED_BATCH)
    feats = embeddings(net, real.images, compile=resolve_compile(context_mode(context), context.device, steps=steps))
    figures["embedding_time_s"] = time.perf_counter() - start
    return feats, figures


def check_selection_size(features: Tensor, k: int) -> None:
    """Raise :class:`MethodError` unless ``features`` is (n, d) and 0 < ``k`` <= n."""
    if features.ndim != 2:
        raise MethodError(f"features must be a 2-D (n, d) matrix, got shape {tuple(features.shape)}")
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise MethodError(f"the number of points to select must be a positive integer, got {k!r}")
    if k > features.shape[0]:
        raise MethodError(f"cannot select {k} points from {features.shape[0]} candidates")


def selection_dtype(device: torch.device) -> torch.dtype:
    """Float64 for the greedy distance computations (ties and near-ties resolved the same way
    on every device), except on MPS which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


class GreedyCoresetMethod(Method):
    """Shared ``condense`` of the feature-space coresets (herding, k-center).

    Subclasses set ``name``/``config_class`` and implement :meth:`select` (a pure function of
    one class's feature matrix). The result keeps the chosen training-set indices in selection
    order, class-major (all of class 0, then class 1, ...), with the real images and labels.
    Coresets are evaluated with DC's protocol: 300 epochs when no augmentation is active.
    ``context.iterations`` does not apply (there is no iteration budget) and is ignored.
    """

    learned = False
    eval_epochs_no_aug = 300

    def select(self, features: Tensor, k: int) -> Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement select(features, k)")

    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        real.validate_ipc(ipc)
        context = context or RunContext(device=real.device)
        meter = CostMeter(context.device)
        feats, figures = coreset_features(real, seed, self.config, context)
        dtype = selection_dtype(feats.device)
        start = time.perf_counter()
        chosen = []
        for c in range(real.num_classes):
            idx = real.indices_by_class[c].to(feats.device)
            local = self.select(feats[idx].to(dtype), ipc)
            chosen.append(idx[local])
        indices = torch.cat(chosen).to(real.device)
        figures["selection_time_s"] = time.perf_counter() - start
        return self._selection(real, ipc, seed, indices, meter.figures(iterations=0, **figures))
