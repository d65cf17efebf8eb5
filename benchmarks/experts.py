"""The expert stage of trajectory matching: train experts on the full training set, store their
trajectories, load them for MTT/DATM (``condbench experts``).

Training follows MTT's ``buffer.py`` (Cazenavette et al., CVPR 2022, §3.1 and §4): a fresh
network per expert, trained ``epochs`` epochs on the whole training set with SGD (lr 0.01, no
momentum, no weight decay), minibatches of 256 drawn from a fresh permutation each epoch, every
minibatch DSA-augmented (the dataset's default strategy; non-siamese draws), images
ZCA-whitened when the key says so (ZCA fitted on the training images, regulariser 0.1, as MTT's
kornia whitening; :mod:`methods.zca`). The flat parameter vector is recorded after
initialisation and after every epoch. Every draw comes from seeded CPU generators: expert
``i``'s initialisation and data streams are seeded from the key and ``i``
(:meth:`methods.trajectories.TrajectoryKey.expert_seed`), so an expert can be (re)trained on its
own and gives the same file.

On-disk layout (one folder per :class:`~methods.trajectories.TrajectoryKey`)::

    <root>/experts/<dataset>_<arch>_<zca|nozca>_<E>ep_seed<S>_<digest>/
        key.json               the key, the format version, the parameter count and layout
        expert_<i>.pt          a finished expert: {"magic", "format_version", "key", "index",
                               "trajectory": float32 tensor (E + 1, P)}
        expert_<i>.json        its cost (training seconds, device); not part of the trajectory
        expert_<i>.partial.pt  an interrupted expert: snapshots so far, network, optimiser and
                               generator states after the last finished epoch

Every file is written atomically (a temp file in the folder, flushed and fsynced, renamed over
the target, the folder fsynced). A finished expert is never retrained; an interrupted one resumes
from its last finished epoch and ends bit-identical to an uninterrupted run (same device).
``expert_<i>.pt`` holds no timings, so reruns give byte-identical files.

:func:`resources_for` is what the condense pipeline calls: it loads the trajectories a method
needs into ``RunContext.resources`` (nothing for other methods), with one-line errors for a
missing or partial set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import UserError
from benchmarks.storage import atomic_torch_save, atomic_write_bytes, check_writable
from methods.augment import DSA, default_dsa_strategy
from methods.errors import MethodError
from methods.networks import canonical_network_name, get_network
from methods.realdata import ClassData
from methods.rng import make_generator
from methods.training import Heartbeat
from methods.trajectories import RESOURCE, TrajectoryKey, Trajectories, flat_parameters
from methods.zca import ZCA

FORMAT_VERSION = 1
MAGIC = "condensation-bench/expert-trajectory"
EXPERTS_DIR = "experts"


class ExpertsError(UserError):
    """Missing, partial, foreign or corrupt expert trajectories (the message says what to run)."""


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def expert_dir(root: str | os.PathLike, key: TrajectoryKey) -> Path:
    """``<root>/experts/<key.folder_name()>``."""
    return Path(root) / EXPERTS_DIR / key.folder_name()


def _save_torch(obj: Any, path: Path) -> None:
    atomic_torch_save(obj, path)


def _save_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _load_torch(path: Path, what: str) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExpertsError(f"{path} could not be read as {what} ({type(exc).__name__}); delete it and rerun "
                           f"the experts stage") from exc
    if not isinstance(data, dict):
        raise ExpertsError(f"{path} is not {what}; delete it and rerun the experts stage")
    return data


def _expert_file(folder: Path, i: int) -> Path:
    return folder / f"expert_{i}.pt"


def _partial_file(folder: Path, i: int) -> Path:
    return folder / f"expert_{i}.partial.pt"


def _check_key_file(folder: Path, key: TrajectoryKey) -> None:
    path = folder / "key.json"
    if not path.exists():
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExpertsError(f"{path} is unreadable ({exc}); delete the folder {folder} and rerun the experts stage") from exc
    if stored.get("key") != key.to_dict():
        raise ExpertsError(f"{folder} holds experts of another key ({stored.get('key')}); delete the folder")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class ExpertReport:
    """What one call of :func:`train_experts` did: experts ``trained`` from scratch, ``resumed``
    (index -> epoch it continued from), ``skipped`` (already finished), the folder and the
    seconds spent."""

    folder: Path
    trained: list[int] = field(default_factory=list)
    resumed: dict[int, int] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0


def prepare_training_data(train: ClassData, key: TrajectoryKey) -> ClassData:
    """The images experts train on: ``train`` itself, or ZCA-whitened with ZCA fitted on its
    images (on the CPU, as MTT/DATM's distillation fits it) when ``key.zca``."""
    if not key.zca:
        return train
    zca = ZCA.fit(train.images.detach().cpu())
    return ClassData(images=zca.whiten(train.images), labels=train.labels, num_classes=train.num_classes,
                     mean=train.mean, std=train.std, name=train.name, class_names=train.class_names,
                     indices_by_class=list(train.indices_by_class))


def train_expert(
    data: ClassData,
    key: TrajectoryKey,
    index: int,
    *,
    device: torch.device,
    resume: Optional[Mapping[str, Any]] = None,
    on_epoch: Optional[Callable[[int, dict[str, Any]], None]] = None,
    log: Callable[[str], None] = lambda msg: None,
) -> Tensor:
    """Train expert ``index`` of ``key`` on ``data`` (already whitened when ``key.zca``) and
    return its trajectory (epochs + 1, P) on the CPU. ``resume`` is a partial state written
    through ``on_epoch(epoch, state)``, which is called after every finished epoch with the
    state to continue from. ``log`` gets one line per epoch and a heartbeat within long epochs."""
    net = get_network(key.arch, data.channel, data.num_classes, data.im_size,
                      seed=key.expert_seed(index, "init"), device=device)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=key.lr, momentum=key.momentum, weight_decay=key.weight_decay)
    gen = make_generator(key.expert_seed(index, "data"))
    snapshots = [flat_parameters(net.parameters()).cpu()]
    first = 0
    if resume is not None:
        net.load_state_dict({k: v.to(device) for k, v in resume["net"].items()})
        opt.load_state_dict(resume["optimizer"])
        gen.set_state(resume["generator"])
        snapshots = list(resume["snapshots"].unbind(0))
        first = int(resume["epoch"])
    dsa = DSA(key.dsa_strategy or default_dsa_strategy(data.name, data.flip_preserves_label)) if key.dsa else None
    images, labels = data.images.to(device), data.labels.to(device)
    n = images.shape[0]
    heartbeat, start = Heartbeat(log), time.perf_counter()
    for epoch in range(first, key.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for b in range(0, n, key.batch):
            heartbeat.beat(lambda: f"expert {index}: epoch {epoch + 1}/{key.epochs} ({b}/{n} images), "
                                   f"{time.perf_counter() - start:.0f} s")
            idx = perm[b : b + key.batch]
            x = images[idx]
            if dsa is not None:
                x = dsa(x, gen)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        snapshots.append(flat_parameters(net.parameters()).cpu())
        heartbeat.beat(lambda: f"expert {index}: epoch {epoch + 1}/{key.epochs} done, "
                               f"{time.perf_counter() - start:.0f} s")
        if on_epoch is not None and epoch + 1 < key.epochs:
            on_epoch(epoch + 1, {
                "key": key.to_dict(), "index": int(index), "epoch": epoch + 1,
                "snapshots": torch.stack(snapshots),
                "net": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                "optimizer": opt.state_dict(), "generator": gen.get_state().clone(),
            })
    return torch.stack(snapshots).float().contiguous()


def train_experts(
    train: ClassData,
    key: TrajectoryKey,
    num_experts: int,
    root: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = lambda msg: None,
    on_epoch: Optional[Callable[[int, int], None]] = None,
) -> ExpertReport:
    """Make sure experts ``0 .. num_experts - 1`` of ``key`` exist under ``root`` (layout in the
    module docstring): finished ones are skipped, interrupted ones resume, the rest are trained.
    ``on_epoch(index, epoch)`` is called after each saved epoch (tests use it to interrupt)."""
    if num_experts < 1:
        raise ExpertsError(f"--num-experts must be >= 1, got {num_experts}")
    if key.epochs < 1:
        raise ExpertsError(f"--epochs must be >= 1, got {key.epochs}")
    if train.name.lower() != key.dataset.lower():
        raise ExpertsError(f"the data are '{train.name}', the key is for '{key.dataset}'")
    device = torch.device(device)
    folder = expert_dir(root, key)
    _check_key_file(folder, key)
    data = prepare_training_data(train, key)
    probe = get_network(key.arch, data.channel, data.num_classes, data.im_size, seed=0)
    layout = [[name, list(p.shape)] for name, p in probe.named_parameters()]
    if not (folder / "key.json").exists():
        _save_json({"format_version": FORMAT_VERSION, "key": key.to_dict(), "digest": key.digest(),
                    "num_params": int(sum(p.numel() for p in probe.parameters())), "parameters": layout},
                   folder / "key.json")
    report = ExpertReport(folder=folder)
    t_all = time.perf_counter()
    for i in range(int(num_experts)):
        final = _expert_file(folder, i)
        if final.exists():
            report.skipped.append(i)
            continue
        partial_path = _partial_file(folder, i)
        resume = None
        if partial_path.exists():
            resume = _load_torch(partial_path, "a partial expert")
            if resume.get("key") != key.to_dict() or int(resume.get("index", -1)) != i:
                raise ExpertsError(f"{partial_path} belongs to another key or expert; delete it")
            report.resumed[i] = int(resume["epoch"])
            log(f"expert {i}: resuming at epoch {resume['epoch']}/{key.epochs}")
        else:
            report.trained.append(i)
            log(f"expert {i}: training {key.epochs} epochs ({key.describe()})")
        t0 = time.perf_counter()

        before = float(resume.get("seconds", 0.0)) if resume else 0.0

        def save_partial(epoch: int, state: dict[str, Any], i: int = i, t0: float = t0, before: float = before) -> None:
            state["seconds"] = before + time.perf_counter() - t0
            _save_torch(state, _partial_file(folder, i))
            if on_epoch is not None:
                on_epoch(i, epoch)

        trajectory = train_expert(data, key, i, device=device, resume=resume, on_epoch=save_partial, log=log)
        _save_torch({"magic": MAGIC, "format_version": FORMAT_VERSION, "key": key.to_dict(), "index": i,
                     "trajectory": trajectory}, final)
        seconds = before + time.perf_counter() - t0
        _save_json({"index": i, "train_time_s": seconds, "device": str(device), "epochs": key.epochs,
                    "resumed_from_epoch": report.resumed.get(i)}, folder / f"expert_{i}.json")
        partial_path.unlink(missing_ok=True)
        if on_epoch is not None:
            on_epoch(i, key.epochs)
    report.seconds = time.perf_counter() - t_all
    log(f"experts in {folder}: trained {report.trained}, resumed {sorted(report.resumed)}, "
        f"already there {report.skipped} ({report.seconds:.1f} s)")
    return report


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _command(key: TrajectoryKey, num_experts: int, root: str | os.PathLike) -> str:
    from methods.mtt import experts_command

    return experts_command(key, num_experts) + (f" --root {root}" if str(root) not in ("", ".") else "")


def load_trajectories(root: str | os.PathLike, key: TrajectoryKey, num_experts: int) -> Trajectories:
    """Experts ``0 .. num_experts - 1`` of ``key`` from ``root``; :class:`ExpertsError` (one
    line, with the command to run) when the folder is missing or some experts are unfinished."""
    folder = expert_dir(root, key)
    cmd = _command(key, num_experts, root)
    if not folder.is_dir():
        others = sorted(p.name for p in (Path(root) / EXPERTS_DIR).glob("*") if p.is_dir())
        seen = f" (found: {', '.join(others)})" if others else ""
        raise ExpertsError(f"no expert trajectories for {key.describe()} under {Path(root) / EXPERTS_DIR}{seen}; "
                           f"train them with `{cmd}`")
    _check_key_file(folder, key)
    missing = [i for i in range(int(num_experts)) if not _expert_file(folder, i).exists()]
    if missing:
        partial = [i for i in missing if _partial_file(folder, i).exists()]
        part = f" ({', '.join(map(str, partial))} interrupted)" if partial else ""
        raise ExpertsError(f"the expert trajectories for {key.describe()} are incomplete: experts "
                           f"{', '.join(map(str, missing))} of {num_experts} are missing{part}; finish them with `{cmd}`")
    experts = []
    for i in range(int(num_experts)):
        path = _expert_file(folder, i)
        data = _load_torch(path, "an expert trajectory")
        if data.get("magic") != MAGIC or data.get("key") != key.to_dict() or int(data.get("index", -1)) != i:
            raise ExpertsError(f"{path} is not expert {i} of {key.describe()}; delete it and run `{cmd}`")
        experts.append(data["trajectory"])
    try:
        return Trajectories(key=key, experts=experts, indices=list(range(int(num_experts))))
    except MethodError as exc:
        raise ExpertsError(f"{folder}: {exc}") from None


def resources_for(
    method: str,
    dataset: str,
    ipc: int,
    *,
    overrides: Optional[Mapping[str, Any]] = None,
    experts_root: str | os.PathLike = ".",
) -> dict[str, Any]:
    """The ``RunContext.resources`` a run of ``method`` (with config ``overrides``) on
    ``dataset`` at ``ipc`` needs: ``{'expert_trajectories': Trajectories}`` for trajectory
    matching (MTT, DATM), ``{}`` for every other method. ``dataset`` is the name the loaded data
    carry (``ClassData.name``). Raises :class:`ExpertsError` naming the command that trains the
    missing experts, :class:`MethodError` for a bad config or an IPC the table lacks."""
    need = experts_needed(method, dataset, ipc, overrides=overrides)
    if need is None:
        return {}
    key, num_experts = need
    return {RESOURCE: load_trajectories(experts_root, key, num_experts)}


def experts_needed(method: str, dataset: str, ipc: int, *,
                   overrides: Optional[Mapping[str, Any]] = None) -> Optional[tuple[TrajectoryKey, int]]:
    """``(key, number of experts)`` that a run of ``method`` on ``dataset`` at ``ipc`` needs, or
    None for a method without expert trajectories. Cells with equal keys share one expert stage
    (a sweep plans one job per distinct key, with the largest number of experts asked for)."""
    from methods.mtt import MTTConfig
    from methods.registry import get_method

    m = get_method(method, overrides)
    if not isinstance(m.config, MTTConfig):
        return None
    return m.config.trajectory_key(dataset, ipc), int(m.config.num_experts)


def run_experts_stage(
    key: TrajectoryKey,
    num_experts: int,
    root: str | os.PathLike,
    *,
    data_root: str | os.PathLike = "data",
    device: Optional[str | torch.device] = None,
    download: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> ExpertReport:
    """Load ``key.dataset`` and run :func:`train_experts` (what a sweep's expert job calls;
    rerunning it after a preemption trains nothing twice)."""
    from benchmarks.data import load_dataset
    from benchmarks.pipeline import resolve_device

    dev = resolve_device(device)
    data = load_dataset(key.dataset, data_root=data_root, device=dev, download=download)
    return train_experts(data.train, key, num_experts, root, device=dev, log=log)


# --------------------------------------------------------------------------------------------
# Command line: `condbench experts`
# --------------------------------------------------------------------------------------------

_EPILOG = """\
examples:
  condbench experts --dataset digits --arch ConvNet --num-experts 5 --epochs 20
  condbench experts --dataset cifar10 --num-experts 100 --epochs 50 --zca --root runs/

Reruns skip finished experts and resume an interrupted one from its last epoch. MTT/DATM runs
load the experts of their key from the same --root; their error message prints the command.
"""


def add_experts_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``experts`` subcommand to ``subparsers`` (the CLI's ``add_subparsers`` object)."""
    p = subparsers.add_parser(
        "experts", help="train and store expert trajectories for trajectory matching (MTT, DATM)",
        description="Train N networks on the full training set (MTT's buffer.py protocol) and store each "
                    "one's parameters at every epoch, resumably.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name or tensor:<file.pt>")
    p.add_argument("--arch", default="ConvNet", help="expert architecture (ConvNet)")
    p.add_argument("--num-experts", type=int, default=100, help="number of experts (100, the paper's)")
    p.add_argument("--epochs", type=int, default=50, help="epochs per expert (50, the paper's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stage (0)")
    p.add_argument("--zca", action=argparse.BooleanOptionalAction, default=False,
                   help="train on ZCA-whitened images (as the MTT rows with ZCA need)")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (0.01)")
    p.add_argument("--batch", type=int, default=256, help="minibatch size (256)")
    p.add_argument("--root", default=os.environ.get("CONDBENCH_EXPERTS", "."),
                   help="folder holding experts/ (default: $CONDBENCH_EXPERTS or .)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--data-root", default=os.environ.get("CONDBENCH_DATA", "data"),
                   help="folder holding the datasets (default: $CONDBENCH_DATA or ./data)")
    p.add_argument("--download", action="store_true", help="download torchvision datasets that are missing")
    p.set_defaults(func=cmd_experts)
    return p


def cmd_experts(args: argparse.Namespace) -> int:
    """Run the experts stage for the parsed ``args``; prints one summary line."""
    from benchmarks.data import canonical_dataset_name

    if args.batch < 1 or not args.lr > 0:
        raise ExpertsError(f"--batch must be >= 1 and --lr > 0, got {args.batch} and {args.lr}")
    arch = canonical_network_name(args.arch)
    check_writable(args.root, flag="--root", folder=True)  # before any training
    key = TrajectoryKey(dataset=canonical_dataset_name(args.dataset), arch=arch, zca=bool(args.zca), epochs=int(args.epochs),
                        seed=int(args.seed), lr=float(args.lr), batch=int(args.batch))
    report = run_experts_stage(key, int(args.num_experts), args.root, data_root=args.data_root, device=args.device,
                               download=args.download, log=lambda msg: print(msg, file=sys.stderr))
    print(f"experts of {key.describe()} in {report.folder}: {len(report.trained)} trained, "
          f"{len(report.resumed)} resumed, {len(report.skipped)} already there ({report.seconds:.1f} s)")
    return 0
