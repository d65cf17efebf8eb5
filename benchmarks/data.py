"""Datasets as condensation needs them: one normalised tensor on the device + per-class index.

Why ~900 lines: every dataset's loader is registered beside its facts, and the loaders share
the validation helpers (IDX parsing, the tensor-file checks TinyImageNet and ``tensor:`` files
both use, the availability messages); a split would make those helpers cross-module private
imports.

Every built-in dataset is registered in :data:`DATASETS` by :func:`register_dataset`, a
decorator on its loader function that also declares the dataset's static facts
(:class:`DatasetInfo`: geometry, classes, mean/std, smallest class, display name, whether a
horizontal flip keeps the label). Supported names (case-insensitive, ``-``/``_`` ignored, see
:func:`dataset_names`):

* ``mnist``, ``fashionmnist`` -- read from the official raw IDX files (plain or ``.gz``) with a
  small parser of our own, so no download is needed when the files are on disk. Search order
  for ``data_root=R``: ``R/MNIST/raw`` (resp. ``R/FashionMNIST/raw``, torchvision's layout),
  then ``R`` itself, then -- FashionMNIST only -- ``/usr/share/datasets/fashion-mnist`` (Debian's
  ``dataset-fashion-mnist`` package). With ``download=True`` and no files found anywhere,
  torchvision downloads them into ``R/<Name>/raw``. Because both datasets use the same four
  file names, the label counts are checked (FashionMNIST has exactly 6000 training images per
  class, MNIST does not) so one is never silently read as the other.
* ``svhn``, ``cifar10``, ``cifar100`` -- torchvision's loaders (and downloaders); only their raw
  ``.data`` arrays are used, converted once to a float tensor (no per-sample transforms).
* ``tinyimagenet`` -- the reference's tensor file ``R/tinyimagenet.pt`` with keys
  ``images_train``, ``labels_train``, ``images_val``, ``labels_val``, ``classes`` (uint8; the
  validation split is the test set, as in the reference).
* ``digits`` -- bundled with scikit-learn, needs no download (see :func:`load_digits_dataset`).
* ``tensor:<path.pt>`` -- a user's own data in one ``.pt`` file (see :func:`save_tensor_dataset`).

Normalisation uses the per-dataset mean/std of the reference ``get_dataset`` (docs/reference.md
§2; DC's CIFAR100 statistics, not CAFE's copy of CIFAR10's). Images are ``ToTensor``-scaled to
[0, 1] and then normalised per channel, exactly what the reference's transform pipeline does,
but once for the whole array.

Every problem with the data on disk raises :class:`DataError` whose message names the path and
how to get the data; library tracebacks (torchvision, pickle, scipy) never reach the user.

Why one file of ~850 lines: the registry and the public API come first, then one short section
per on-disk format (IDX, torchvision, tensor files, bundled digits), each registering its
datasets; the sections share the error wording and the normalisation, and every caller imports
from this one module.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from benchmarks import UserError
from benchmarks.storage import atomic_torch_save
from methods.realdata import ClassData
from methods.registry import Registry

log = logging.getLogger(__name__)

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the official IDX files."""

TENSOR_PREFIX = "tensor:"


class DataError(UserError):
    """Missing, corrupt or unknown data. The message names the path and how to get the data."""


@dataclass
class Dataset:
    """A loaded dataset: normalised training data as :class:`ClassData` plus the test split.

    All tensors are normalised with ``mean``/``std`` and live on the requested device.
    ``source`` says where the data was read from (for logs and records).
    """

    name: str
    train: ClassData
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    channel: int
    im_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    source: str = ""

    @property
    def device(self) -> torch.device:
        return self.train.device

    def to(self, device: torch.device | str) -> "Dataset":
        """This dataset on ``device`` (itself when already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        return dataclasses.replace(
            self,
            train=self.train.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
        )


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, known without loading anything (for validating sweeps up
    front and for tables).

    ``min_train_per_class`` is the size of the smallest training class (the largest possible
    IPC); None when it is only known after loading. ``mean``/``std`` are the per-channel
    normalisation statistics (empty when computed from the training split at load time).
    ``display`` is the name tables print; ``order`` sorts datasets in tables.
    ``flip_preserves_label`` is False where a mirrored image is another class (digits), so
    augmentations leave out the horizontal flip there (DSA's per-dataset strategy,
    docs/reference.md §4.3)."""

    channel: int
    im_size: tuple[int, int]
    num_classes: int
    min_train_per_class: Optional[int]
    name: str = ""
    display: str = ""
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    flip_preserves_label: bool = True
    order: int = 1000

    def to_dict(self) -> dict[str, Any]:
        """Plain values for records and ``cells.json``."""
        out = dataclasses.asdict(self)
        out["im_size"] = list(self.im_size)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


