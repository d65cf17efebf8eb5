"""What the learned methods share: the :class:`LearnedMethod` base class and their helpers.

* :class:`LearnedMethod` plugs a method into the shared outer loop of :mod:`methods.loop`
  (budget, lr schedule, seeded generators, checkpoint/resume, progress, costs): a method
  implements ``start`` (initial images, optimiser, counters) and ``step`` (one outer iteration).
* Synthetic-set initialisation (:func:`init_synthetic`), class-major real batches
  (:func:`real_batch`), one siamese DSA draw per class (:func:`augment_per_class`; DSA, Zhao & Bilen,
  ICML 2021), the DSA module of a config (:func:`dsa_for`), the checks every
  learned config shares (:func:`image_loop_problems`), chunked no-grad real forwards (:func:`classes_per_chunk`),
  DC's (outer_loop, inner_loop) table by IPC (:func:`get_loops`, used by DC and by CAFE's
  fixed bi-level loops) and :func:`sync` for timings.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import Tensor, nn

from methods.augment import DSA, default_dsa_strategy, parse_strategy
from methods.base import Method
from methods.context import RunContext
from methods.errors import MethodError
from methods.loop import LoopRun, Synthesis, run_loop
from methods.networks import canonical_network_name, has_batchnorm
from methods.realdata import ClassData
from methods.synset import SyntheticSet

REAL_CHUNK_IMAGES = 4096
"""Largest real batch forwarded at once (without autograd) on CUDA, for networks without
batch norm. Whole classes are grouped up to this many images; results equal one pass over all
classes because every layer of such networks acts per sample. Bounds memory for many classes
(CIFAR100 at 256 per class is 25,600 images)."""

CPU_REAL_CHUNK_IMAGES = 512
"""The same bound on other devices (the README's performance notes give the measurement)."""

LOOPS_BY_IPC: dict[int, tuple[int, int]] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
"""DC's ``get_loops`` table (Zhao et al., ICLR 2021, code ``utils.py``): IPC -> (outer_loop, inner_loop)."""


class LearnedMethod(Method):
    """Base class of every method that learns its synthetic set in an outer loop.

    A subclass sets ``name``/``config_class`` (a frozen config with an ``iterations`` field)
    and ``generator_names`` (the named random streams, in order: see
    :func:`methods.loop.seeded_generators`), and implements:

    * ``start(run) -> Synthesis``: the initial images (a leaf tensor), their labels and
      optimiser, the cost counters, and whatever else ``step`` needs (a :class:`Synthesis`
      subclass);
    * ``step(run, syn, iteration) -> loss``: one outer iteration, drawing only from
      ``run.generators``; returns a number (or 0-dim tensor) shown in progress lines.

    Optional hooks: ``lr_milestones()`` (fractions of the budget where the image lr is multiplied
    by ``lr_decay``), ``progress_note`` (text appended to progress lines), ``cost_figures``
    (method-specific cost entries), ``finish`` (the :class:`SyntheticSet`; by default images,
    labels, cost and ``extra(run, syn)``). ``real_on_device`` moves the real data to the run's
    device before ``start``. :meth:`condense` runs :func:`methods.loop.run_loop`.
    """

    generator_names: ClassVar[tuple[str, ...]] = ("data",)
    loss_label: ClassVar[str] = "loss"
    lr_decay: ClassVar[float] = 0.5
    real_on_device: ClassVar[bool] = False

    def condense(
        self, real: ClassData, ipc: int, *, seed: int, context: Optional[RunContext] = None
    ) -> SyntheticSet:
        return run_loop(self, real, ipc, seed=seed, context=context)

    def lr_milestones(self) -> Sequence[float]:
        return ()

    @abc.abstractmethod
    def start(self, run: LoopRun) -> Synthesis:
        """The initial learned state of a run (see the class docstring)."""

    @abc.abstractmethod
    def step(self, run: LoopRun, syn: Any, iteration: int) -> Any:
        """One outer iteration; returns the loss shown in progress lines."""

    def progress_note(self, run: LoopRun, syn: Any) -> str:
        return ""

    def cost_figures(self, run: LoopRun, syn: Any) -> dict[str, float]:
        return {}

    def extra(self, run: LoopRun, syn: Any) -> dict[str, Any]:
        return {}

    def finish(self, run: LoopRun, syn: Any, cost: dict[str, float]) -> SyntheticSet:
        return self._synset(run.real, run.ipc, run.seed, syn.images.detach(), syn.labels, cost,
                            extra=self.extra(run, syn))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued kernels (accurate timings on CUDA; no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def get_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) for ``ipc``: DC's table where it has an entry, else the entry of
    the largest tabulated IPC below ``ipc`` (IPC > 50 -> (50, 10), the DC authors' choice)."""
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise MethodError(f"IPC must be a positive integer, got {ipc!r}")
    return LOOPS_BY_IPC[max(k for k in LOOPS_BY_IPC if k <= ipc)]


def image_loop_problems(config: Any) -> list[str]:
    """Every problem with the fields the learned methods' configs share: ``iterations`` >= 1,
    ``lr_img`` > 0, ``momentum_img`` in [0, 1), ``init`` 'noise' or 'real', a registered
    ``model`` and, with ``dsa`` on, a valid ``dsa_strategy`` (None: the dataset's default)."""
    problems = []
    if config.iterations < 1:
        problems.append(f"iterations must be >= 1, got {config.iterations}")
    if not config.lr_img > 0:
        problems.append(f"lr_img must be > 0, got {config.lr_img}")
    if not 0 <= config.momentum_img < 1:
        problems.append(f"momentum_img must be in [0, 1), got {config.momentum_img}")
    if config.init not in ("noise", "real"):
        problems.append(f"init must be 'noise' or 'real', got {config.init!r}")
    try:
        canonical_network_name(config.model)
    except MethodError as exc:
        problems.append(str(exc))
    if config.dsa and config.dsa_strategy is not None:
        try:
            parse_strategy(config.dsa_strategy)
        except MethodError as exc:
            problems.append(str(exc))
    return problems


def dsa_for(real: ClassData, enabled: bool, strategy: Optional[str]) -> Optional[DSA]:
    """The DSA module of a config (``strategy`` None: the dataset's default, no flip for
    digits), or None when ``enabled`` is False."""
    if not enabled:
        return None
    return DSA(strategy or default_dsa_strategy(real.name, real.flip_preserves_label))


def init_synthetic(
    real: ClassData, ipc: int, init: str, generator: torch.Generator, device: torch.device,
    dtype: Optional[torch.dtype] = None,
) -> tuple[Tensor, Tensor]:
    """Class-major synthetic images (noise N(0,1) in normalised space, or random real images)
    as a leaf tensor on ``device`` (in ``dtype`` when given), and their hard labels
    ``[0]*ipc + [1]*ipc + ...``."""
    c, (h, w) = real.num_classes, real.im_size
    if init == "noise":
        images = torch.randn(c * ipc, real.channel, h, w, generator=generator)
    elif init == "real":
        idx = torch.cat([real.sample_indices(k, ipc, generator) for k in range(c)])
        images = real.images[idx].detach().cpu()
    else:
        raise MethodError(f"init must be 'noise' or 'real', got {init!r}")
    labels = torch.arange(c).repeat_interleave(ipc)
    images = images.to(device) if dtype is None else images.to(device=device, dtype=dtype)
    return images.clone().requires_grad_(True), labels.to(device)


def real_batch(real: ClassData, per_class: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Class-major real batch with exactly ``per_class`` images of every class."""
    idx = torch.cat([real.sample_indices(c, per_class, generator) for c in range(real.num_classes)])
    return real.images[idx].to(device)


def augment_per_class(dsa: Any, real_x: Tensor, syn_x: Tensor, num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One siamese DSA draw per class, shared by that class's real and synthetic images."""
    n, m = real_x.shape[0] // num_classes, syn_x.shape[0] // num_classes
    reals, syns = [], []
    for c in range(num_classes):
        r, s = dsa.siamese([real_x[c * n : (c + 1) * n], syn_x[c * m : (c + 1) * m]], generator)
        reals.append(r.detach())
        syns.append(s)
    return torch.cat(reals), torch.cat(syns)


def chunk_images(net: nn.Module) -> int:
    """Images per no-grad forward for ``net``'s device (:data:`REAL_CHUNK_IMAGES` on CUDA,
    :data:`CPU_REAL_CHUNK_IMAGES` elsewhere)."""
    param = next(net.parameters(), None)
    on_cuda = param is not None and param.device.type == "cuda"
    return REAL_CHUNK_IMAGES if on_cuda else CPU_REAL_CHUNK_IMAGES


def classes_per_chunk(net: nn.Module, num_classes: int, per_class: int) -> int:
    """How many whole classes one no-grad real forward may hold (all of them with batch norm)."""
    if has_batchnorm(net):
        return num_classes
    return max(1, min(num_classes, chunk_images(net) // max(1, per_class)))
