"""`condbench import`: sets written in other code's layouts, built here by hand, import to sets
that evaluate exactly like the original tensors; bad input gets one-line reasons."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.data import Dataset
from benchmarks.evaluate import evaluate_synset
from benchmarks.importers import ImportOptions, SetImportError, add_import_parser, guess_format, import_set
from methods.protocol import EvalPlan
from methods.realdata import ClassData
from methods.synset import SyntheticSet
from tests.conftest import make_classdata


def _dataset(num_classes=4, per_class=30, size=8) -> Dataset:
    full = make_classdata(num_classes, per_class, 1, size, 0, "blobs")
    tr = torch.cat([idx[: idx.numel() // 3] for idx in full.indices_by_class])
    te = torch.cat([idx[idx.numel() // 3:] for idx in full.indices_by_class])
    train = ClassData(full.images[tr], full.labels[tr], num_classes, full.mean, full.std, name="blobs")
    return Dataset("blobs", train, full.images[te], full.labels[te], num_classes, 1, (size, size), full.mean,
                   full.std, tuple(str(i) for i in range(num_classes)))


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return _dataset()


def _images(ds: Dataset, ipc: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.cat([i[:ipc] for i in ds.train.indices_by_class])
    return ds.train.images[idx].clone(), ds.train.labels[idx].clone()


def _direct(ds, images, labels, **kw) -> SyntheticSet:
    return SyntheticSet(images=images, labels=labels, method="original", config={}, seed=0, ipc=2,
                        num_classes=ds.num_classes, dataset=ds.name, **kw)


def _acc(synset, ds):
    return evaluate_synset(synset, ds, "MLP", num_eval=2, epochs=5).accuracies


def test_dc_res_file_imports_to_the_same_accuracy(ds, tmp_path):
    images, labels = _images(ds)
    other = images.flip(0)  # a second experiment: --exp picks it
    path = tmp_path / "res_DC_blobs_ConvNet_2ipc.pt"
    torch.save({"data": [[images, labels], [other, labels.flip(0)]], "accs_all_exps": {"ConvNet": [0.5]}}, path)
    assert guess_format(path) == "dc"
    imported = import_set(path, ds, ImportOptions(space="normalized"))
    assert torch.equal(imported.images, images) and torch.equal(imported.labels, labels)
    assert imported.extra["import"]["format"] == "dc" and imported.extra["import"]["experiment"] == 0
    assert imported.extra["import"]["converted"] is False
    assert _acc(imported, ds) == _acc(_direct(ds, images, labels), ds)
    second = import_set(path, ds, ImportOptions(space="normalized", exp=1))
    assert torch.equal(second.images, other)
    reloaded = SyntheticSet.load(imported.save(tmp_path / "imported.pt"))
    assert reloaded.extra["import"]["path"] == str(path.resolve())


def test_mtt_folder_imports_images_labels_and_learned_lr(ds, tmp_path):
    images, labels = _images(ds)
    folder = tmp_path / "mtt_run"
    folder.mkdir()
    torch.save(images, folder / "images_best.pt")
    torch.save(labels, folder / "labels_best.pt")
    torch.save(torch.tensor(0.03), folder / "lr_best.pt")
    imported = import_set(folder, ds, ImportOptions(space="normalized"))
    assert imported.learned_lr == pytest.approx(0.03)
    assert imported.eval_plan.lr_source == "learned"
    direct = _direct(ds, images, labels, learned_lr=0.03, eval_plan=EvalPlan(lr_source="learned"))
    assert _acc(imported, ds) == _acc(direct, ds)


def test_datm_soft_labels_and_pixel_tensors_are_converted(ds, tmp_path):
    images, labels = _images(ds)
    folder = tmp_path / "datm"
    folder.mkdir()
    soft = torch.nn.functional.one_hot(labels, ds.num_classes).float() * 3.0
    torch.save(images, folder / "images_best.pt")
    torch.save(soft, folder / "labels_best.pt")
    imported = import_set(folder / "images_best.pt", ds, ImportOptions(space="normalized"))
    assert imported.eval_plan.labels == "soft" and torch.equal(imported.labels, labels)
    # pixel values in [0, 1] converted to the dataset's normalisation
    mean, std = ds.mean[0], ds.std[0]
    pixels = (images * std + mean).clamp(0, 1)
    path = tmp_path / "pair.pt"
    torch.save({"images": pixels, "labels": labels}, path)
    converted = import_set(path, ds, ImportOptions(space="pixels"))
    assert converted.extra["import"]["converted"] is True
    assert torch.allclose(converted.images, (pixels - mean) / std, atol=1e-6)


@pytest.mark.parametrize(
    "payload, opts, message",
    [
        ({"images": None}, ImportOptions(fmt="dc"), "has no 'data' key"),
        ("bad_shape", ImportOptions(fmt="dc", space="normalized"), "images are (8, 1, 4, 4), expected (N, 1, 8, 8)"),
        ("bad_labels", ImportOptions(fmt="dc", space="normalized"), "labels range over 1..7, but dataset 'blobs' has classes 0..3"),
        ("pixels_as_normalised", ImportOptions(fmt="dc", space="normalized"), "looks like pixel values"),
        ("normalised_as_pixels", ImportOptions(fmt="tensors", space="pixels"), "not pixel values in [0, 1]"),
        ("soft_classes", ImportOptions(fmt="tensors", space="normalized"), "soft labels have 7 classes"),
        ("exp", ImportOptions(fmt="dc", space="normalized", exp=3), "--exp 3 is out of range"),
    ],
)
def test_bad_input_is_named_in_one_line(ds, tmp_path, payload, opts, message):
    images, labels = _images(ds)
    path = tmp_path / "res_bad.pt"
    if payload == "bad_shape":
        payload = {"data": [[torch.zeros(8, 1, 4, 4), labels]]}
    elif payload == "bad_labels":
        payload = {"data": [[images, labels * 2 + 1]]}
    elif payload == "pixels_as_normalised":
        payload = {"data": [[(images * 0.1 + 0.5).clamp(0, 1), labels]]}
    elif payload == "normalised_as_pixels":
        payload = {"images": images, "labels": labels}
    elif payload == "soft_classes":
        payload = {"images": images, "labels": torch.zeros(labels.numel(), 7)}
    elif payload == "exp":
        payload = {"data": [[images, labels]]}
    torch.save(payload, path)
    with pytest.raises(SetImportError) as err:
        import_set(path, ds, opts)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_import_parser_has_the_documented_options():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_import_parser(sub)
    args = parser.parse_args(["import", "res.pt", "--dataset", "mnist", "--out", "o.pt", "--source-mean", "0.1",
                              "--exp", "2", "--zca"])
    assert args.source_mean == (0.1,) and args.exp == 2 and args.zca and args.func.__name__ == "cmd_import"