Loader = Callable[[DatasetInfo, Path, torch.device, bool], Dataset]
"""``loader(info, data_root, device, download) -> Dataset``."""

Checker = Callable[[DatasetInfo, Path, bool], Optional[str]]
"""``checker(info, data_root, download)``: why the dataset cannot be loaded, or None."""


def _always_available(info: DatasetInfo, root: Path, download: bool) -> Optional[str]:
    return None


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: its static :attr:`info`, its loader and its availability check."""

    info: DatasetInfo
    load: Loader
    check: Checker = _always_available


DATASETS: Registry[DatasetEntry] = Registry("dataset", DataError)
"""Every built-in dataset, keyed by its lower-case name."""


def register_dataset(
    name: str,
    *,
    display: str,
    channel: int,
    im_size: tuple[int, int],
    num_classes: int,
    min_train_per_class: Optional[int],
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    flip_preserves_label: bool = True,
    order: int = 1000,
    check: Checker = _always_available,
) -> Callable[[Loader], Loader]:
    """Decorator registering a loader ``loader(info, data_root, device, download) -> Dataset``
    as dataset ``name`` with its static facts (see :class:`DatasetInfo`).

    ``check(info, data_root, download)`` returns a one-line message when the files are missing
    (without reading them), or None. Names are lower-case letters and digits; a taken name
    raises ``ValueError``. One loader may be registered under several names (stack the
    decorators); it tells them apart by ``info.name``::

        @register_dataset("mydata", display="MyData", channel=3, im_size=(32, 32),
                          num_classes=10, min_train_per_class=500, mean=(0.5,) * 3, std=(0.25,) * 3)
        def _load_mydata(info, root, device, download):
            xtr, ytr, xte, yte = ...  # float NCHW images in [0, 1], integer labels
            return normalised_dataset(info, xtr, ytr, xte, yte, device=device, source=str(root))
    """
    key = str(name).lower()
    if not key.isalnum() or key.startswith(TENSOR_PREFIX.rstrip(":")):
        raise ValueError(f"dataset name '{name}' must be letters and digits and not start with 'tensor'")
    if len(mean) != len(std) or (mean and len(mean) != channel):
        raise ValueError(f"dataset '{name}': mean and std need {channel} entries each (or none)")
    info = DatasetInfo(
        int(channel), (int(im_size[0]), int(im_size[1])), int(num_classes),
        None if min_train_per_class is None else int(min_train_per_class),
        name=key, display=display, mean=tuple(float(m) for m in mean), std=tuple(float(v) for v in std),
        flip_preserves_label=bool(flip_preserves_label), order=int(order),
    )
    return DATASETS.decorator(key, lambda loader: DatasetEntry(info, loader, check))


def _display(key: str) -> str:
    return DATASETS.get(key).info.display


DIGITS_SIZE = 16
DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0


def builtin_dataset_names() -> list[str]:
    """The registered dataset names in table order."""
    entries = sorted((e.info.order, n) for n, e in DATASETS.items())
    return [n for _, n in entries]


def dataset_names() -> list[str]:
    """Every accepted dataset name; ``tensor:<path.pt>`` stands for a user tensor file."""
    return builtin_dataset_names() + [TENSOR_PREFIX + "<path.pt>"]


def canonical_dataset_name(name: str) -> str:
    """Lower-case built-in name, or ``tensor:<path>`` unchanged; raises :class:`DataError`."""
    text = str(name).strip()
    if text.lower().startswith(TENSOR_PREFIX):
        path = text[len(TENSOR_PREFIX):]
        if not path:
            raise DataError("dataset 'tensor:' needs a file path, e.g. tensor:data/mine.pt")
        return TENSOR_PREFIX + path
    key = text.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; valid datasets: {', '.join(dataset_names())}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """Geometry, classes, statistics, display name and smallest-class size without loading
    the images.

    Built-in datasets answer from their registration. A ``tensor:`` file is opened
    memory-mapped to read its shapes and labels (cheap); ``min_train_per_class`` is then the
    real smallest class and ``display`` the file's stem. A missing or unreadable tensor file
    raises :class:`DataError`."""
    key = canonical_dataset_name(name)
    if not key.startswith(TENSOR_PREFIX):
        return DATASETS.get(key).info
    path = Path(key[len(TENSOR_PREFIX):])
    data = _torch_load(path, "tensor dataset", mmap=True)
    if "images_train" not in data or "labels_train" not in data:
        raise DataError(f"{path} lacks images_train/labels_train; see save_tensor_dataset")
    shape = tuple(torch.as_tensor(data["images_train"]).shape)
    if len(shape) == 3:
        shape = (shape[0], 1, shape[1], shape[2])
    if len(shape) == 4 and shape[1] > 4 and shape[3] <= 4:
        shape = (shape[0], shape[3], shape[1], shape[2])
    labels = _as_labels(data["labels_train"], shape[0], path, "labels_train")
    test = torch.as_tensor(data.get("labels_test", torch.zeros(0, dtype=torch.long))).long()
    names = data.get("class_names")
    top = int(max(labels.max(), test.max() if test.numel() else 0)) + 1
    num_classes = len(names) if names else top
    counts = torch.bincount(labels, minlength=num_classes)
    return DatasetInfo(int(shape[1]), (int(shape[2]), int(shape[3])), num_classes, int(counts.min()),
                       name=key, display=path.stem)


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def dataset_fingerprint(name: str) -> str:
    """What identifies the data behind ``name``: the canonical name of a built-in dataset (its
    files are fixed), ``tensor-sha256:<hex>`` of a ``tensor:`` file's bytes (so a file changed
    on disk is another dataset). Cached per path, size and mtime. Raises :class:`DataError` for
    a tensor file that cannot be read."""
    key = canonical_dataset_name(name)
    if not key.startswith(TENSOR_PREFIX):
        return key
    path = Path(key[len(TENSOR_PREFIX):]).expanduser()
    try:
        stat = path.stat()
        cache_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if cache_key not in _FINGERPRINTS:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            _FINGERPRINTS[cache_key] = "tensor-sha256:" + digest.hexdigest()
    except OSError as exc:
        raise DataError(f"cannot read tensor dataset {path} ({exc.strerror or exc})") from None
    return _FINGERPRINTS[cache_key]


def dataset_display(name: str) -> str:
    """The name tables print for dataset ``name`` (``MNIST``, ``CIFAR10``, ``Digits``, ...); a
    ``tensor:`` dataset is shown by its file's stem (the file is not opened)."""
    key = canonical_dataset_name(name)
    if key.startswith(TENSOR_PREFIX):
        return Path(key[len(TENSOR_PREFIX):]).stem
    return DATASETS.get(key).info.display


