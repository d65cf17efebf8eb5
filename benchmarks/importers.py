"""``condbench import``: synthetic sets released by other code, as this suite's
:class:`~methods.synset.SyntheticSet`, so that a paper's released set is evaluated, tabulated
and scored like one condensed here.

Formats (``--format``, default: guessed from the path):

* ``dc``: the official DC / DSA / DM / CAFE scripts' ``res_*.pt``:
  ``torch.save({'data': data_save, 'accs_all_exps': ...})`` with ``data_save`` a list of
  ``[images, labels]`` per experiment (``--exp`` picks one, default 0), images in the
  normalised space of the script's ``get_dataset`` (``(x - mean) / std`` with the dataset's
  per-channel statistics).
* ``mtt``: MTT's / DATM's folder (or any of its files) with ``images_best.pt``,
  ``labels_best.pt`` (class ids, or DATM's (N, classes) soft-label logits) and optionally
  ``lr_best.pt`` (the learned learning rate), normalised and ZCA-whitened when distilled with
  ``--zca`` (pass ``--zca``: the whitening is refitted on this suite's training images, as
  MTT fits it on the training set; the set then evaluates with ``zca: true``).
* ``folder``: a folder of class sub-folders (``<class index or name>/*.png``) of images in
  pixel values.
* ``tensors``: one ``.pt`` with ``{'images': ..., 'labels': ...}`` or an ``images.pt`` /
  ``labels.pt`` pair (``--labels``), in pixel values (``--space pixels``, [0, 1] or uint8
  0..255) or normalised (``--space normalized``).

Normalisation is checked and converted: images come in the source's space (``--space``;
normalised by default for ``dc`` / ``mtt``, pixels for ``folder``) with the source's
statistics (``--source-mean`` / ``--source-std``, default the dataset's), are converted to this
suite's normalisation of the dataset, and rejected with a one-line reason when they cannot be
what the source says (pixel-valued images claimed as normalised, or the reverse). Shapes,
class count and label range are checked against the dataset. The imported set records its
source (format, path, experiment, conversions) in ``extra['import']`` and is evaluated with the
published protocol (:class:`~methods.protocol.EvalPlan` defaults; the learned lr, soft labels
and ZCA switched on when the file carries them).

The command line is :func:`add_import_parser` / :func:`cmd_import`.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from benchmarks import UserError

FORMATS = ("auto", "dc", "mtt", "folder", "tensors")
SPACES = ("auto", "normalized", "pixels")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


class SetImportError(UserError):
    """A file that cannot be imported as a synthetic set; the message says why and what to do."""


@dataclass(frozen=True)
class ImportOptions:
    """How to read a foreign set: ``fmt`` (:data:`FORMATS`), ``space`` of its images
    (:data:`SPACES`), ``source_mean`` / ``source_std`` of its normalisation (None = the
    dataset's), ``exp`` (``res_*.pt`` experiment), ``labels_path`` (``tensors`` pair), ``zca``
    (MTT sets distilled in ZCA space), ``ipc`` (None = from the labels)."""

    fmt: str = "auto"
    space: str = "auto"
    source_mean: Optional[tuple[float, ...]] = None
    source_std: Optional[tuple[float, ...]] = None
    exp: int = 0
    labels_path: Optional[str] = None
    zca: bool = False
    method: Optional[str] = None


@dataclass
class _Raw:
    images: Tensor
    labels: Tensor  # class ids (N,)
    soft_labels: Optional[Tensor] = None
    learned_lr: Optional[float] = None
    space: str = "normalized"
    detail: dict[str, Any] = field(default_factory=dict)


def guess_format(path: Path) -> str:
    """The format of ``path`` by its name and layout (:data:`FORMATS`)."""
    if path.is_dir():
        if (path / "images_best.pt").is_file():
            return "mtt"
        return "folder"
    name = path.name.lower()
    if name in ("images_best.pt", "labels_best.pt", "lr_best.pt"):
        return "mtt"
    if name.startswith("res_") and name.endswith(".pt"):
        return "dc"
    return "tensors"


def _load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise SetImportError(f"{path} does not exist ({what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise SetImportError(f"{path} could not be read as a tensor file ({type(exc).__name__}: {first}); "
                             f"{what}") from None


def _tensor(value: Any, path: Path, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise SetImportError(f"{path}: {what} is a {type(value).__name__}, expected a tensor")
    return value.detach().cpu()


def _read_dc(path: Path, exp: int) -> _Raw:
    data = _load(path, "expected the official DC/DSA/DM/CAFE script's res_*.pt")
    if not isinstance(data, dict) or "data" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise SetImportError(f"{path} has no 'data' key (found {keys}); a res_*.pt of the DC/DSA/DM/CAFE scripts "
                             "holds {'data': [[images, labels], ...], ...}; pass --format for other layouts")
    runs = data["data"]
    if not isinstance(runs, (list, tuple)) or not runs:
        raise SetImportError(f"{path}: 'data' must be a non-empty list of [images, labels] (one per experiment)")
    if not 0 <= exp < len(runs):
        raise SetImportError(f"{path} holds {len(runs)} experiment(s); --exp {exp} is out of range (0..{len(runs) - 1})")
    entry = runs[exp]
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise SetImportError(f"{path}: data[{exp}] must be [images, labels], got {type(entry).__name__} "
                             f"of length {len(entry) if hasattr(entry, '__len__') else '?'}")
    images, labels = _tensor(entry[0], path, f"data[{exp}][0] (images)"), _tensor(entry[1], path, f"data[{exp}][1] (labels)")
    return _Raw(images, labels, detail={"experiment": exp, "experiments": len(runs)})


def _read_mtt(path: Path) -> _Raw:
    folder = path if path.is_dir() else path.parent
    images = _tensor(_load(folder / "images_best.pt", "MTT/DATM save images_best.pt next to labels_best.pt"),
                     folder / "images_best.pt", "images_best.pt")
    labels = _tensor(_load(folder / "labels_best.pt", "MTT/DATM save labels_best.pt next to images_best.pt"),
                     folder / "labels_best.pt", "labels_best.pt")
    lr = None
    if (folder / "lr_best.pt").is_file():
        value = _load(folder / "lr_best.pt", "lr_best.pt holds the learned learning rate")
        lr_t = _tensor(value, folder / "lr_best.pt", "lr_best.pt")
        if lr_t.numel() != 1 or not math.isfinite(float(lr_t.reshape(-1)[0])) or float(lr_t.reshape(-1)[0]) <= 0:
            raise SetImportError(f"{folder / 'lr_best.pt'} must hold one positive learning rate, got shape "
                                 f"{tuple(lr_t.shape)}")
        lr = float(lr_t.reshape(-1)[0])
    soft = None
    if labels.ndim == 2:  # DATM's learned soft labels (logits)
        soft = labels.float()
        labels = soft.argmax(1)
    return _Raw(images, labels, soft_labels=soft, learned_lr=lr, detail={"folder": str(folder)})


def _read_folder(path: Path) -> _Raw:
    from PIL import Image
    import numpy as np

    classes = sorted(p for p in path.iterdir() if p.is_dir())
    if not classes:
        raise SetImportError(f"{path} has no class sub-folders; lay the images out as {path}/<class>/<image>.png")
    names = [c.name for c in classes]
    if all(n.isdigit() for n in names):
        index = {n: int(n) for n in names}
    else:
        index = {n: i for i, n in enumerate(names)}
    images, labels = [], []
    for c in classes:
        for f in sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            with Image.open(f) as im:
                arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "I", "I;16") else "RGB"), dtype=np.float32)
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            images.append(torch.from_numpy(arr / 255.0))
            labels.append(index[c.name])
    if not images:
        raise SetImportError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise SetImportError(f"{path}: images have different shapes {sorted(shapes)}; resize them to one size")
    return _Raw(torch.stack(images), torch.tensor(labels), space="pixels",
                detail={"classes": {n: index[n] for n in names}})


def _read_tensors(path: Path, labels_path: Optional[str]) -> _Raw:
    data = _load(path, "expected {'images': ..., 'labels': ...} or an images tensor with --labels")
    if isinstance(data, dict):
        missing = [k for k in ("images", "labels") if k not in data]
        if missing:
            raise SetImportError(f"{path} lacks key(s) {', '.join(missing)} (found {sorted(map(str, data))}); "
                                 "save {'images': (N, C, H, W), 'labels': (N,)}")
        images, labels = _tensor(data["images"], path, "'images'"), _tensor(data["labels"], path, "'labels'")
    else:
        images = _tensor(data, path, "the file")
        if labels_path is None:
            raise SetImportError(f"{path} holds a bare tensor; pass its labels with --labels FILE")
        labels = _tensor(_load(Path(labels_path), "the labels tensor"), Path(labels_path), "the labels")
    soft = None
    if labels.ndim == 2:
        soft = labels.float()
        labels = soft.argmax(1)
    space = "pixels" if images.dtype == torch.uint8 else "auto"
    return _Raw(images, labels, soft_labels=soft, space=space)


# --------------------------------------------------------------------------------------------
# checks and conversion
# --------------------------------------------------------------------------------------------


def _check_shape(raw: _Raw, info: Any, source: str) -> None:
    x, y = raw.images, raw.labels
    want = (info.channel, *info.im_size)
    if x.ndim == 3 and info.channel == 1:
        raw.images = x = x.unsqueeze(1)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(want):
        raise SetImportError(f"{source}: images are {tuple(x.shape)}, expected (N, {', '.join(map(str, want))}) "
                             f"for dataset '{info.name}'; import for the dataset the set was made from (--dataset)")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise SetImportError(f"{source}: labels are {tuple(y.shape)}, expected ({x.shape[0]},) class ids (one per image)")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise SetImportError(f"{source}: labels are fractional; give class ids (or (N, classes) soft labels)")
        raw.labels = y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise SetImportError(f"{source}: labels range over {int(y.min())}..{int(y.max())}, but dataset '{info.name}' "
                             f"has classes 0..{info.num_classes - 1}")
    if raw.soft_labels is not None and raw.soft_labels.shape[1] != info.num_classes:
        raise SetImportError(f"{source}: soft labels have {raw.soft_labels.shape[1]} classes, dataset '{info.name}' has "
                             f"{info.num_classes}; import for the dataset the set was made from")
    if not torch.isfinite(x.float()).all():
        raise SetImportError(f"{source}: images contain NaN or infinite values")


def _normalise(raw: _Raw, mean: Sequence[float], std: Sequence[float], opts: ImportOptions, source: str) -> dict[str, Any]:
    """Convert ``raw.images`` to this suite's normalisation in place; returns what was done."""
    space = opts.space if opts.space != "auto" else raw.space
    x = raw.images
    if x.dtype == torch.uint8:
        if space == "normalized":
            raise SetImportError(f"{source}: images are uint8 pixel values, not normalised; pass --space pixels")
        x, space = x.float() / 255.0, "pixels"
    x = x.float()
    lo, hi = float(x.min()), float(x.max())
    looks_pixels = lo >= 0.0 and hi <= 1.0
    if space == "auto":
        space = "pixels" if looks_pixels else "normalized"
    src_mean = tuple(opts.source_mean) if opts.source_mean is not None else tuple(mean)
    src_std = tuple(opts.source_std) if opts.source_std is not None else tuple(std)
    c = x.shape[1]
    for name, stats in (("--source-mean", src_mean), ("--source-std", src_std)):
        if len(stats) != c:
            raise SetImportError(f"{source}: {name} has {len(stats)} value(s), the images have {c} channel(s)")
    m = torch.tensor(src_mean).view(1, c, 1, 1)
    s = torch.tensor(src_std).view(1, c, 1, 1)
    if space == "pixels":
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise SetImportError(f"{source}: images range over [{lo:.3g}, {hi:.3g}], not pixel values in [0, 1]; "
                                 "if they are normalised, pass --space normalized")
        pixels = x
    else:
        pixels = x * s + m
        if looks_pixels and not opts.zca:  # normalised images have negative values (their dark pixels)
            raise SetImportError(
                f"{source}: images range over [{lo:.3g}, {hi:.3g}] (no negative value), which looks like pixel values, "
                "not a normalised set; pass --space pixels (or --space normalized if they really are)")
        if not opts.zca:
            plo, phi = float(pixels.min()), float(pixels.max())
            margin = 1.0  # learned sets leave [0, 1] somewhat; far outside means other statistics
            if plo < -margin or phi > 1.0 + margin:
                raise SetImportError(
                    f"{source}: images de-normalised with mean {list(src_mean)} / std {list(src_std)} range over "
                    f"[{plo:.3g}, {phi:.3g}], far outside pixel values [0, 1]; give the source's statistics with "
                    "--source-mean / --source-std")
    converted = space == "pixels" or src_mean != tuple(mean) or src_std != tuple(std)
    if converted:
        target_m = torch.tensor(tuple(mean)).view(1, c, 1, 1)
        target_s = torch.tensor(tuple(std)).view(1, c, 1, 1)
        raw.images = ((pixels - target_m) / target_s).float()
    else:
        raw.images = x  # already in this suite's space: bit for bit
    return {"space": space, "source_mean": list(src_mean), "source_std": list(src_std), "converted": converted}


def import_set(path: str | os.PathLike, dataset: Any, options: ImportOptions = ImportOptions()) -> "SyntheticSet":
    """The set at ``path`` (module doc) for ``dataset`` (a loaded
    :class:`benchmarks.data.Dataset`: its geometry, classes, statistics and, for ``zca``, its
    training images), as a :class:`~methods.synset.SyntheticSet`. Raises :class:`SetImportError`."""
    from methods.protocol import EvalPlan
    from methods.synset import SyntheticSet
    from methods.zca import ZCA

    path = Path(path)
    if not path.exists():
        raise SetImportError(f"{path} does not exist")
    fmt = options.fmt if options.fmt != "auto" else guess_format(path)
    if fmt not in FORMATS:
        raise SetImportError(f"unknown import format '{fmt}'; valid: {', '.join(FORMATS)}")
    if options.space not in SPACES:
        raise SetImportError(f"unknown --space '{options.space}'; valid: {', '.join(SPACES)}")
    if fmt == "dc":
        raw = _read_dc(path, options.exp)
    elif fmt == "mtt":
        raw = _read_mtt(path)
    elif fmt == "folder":
        if not path.is_dir():
            raise SetImportError(f"{path} is not a folder (format 'folder' reads <folder>/<class>/<image>.png)")
        raw = _read_folder(path)
    else:
        raw = _read_tensors(path, options.labels_path)
    info = dataset
    _check_shape(raw, info, str(path))
    zca = None
    if options.zca:
        if fmt == "folder":
            raise SetImportError(f"{path}: --zca applies to sets stored in ZCA space (mtt, tensors), not image folders")
        zca = ZCA.fit(dataset.train.images.detach().cpu())
        raw.images = zca.unwhiten(raw.images.float())  # to normalised space for the checks, then back
    done = _normalise(raw, dataset.mean, dataset.std, replace(options, zca=False) if zca is None else options,
                      str(path))
    images = raw.images if zca is None else zca.whiten(raw.images)
    counts = torch.bincount(raw.labels, minlength=dataset.num_classes)
    ipc = int(counts.max()) if counts.numel() else 0
    plan = EvalPlan(lr_source="learned" if raw.learned_lr is not None else "fixed",
                    labels="soft" if raw.soft_labels is not None else "hard",
                    loss="soft_ce" if raw.soft_labels is not None else "ce", zca=zca is not None)
    record = {"format": fmt, "path": str(path.resolve()), **raw.detail, **done,
              "zca_refitted": zca is not None, "per_class": counts.tolist()}
    return SyntheticSet(
        images=images, labels=raw.labels.long(), method=options.method or f"imported-{fmt}", config={}, seed=0,
        ipc=ipc, num_classes=dataset.num_classes, dataset=dataset.name, mean=tuple(dataset.mean),
        std=tuple(dataset.std), class_names=tuple(dataset.class_names), eval_plan=plan,
        extra={"import": record}, soft_labels=raw.soft_labels, learned_lr=raw.learned_lr, zca=zca,
    )


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``import`` to ``condbench``'s sub-commands."""
    p = subparsers.add_parser(
        "import", help="turn a synthetic set released by other code into this suite's format",
        description="Import a DC/DSA/DM/CAFE res_*.pt, an MTT/DATM folder (images_best.pt, labels_best.pt, "
                    "lr_best.pt), an image folder or a tensor pair; the normalisation is checked and converted "
                    "and the source recorded. Then evaluate it with `condbench evaluate OUT`.")
    p.add_argument("source", help="res_*.pt, MTT/DATM folder or file, image folder, or .pt tensors")
    p.add_argument("--dataset", required=True, help="the dataset the set was made from (its geometry and statistics)")
    p.add_argument("--out", required=True, help="output synthetic set .pt")
    p.add_argument("--format", choices=FORMATS, default="auto", help="source layout (default: guessed from the path)")
    p.add_argument("--space", choices=SPACES, default="auto",
                   help="images are normalised or pixel values in [0, 1] (default: dc/mtt normalised, folder pixels, "
                        "tensors by their range)")
    p.add_argument("--source-mean", type=_floats, help="per-channel mean the source normalised with (default: the dataset's)")
    p.add_argument("--source-std", type=_floats, help="per-channel std the source normalised with (default: the dataset's)")
    p.add_argument("--exp", type=int, default=0, help="res_*.pt: which experiment's set (default 0)")
    p.add_argument("--labels", dest="labels_path", help="tensors: labels file for a bare images tensor")
    p.add_argument("--zca", action="store_true", help="mtt/tensors: the set was distilled in ZCA-whitened space")
    p.add_argument("--method", help="name recorded as the set's method (default imported-<format>)")
    p.add_argument("--data-root", default=os.environ.get("CONDBENCH_DATA", "data"), help="folder with the datasets")
    p.set_defaults(func=cmd_import)
    return p


def cmd_import(args: argparse.Namespace) -> int:
    """``condbench import``: read, check, convert, save; prints one line per fact."""
    from benchmarks.data import load_dataset

    if args.format == "dc" or (args.format == "auto" and guess_format(Path(args.source)) in ("dc", "mtt")):
        space = args.space if args.space != "auto" else "normalized"
    else:
        space = args.space
    dataset = load_dataset(args.dataset, data_root=args.data_root)
    opts = ImportOptions(fmt=args.format, space=space, source_mean=args.source_mean, source_std=args.source_std,
                         exp=args.exp, labels_path=args.labels_path, zca=args.zca, method=args.method)
    synset = import_set(args.source, dataset, opts)
    out = synset.save(args.out)
    src = synset.extra["import"]
    print(f"imported {len(synset)} images ({synset.num_classes} classes, IPC {synset.ipc}) from {src['format']} "
          f"{src['path']} -> {out}")
    print(f"  images: {src['space']} -> {dataset.name}'s normalisation"
          + (" (converted)" if src["converted"] else " (unchanged)")
          + ("; ZCA whitening refitted on the training set" if src["zca_refitted"] else ""))
    extras = [k for k, v in (("soft labels", synset.soft_labels is not None),
                             ("learned lr", synset.learned_lr is not None)) if v]
    if extras:
        print("  carries " + ", ".join(extras) + " (the evaluation plan uses them)")
    print(f"  evaluate: condbench evaluate {out}")
    return 0
