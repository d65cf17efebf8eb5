"""Expert trajectories for trajectory matching, as tensors: :class:`TrajectoryKey` and
:class:`Trajectories`.

An expert is a network trained on the full real training set; its trajectory is its flat
parameter vector (every parameter of ``net.parameters()``, concatenated in that order) after
initialisation and after every epoch, so ``E`` trained epochs give ``E + 1`` snapshots
(Cazenavette et al., "Dataset Distillation by Matching Training Trajectories", CVPR 2022, §3.1
"Expert trajectories"; the released ``buffer.py`` stores them the same way).

Everything that changes a trajectory is in its :class:`TrajectoryKey`: the dataset, the
architecture, whether the data were ZCA-whitened, the number of epochs, the seed of the
stage, and the training recipe (lr, momentum, weight decay, batch, DSA). ``benchmarks.experts``
trains and stores experts under that key; a method receives a loaded :class:`Trajectories`
through ``RunContext.resources["expert_trajectories"]`` and checks it with
:meth:`Trajectories.check_for` before any work (one-line :class:`MethodError` per problem).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from methods.errors import MethodError

RESOURCE = "expert_trajectories"
"""The name under which a run's :class:`~methods.context.RunContext` carries the trajectories."""


@dataclass(frozen=True)
class TrajectoryKey:
    """Everything that changes an expert trajectory (and so names its folder).

    ``dataset`` is the dataset's canonical name, ``arch`` the registered architecture name,
    ``zca`` whether experts trained on ZCA-whitened images, ``epochs`` the trained epochs
    (snapshots ``0..epochs``), ``seed`` the stage's seed (expert ``i``'s seeds derive from the
    key and ``i``: :meth:`expert_seed`), then the recipe: SGD ``lr``, ``momentum``,
    ``weight_decay``, minibatch ``batch`` and DSA augmentation (``dsa``, ``dsa_strategy``; None =
    DSA's per-dataset default). The defaults are MTT's ``buffer.py`` (lr 0.01, no momentum, no
    weight decay, batch 256, DSA)."""

    dataset: str
    arch: str
    zca: bool
    epochs: int
    seed: int = 0
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch: int = 256
    dsa: bool = True
    dsa_strategy: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrajectoryKey":
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise MethodError(f"trajectory key has unknown fields {unknown}; it was written by another version")
        return cls(**{k: d[k] for k in d})

    def digest(self) -> str:
        """Ten hex digits of SHA-256 over the key's canonical JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def folder_name(self) -> str:
        """``<dataset>_<arch>_<zca|nozca>_<epochs>ep_seed<seed>_<digest>`` (filesystem-safe)."""
        data = re.sub(r"[^A-Za-z0-9.-]+", "-", self.dataset.split(":", 1)[-1]).strip("-") or "data"
        return f"{data}_{self.arch}_{'zca' if self.zca else 'nozca'}_{self.epochs}ep_seed{self.seed}_{self.digest()}"

    def expert_seed(self, index: int, stream: str) -> int:
        """The seed of expert ``index``'s random ``stream`` (``'init'``, ``'data'``): 63 bits of
        SHA-256 over the key's digest, the index and the stream name."""
        text = f"{self.digest()}|expert{int(index)}|{stream}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)

    def describe(self) -> str:
        """Short human description for messages (``digits/ConvNet, 20 epochs, no ZCA, seed 0``)."""
        return (f"{self.dataset}/{self.arch}, {self.epochs} epochs, {'ZCA' if self.zca else 'no ZCA'}, "
                f"seed {self.seed}")


@dataclass
class Trajectories:
    """Loaded expert trajectories: ``experts[i]`` is a float tensor (epochs + 1, P) of expert
    ``i``'s flat parameters after initialisation and after every epoch; ``key`` says what
    they are; ``indices`` the experts' numbers in the stored set (for messages)."""

    key: TrajectoryKey
    experts: list[Tensor]
    indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.indices:
            self.indices = list(range(len(self.experts)))
        shapes = {tuple(e.shape) for e in self.experts}
        want = self.key.epochs + 1
        for i, e in zip(self.indices, self.experts):
            if e.ndim != 2 or e.shape[0] != want:
                raise MethodError(
                    f"expert {i} holds {tuple(e.shape)} values, expected ({want}, P) for {self.key.epochs} "
                    f"epochs; its file is corrupt: delete it and rerun the experts stage"
                )
        if len(shapes) > 1:
            raise MethodError(f"the experts have different parameter counts {sorted(s[1] for s in shapes)}; "
                              f"they were not trained with one key: delete the folder and rerun the experts stage")

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def stored_epochs(self) -> int:
        return int(self.key.epochs)

    @property
    def num_params(self) -> int:
        return int(self.experts[0].shape[1]) if self.experts else 0

    def check_for(self, *, dataset: str, arch: str, zca: bool, num_params: int, max_start_epoch: int,
                  expert_epochs: int, how: str = "") -> None:
        """Raise a one-line :class:`MethodError` when these trajectories cannot serve a run on
        ``dataset`` with ``arch`` (``num_params`` parameters) and ``zca``, or when the start
        epochs drawn (below ``max_start_epoch``) plus ``expert_epochs`` run past the stored
        epochs (``max_start_epoch + expert_epochs <= stored epochs``). ``how`` is appended: the
        command that makes the right trajectories."""
        tail = f"; {how}" if how else ""
        if not self.experts:
            raise MethodError(f"the expert trajectories ({self.key.describe()}) hold no experts{tail}")
        if self.key.dataset.lower() != str(dataset).lower():
            raise MethodError(f"the expert trajectories are of dataset '{self.key.dataset}', this run condenses "
                              f"'{dataset}'{tail}")
        if self.key.arch.lower() != str(arch).lower():
            raise MethodError(f"the expert trajectories are of architecture '{self.key.arch}', this run's model is "
                              f"'{arch}'{tail}")
        if bool(self.key.zca) != bool(zca):
            raise MethodError(f"the expert trajectories were trained {'with' if self.key.zca else 'without'} ZCA, "
                              f"this run uses {'ZCA' if zca else 'no ZCA'}{tail}")
        if self.num_params != int(num_params):
            raise MethodError(f"the expert trajectories hold {self.num_params} parameters per snapshot, the "
                              f"'{arch}' network for this data has {num_params}{tail}")
        if max_start_epoch + expert_epochs > self.stored_epochs:
            raise MethodError(
                f"max_start_epoch {max_start_epoch} + expert_epochs {expert_epochs} = "
                f"{max_start_epoch + expert_epochs} exceeds the {self.stored_epochs} epochs stored in the expert "
                f"trajectories; use --set max_start_epoch={max(1, self.stored_epochs - expert_epochs)} or train "
                f"experts for {max_start_epoch + expert_epochs} epochs"
            )

    def segment(self, expert: int, start: int, length: int) -> tuple[Tensor, Tensor]:
        """(start parameters, target parameters ``length`` epochs later) of expert ``expert``."""
        traj = self.experts[expert]
        return traj[start], traj[start + length]


def flat_parameters(params: Sequence[Tensor]) -> Tensor:
    """One flat vector of ``params`` (detached, concatenated in order)."""
    return torch.cat([p.detach().reshape(-1) for p in params])