def is_tensor_dataset(name: str) -> bool:
    return str(name).strip().lower().startswith(TENSOR_PREFIX)


# --------------------------------------------------------------------------------------------
# Availability (no loading)
# --------------------------------------------------------------------------------------------

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_TORCHVISION_FILES = {
    "svhn": ["train_32x32.mat", "test_32x32.mat"],
    "cifar10": ["cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
}

_HOW_TO = {
    "svhn": "train_32x32.mat and test_32x32.mat directly in {root}",
    "cifar10": "the extracted 'python version' folder {root}/cifar-10-batches-py",
    "cifar100": "the extracted 'python version' folder {root}/cifar-100-python",
}


def _idx_path(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _idx_folder(key: str, root: Path) -> Optional[Path]:
    """First folder holding all four IDX files for mnist/fashionmnist (search order above)."""
    title = _display(key)
    candidates = [root / title / "raw", root]
    if key == "fashionmnist" and not any(_has_idx(c) for c in candidates):
        candidates.append(SYSTEM_FASHION_MNIST)
    for folder in candidates:
        if _has_idx(folder):
            return folder
    return None


def _has_idx(folder: Path) -> bool:
    return folder.is_dir() and all(_idx_path(folder, s) is not None for s in _IDX_FILES.values())


def check_available(name: str, data_root: str | os.PathLike = "data", download: bool = False) -> Optional[str]:
    """A message describing why ``name`` cannot be loaded from ``data_root``, or None.

    Only checks that the expected files exist (nothing is read). With ``download=True`` the
    torchvision datasets count as available because they will be fetched."""
    try:
        key = canonical_dataset_name(name)
    except DataError as exc:
        return str(exc)
    root = Path(data_root)
    if key.startswith(TENSOR_PREFIX):
        path = Path(key[len(TENSOR_PREFIX):])
        if not path.is_file():
            return (
                f"tensor dataset file {path} does not exist; create it with "
                "benchmarks.data.save_tensor_dataset (keys images_train, labels_train, "
                "images_test, labels_test)"
            )
        return None
    entry = DATASETS.get(key)
    return entry.check(entry.info, root, download)


def _check_idx(info: DatasetInfo, root: Path, download: bool) -> Optional[str]:
    if _idx_folder(info.name, root) is not None or download:
        return None
    return _missing_idx_message(info.name, root)


def _check_tinyimagenet(info: DatasetInfo, root: Path, download: bool) -> Optional[str]:
    path = root / "tinyimagenet.pt"
    if path.is_file():
        return None
    return (
        f"TinyImageNet tensor file {path} not found; it cannot be downloaded automatically. "
        "Create it as the reference does: one torch file with uint8 images_train (N,3,64,64), "
        "labels_train, images_val, labels_val and classes, saved as <data-root>/tinyimagenet.pt"
    )


def _check_torchvision(info: DatasetInfo, root: Path, download: bool) -> Optional[str]:
    missing = [f for f in _TORCHVISION_FILES[info.name] if not (root / f).exists()]
    if not missing or download:
        return None
    return _missing_torchvision_message(info.name, root, missing)


def _missing_idx_message(key: str, root: Path) -> str:
    title = _display(key)
    where = f"{root / title / 'raw'} or {root}"
    if key == "fashionmnist":
        where += f" or {SYSTEM_FASHION_MNIST}"
    return (
        f"{title} raw files not found in {where}; rerun with --download to fetch them, put the "
        f"four official IDX files ({', '.join(v + '[.gz]' for v in _IDX_FILES.values())}) in "
        f"{root / title / 'raw'}"
        + (", or install Debian's dataset-fashion-mnist package" if key == "fashionmnist" else "")
    )


def _missing_torchvision_message(key: str, root: Path, missing: Sequence[str]) -> str:
    title = _display(key)
    return (
        f"{title} not found under data root {root} (missing {', '.join(str(root / m) for m in missing)}); "
        f"rerun with --download to fetch it, or place {_HOW_TO[key].format(root=root)}"
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    data_root: str | os.PathLike = "data",
    device: torch.device | str = "cpu",
    download: bool = False,
) -> Dataset:
    """Load dataset ``name`` normalised onto ``device``; raises :class:`DataError`."""
    key = canonical_dataset_name(name)
    root = Path(data_root)
    device = torch.device(device)
    if key.startswith(TENSOR_PREFIX):
        return load_tensor_dataset(key[len(TENSOR_PREFIX):], device=device, name=key)
    entry = DATASETS.get(key)
    problem = entry.check(entry.info, root, download)
    if problem is not None:
        raise DataError(problem)
    return entry.load(entry.info, root, device, download)


def normalised_dataset(
    info: DatasetInfo,
    images_train: Tensor,
    labels_train: Tensor,
    images_test: Tensor,
    labels_test: Tensor,
    *,
    device: torch.device | str = "cpu",
    class_names: Optional[Sequence[str]] = None,
    source: str = "",
) -> Dataset:
    """The :class:`Dataset` a registered loader returns: float NCHW images in [0, 1] are
    normalised with ``info.mean``/``info.std`` (statistics of the training split when the
    registration gives none) and moved to ``device``."""
    xtr = images_train.float()
    mean, std = info.mean, info.std
    if not mean:
        mean = tuple(xtr.mean(dim=(0, 2, 3)).tolist())
        std = tuple(xtr.std(dim=(0, 2, 3)).clamp_min(1e-8).tolist())
    return _build(info.name, xtr, labels_train, images_test, labels_test, mean, std, class_names,
                  torch.device(device), source, num_classes=info.num_classes)


def _build(
    name: str,
    xtr: Tensor,
    ytr: Tensor,
    xte: Tensor,
    yte: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Optional[Sequence[str]],
    device: torch.device,
    source: str,
    num_classes: Optional[int] = None,
    flip_preserves_label: Optional[bool] = None,
) -> Dataset:
    """Normalise float [0,1] NCHW images with mean/std, move to device, wrap in Dataset.

    Raises :class:`DataError` for an empty test split or NaN/Inf pixels (naming the file or
    dataset, the split and the count): such data would train and evaluate to meaningless
    numbers."""
    where = source or name
    if xte.shape[0] == 0:
        raise DataError(f"{where}: the test split is empty; a dataset needs test images to evaluate on")
    for split, images in (("training", xtr), ("test", xte)):
        bad = int((~torch.isfinite(images.float())).sum())
        if bad:
            raise DataError(f"{where}: {bad} non-finite value(s) (NaN/Inf) in the {split} images; fix the data")
    num_classes = int(num_classes if num_classes is not None else int(max(ytr.max(), yte.max())) + 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    xtr = ((xtr.float() - mean_t) / std_t).to(device)
    xte = ((xte.float() - mean_t) / std_t).to(device)
    names = tuple(str(c) for c in class_names) if class_names else tuple(str(i) for i in range(num_classes))
    train = ClassData(
        images=xtr.contiguous(),
        labels=ytr.long().to(device),
        num_classes=num_classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        name=name,
        class_names=names,
        flip_preserves_label=flip_preserves_label,
    )
    return Dataset(
        name=name,
        train=train,
        test_images=xte.contiguous(),
        test_labels=yte.long().to(device),
        num_classes=num_classes,
        channel=int(xtr.shape[1]),
        im_size=(int(xtr.shape[2]), int(xtr.shape[3])),
        mean=train.mean,
        std=train.std,
        class_names=names,
        source=source,
    )


# -- IDX (MNIST / FashionMNIST) ----------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into a numpy array.

    Format: two zero bytes, a type code (0x08 = uint8, the only one MNIST uses), the number of
    dimensions, then one big-endian int32 per dimension, then the data."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path} ({exc}); delete it and get it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an uint8 IDX file (bad header); delete it and get it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header); delete it and get it again")
    dims = struct.unpack(">" + "i" * ndim, raw[4:header])
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt ({len(raw) - header} data bytes, expected {expected}); "
            "delete it and get it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_dataset(key: str, folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    arrays = {}
    for part, stem in _IDX_FILES.items():
        path = _idx_path(folder, stem)
        assert path is not None
        arrays[part] = read_idx(path)
    for split in ("train", "test"):
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.ndim != 3 or labels.ndim != 1 or imgs.shape[0] != labels.shape[0]:
            raise DataError(
                f"IDX files of the {split} split in {folder} do not match "
                f"(images {imgs.shape}, labels {labels.shape})"
            )
    counts = np.bincount(arrays["train_labels"], minlength=10)
    looks_fashion = arrays["train_labels"].shape[0] == 60000 and bool((counts == 6000).all())
    title = _display(key)
    if key == "fashionmnist" and arrays["train_labels"].shape[0] == 60000 and not looks_fashion:
        raise DataError(
            f"the IDX files in {folder} are not FashionMNIST (its 60000 training labels have 6000 "
            "per class); they look like MNIST. Put FashionMNIST's files in "
            f"<data-root>/FashionMNIST/raw"
        )
    if key == "mnist" and looks_fashion:
        raise DataError(
            f"the IDX files in {folder} look like FashionMNIST, not MNIST; put MNIST's files in "
            "<data-root>/MNIST/raw"
        )
    log.debug("%s train class counts: %s", title, counts.tolist())

    def images(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.copy()).unsqueeze(1).float().div_(255.0)

    return (
        images(arrays["train_images"]),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        images(arrays["test_images"]),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
    )


def _torchvision_classes(key: str) -> Optional[list[str]]:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST}.get(key)
    return list(cls.classes) if cls is not None else None


def _torchvision_download(key: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST}[key]
    log.info("downloading %s into %s", _display(key), root)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors, checksum failures, permission problems
        raise DataError(_download_failed(key, root, exc)) from exc


def _download_failed(key: str, root: Path, exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"downloading {_display(key)} into {root} failed ({type(exc).__name__}: {first}); "
        "check the internet connection and that the folder is writable, or download it on "
        "another machine and copy it into the data root"
    )


@register_dataset("mnist", display="MNIST", channel=1, im_size=(28, 28), num_classes=10,
                  min_train_per_class=5421, mean=(0.1307,), std=(0.3081,),
                  flip_preserves_label=False, order=0, check=_check_idx)
@register_dataset("fashionmnist", display="FashionMNIST", channel=1, im_size=(28, 28), num_classes=10,
                  min_train_per_class=6000, mean=(0.2861,), std=(0.3530,), order=1, check=_check_idx)
def _load_idx_dataset(info: DatasetInfo, root: Path, device: torch.device, download: bool) -> Dataset:
    """MNIST / FashionMNIST from the official IDX files (downloaded by torchvision on request)."""
    folder = _idx_folder(info.name, root)
    if folder is None:  # download requested and nothing on disk
        _torchvision_download(info.name, root)
        folder = _idx_folder(info.name, root)
        if folder is None:
            raise DataError(_missing_idx_message(info.name, root))
    log.info("reading %s IDX files from %s", info.display, folder)
    xtr, ytr, xte, yte = _read_idx_dataset(info.name, folder)
    names = _torchvision_classes(info.name)
    return _build(info.name, xtr, ytr, xte, yte, info.mean, info.std, names, device, str(folder))


# -- torchvision (SVHN / CIFAR) ---------------------------------------------------------------


def _load_torchvision(key: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    if download:
        root.mkdir(parents=True, exist_ok=True)
    splits = []
    try:
        for train in (True, False):
            if key == "svhn":
                ds = tvd.SVHN(str(root), split="train" if train else "test", download=download)
                x = torch.from_numpy(np.asarray(ds.data))  # (N, 3, 32, 32) uint8
                y = torch.from_numpy(np.asarray(ds.labels).astype(np.int64))
                names = [str(i) for i in range(10)]
            else:
                cls = tvd.CIFAR10 if key == "cifar10" else tvd.CIFAR100
                ds = cls(str(root), train=train, download=download)
                x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2)  # NHWC -> NCHW
                y = torch.tensor(list(ds.targets), dtype=torch.long)
                names = list(ds.classes)
            splits.append((x.float().div_(255.0), y))
    except DataError:
        raise
    except Exception as exc:  # missing/corrupt files, failed download, missing scipy for SVHN
        if download:
            raise DataError(_download_failed(key, root, exc)) from exc
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{_display(key)} under {root} could not be read ({type(exc).__name__}: {first}); "
            "delete the files and rerun with --download, or place "
            + _HOW_TO[key].format(root=root)
        ) from exc
    (xtr, ytr), (xte, yte) = splits
    return xtr, ytr, xte, yte, names


@register_dataset("svhn", display="SVHN", channel=3, im_size=(32, 32), num_classes=10,
                  min_train_per_class=4948, mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
                  flip_preserves_label=False, order=2, check=_check_torchvision)
@register_dataset("cifar10", display="CIFAR10", channel=3, im_size=(32, 32), num_classes=10,
                  min_train_per_class=5000, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                  order=3, check=_check_torchvision)
@register_dataset("cifar100", display="CIFAR100", channel=3, im_size=(32, 32), num_classes=100,
                  min_train_per_class=500, mean=(0.5071, 0.4866, 0.4409), std=(0.2673, 0.2564, 0.2762),
                  order=4, check=_check_torchvision)
def _load_torchvision_dataset(info: DatasetInfo, root: Path, device: torch.device, download: bool) -> Dataset:
    """SVHN / CIFAR10 / CIFAR100 through torchvision's readers (and downloaders)."""
    xtr, ytr, xte, yte, names = _load_torchvision(info.name, root, download)
    return _build(info.name, xtr, ytr, xte, yte, info.mean, info.std, names, device, str(root))


# -- tensor files (TinyImageNet, user data) ---------------------------------------------------


def _torch_load(path: Path, what: str, mmap: bool = False) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # truncated zip, disallowed pickle globals, not a torch file
        first = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise DataError(
            f"{path} could not be read as a {what} ({type(exc).__name__}: {first}); it must be a "
            "torch.save'd dict of tensors loadable with weights_only=True"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a dict of tensors, found {type(data).__name__}")
    return data


def _as_nchw(images: Any, path: Path, key: str) -> Tensor:
    """uint8 (÷255) or float images, NCHW or NHWC (channels = the dim of size <= 4), or NHW."""
    if not isinstance(images, Tensor):
        try:
            images = torch.as_tensor(np.asarray(images))
        except Exception as exc:
            raise DataError(f"{path}: '{key}' is not an array of images") from exc
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4:
        raise DataError(f"{path}: '{key}' must be (N, C, H, W) or (N, H, W, C), got shape {tuple(images.shape)}")
    if images.shape[1] > 4 and images.shape[3] <= 4:
        images = images.permute(0, 3, 1, 2)
    elif images.shape[1] > 4:
        raise DataError(
            f"{path}: cannot find the channel dimension of '{key}' with shape {tuple(images.shape)} "
            "(expected at most 4 channels, first or last)"
        )
    if images.dtype == torch.uint8:
        return images.float().div_(255.0).contiguous()
    if not images.is_floating_point():
        raise DataError(f"{path}: '{key}' must be uint8 or float, got {images.dtype}")
    return images.float().contiguous()


def _as_labels(labels: Any, n: int, path: Path, key: str) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"{path}: '{key}' must be a vector of {n} labels, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"{path}: '{key}' must hold integer class indices, got {labels.dtype}")
    labels = labels.long()
    if n and int(labels.min()) < 0:
        raise DataError(f"{path}: '{key}' has negative labels")
    return labels


TENSOR_KEYS = ("images_train", "labels_train", "images_test", "labels_test", "class_names", "mean", "std",
               "flip_preserves_label")
"""The keys of a tensor dataset file (the first four required); others are warned about."""


def load_tensor_dataset(path: str | os.PathLike, *, device: torch.device | str = "cpu", name: Optional[str] = None) -> Dataset:
    """Load a user tensor file (format of :func:`save_tensor_dataset`)."""
    path = Path(path)
    data = _torch_load(path, "tensor dataset")
    missing = [k for k in ("images_train", "labels_train", "images_test", "labels_test") if k not in data]
    if missing:
        raise DataError(
            f"{path} lacks the keys {', '.join(missing)}; a tensor dataset needs images_train, "
            "labels_train, images_test, labels_test (optional: class_names, mean, std, flip_preserves_label)"
        )
    for key in sorted(set(data) - set(TENSOR_KEYS)):
        close = difflib.get_close_matches(str(key), TENSOR_KEYS, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(TENSOR_KEYS)}"
        log.warning("%s: unknown key '%s' ignored (%s)", path, key, hint)
    xtr = _as_nchw(data["images_train"], path, "images_train")
    xte = _as_nchw(data["images_test"], path, "images_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{path}: train images {tuple(xtr.shape[1:])} and test images {tuple(xte.shape[1:])} differ in shape")
    ytr = _as_labels(data["labels_train"], xtr.shape[0], path, "labels_train")
    yte = _as_labels(data["labels_test"], xte.shape[0], path, "labels_test")
    if xtr.shape[0] == 0:
        raise DataError(f"{path}: images_train is empty")
    class_names = data.get("class_names")
    top = int(max(ytr.max(), yte.max() if yte.numel() else 0)) + 1
    num_classes = len(class_names) if class_names else top
    if top > num_classes:
        raise DataError(f"{path}: labels go up to {top - 1} but only {num_classes} class_names are given")
    if xtr.shape[0] > 1 and bool((xtr == xtr.reshape(-1)[0]).all()):
        raise DataError(f"{path}: every training image is the same constant value; nothing can be learned "
                        "from it (check how the file was made)")
    channel = xtr.shape[1]
    mean, std = data.get("mean"), data.get("std")
    if mean is None or std is None:
        mean = xtr.mean(dim=(0, 2, 3)).tolist()
        std = xtr.std(dim=(0, 2, 3)).clamp_min(1e-8).tolist()
    mean = [float(m) for m in torch.as_tensor(mean, dtype=torch.float64).flatten().tolist()]
    std = [float(s) for s in torch.as_tensor(std, dtype=torch.float64).flatten().tolist()]
    if len(mean) != channel or len(std) != channel or min(std) <= 0:
        raise DataError(f"{path}: mean/std must have {channel} entries with std > 0")
    flip = data.get("flip_preserves_label")
    if flip is not None and not isinstance(flip, bool):
        raise DataError(f"{path}: flip_preserves_label must be true or false (whether a mirrored image keeps "
                        f"its class; false for digits), got {flip!r}")
    return _build(
        name or TENSOR_PREFIX + str(path), xtr, ytr, xte, yte, mean, std, class_names, torch.device(device),
        str(path), num_classes=num_classes, flip_preserves_label=flip,
    )


def save_tensor_dataset(
    path: str | os.PathLike,
    images_train: Tensor,
    labels_train: Tensor,
    images_test: Tensor,
    labels_test: Tensor,
    *,
    class_names: Optional[Sequence[str]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    flip_preserves_label: Optional[bool] = None,
) -> Path:
    """Write a generic tensor dataset that ``load_dataset('tensor:<path>')`` reads.

    Images: uint8 (0..255) or float in [0, 1] (any range works: statistics come from the
    training split unless ``mean``/``std`` are given), NCHW or NHWC, any channel count (<= 4),
    size and number of classes. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob: dict[str, Any] = {
        "images_train": images_train.detach().cpu(),
        "labels_train": labels_train.detach().cpu().long(),
        "images_test": images_test.detach().cpu(),
        "labels_test": labels_test.detach().cpu().long(),
    }
    if class_names is not None:
        blob["class_names"] = [str(c) for c in class_names]
    if mean is not None:
        blob["mean"] = [float(m) for m in mean]
    if std is not None:
        blob["std"] = [float(s) for s in std]
    if flip_preserves_label is not None:
        blob["flip_preserves_label"] = bool(flip_preserves_label)
    atomic_torch_save(blob, path)
    return path


@register_dataset("tinyimagenet", display="TinyImageNet", channel=3, im_size=(64, 64), num_classes=200,
                  min_train_per_class=500, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                  order=5, check=_check_tinyimagenet)
def _load_tinyimagenet(info: DatasetInfo, root: Path, device: torch.device, download: bool) -> Dataset:
    """The reference's TinyImageNet tensor file ``<data-root>/tinyimagenet.pt``."""
    path = root / "tinyimagenet.pt"
    data = _torch_load(path, "TinyImageNet tensor")
    missing = [k for k in ("images_train", "labels_train", "images_val", "labels_val") if k not in data]
    if missing:
        raise DataError(f"{path} lacks the keys {', '.join(missing)} of the reference TinyImageNet file")
    xtr = _as_nchw(data["images_train"], path, "images_train")
    xte = _as_nchw(data["images_val"], path, "images_val")
    ytr = _as_labels(data["labels_train"], xtr.shape[0], path, "labels_train")
    yte = _as_labels(data["labels_val"], xte.shape[0], path, "labels_val")
    names = data.get("classes")
    return _build(info.name, xtr, ytr, xte, yte, info.mean, info.std, names, device, str(path),
                  num_classes=info.num_classes)


# -- bundled digits ---------------------------------------------------------------------------


def load_digits_dataset(*, device: torch.device | str = "cpu") -> Dataset:
    """scikit-learn's bundled handwritten digits (1797 images, 10 classes); no download.

    Choices (documented here, recorded in the returned Dataset):

    * 8x8 pixel values 0..16 are scaled to [0, 1] and upsampled **bilinearly to 1x16x16**
      (``align_corners=False``). 16 px keeps every architecture of the zoo valid (ConvNet's
      three 2x2 pools end at 2x2; LeNet/AlexNet/VGG/ResNet have room) while staying fast on a CPU.
    * A **stratified 70/30 train/test split** with ``train_test_split(random_state=0)``: 1257
      training images (smallest class: 122), 540 test images.
    * mean/std are computed from the training split (there is no reference value).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    xtr, xte = images[idx_train], images[idx_test]
    ytr, yte = torch.from_numpy(labels[idx_train]), torch.from_numpy(labels[idx_test])
    mean = [float(xtr.mean())]
    std = [float(xtr.std())]
    return _build("digits", xtr, ytr, xte, yte, mean, std, [str(i) for i in range(10)],
                  torch.device(device), "sklearn.datasets.load_digits", num_classes=10)


# digits: 1257 training images after the stratified 70/30 split; the smallest class (8) has 122
# (checked by tests/test_data.py). mean/std are computed from the training split at load time.
@register_dataset("digits", display="Digits", channel=1, im_size=(DIGITS_SIZE, DIGITS_SIZE), num_classes=10,
                  min_train_per_class=122, flip_preserves_label=False, order=6)
def _load_digits(info: DatasetInfo, root: Path, device: torch.device, download: bool) -> Dataset:
    """scikit-learn's bundled digits (no files, no download); see :func:`load_digits_dataset`."""
    return load_digits_dataset(device=device)
