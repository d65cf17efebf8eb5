"""Datasets: local IDX folders, the bundled digits, tensor files, and clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import data as bdata
from benchmarks.data import (
    DATASETS,
    DataError,
    SYSTEM_FASHION_MNIST,
    check_available,
    dataset_info,
    dataset_names,
    load_dataset,
    normalised_dataset,
    read_idx,
    register_dataset,
    save_tensor_dataset,
)
from methods.augment import default_dsa_strategy


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "i" * array.ndim, *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)


def _make_idx_folder(folder: Path, n_train=30, n_test=10, compress=False, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, arr in arrays.items():
        _write_idx(folder / name, arr, compress)
    return arrays


# -- names and metadata ----------------------------------------------------------------------


def test_names_are_case_insensitive_and_unknown_names_list_valid_ones():
    assert {"mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "tinyimagenet", "digits"} <= set(dataset_names())
    assert bdata.canonical_dataset_name("CIFAR10") == "cifar10"
    assert bdata.canonical_dataset_name("Fashion-MNIST") == "fashionmnist"
    with pytest.raises(DataError, match="unknown dataset 'imagenet-1k'.*cifar10.*digits.*tensor:"):
        load_dataset("imagenet-1k")
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_info("nope")


def test_dataset_info_static_metadata():
    assert dataset_info("MNIST").min_train_per_class == 5421
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("tinyimagenet").im_size == (64, 64)
    fm = dataset_info("fashionmnist")
    assert (fm.channel, fm.im_size, fm.num_classes, fm.min_train_per_class) == (1, (28, 28), 10, 6000)


def test_every_builtin_dataset_has_its_display_name_and_statistics():
    expected = {
        "mnist": "MNIST", "fashionmnist": "FashionMNIST", "svhn": "SVHN", "cifar10": "CIFAR10",
        "cifar100": "CIFAR100", "tinyimagenet": "TinyImageNet", "digits": "Digits",
    }
    assert {n: dataset_info(n.upper()).display for n in expected} == expected
    assert {n: bdata.dataset_display(n) for n in expected} == expected
    assert bdata.dataset_display("tensor:/nowhere/my_set.pt") == "my_set"
    assert dataset_names()[:7] == ["mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "tinyimagenet", "digits"]
    assert dataset_info("cifar100").mean == (0.5071, 0.4866, 0.4409)  # DC's, not CIFAR10's
    assert dataset_info("svhn").to_dict()["im_size"] == [32, 32]


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "svhn", "cifar10", "cifar100", "tinyimagenet", "digits"])
def test_flip_flag_agrees_with_the_dsa_default_strategy(name):
    assert dataset_info(name).flip_preserves_label == ("flip" in default_dsa_strategy(name))


# -- the registry ----------------------------------------------------------------------------


def _tiny_checker(info, root, download):
    return None if (root / "tiny.ok").is_file() else f"{info.display} needs {root / 'tiny.ok'}"


@register_dataset("testonlytiny", display="TestOnlyTiny", channel=2, im_size=(4, 4), num_classes=3,
                  min_train_per_class=2, mean=(0.5, 0.25), std=(0.5, 0.125), check=_tiny_checker)
def _load_tiny(info, root, device, download):
    xtr = torch.full((6, 2, 4, 4), 0.75)
    ytr = torch.tensor([0, 0, 1, 1, 2, 2])
    return normalised_dataset(info, xtr, ytr, xtr[:3], ytr[:3], device=device, source=str(root))


def test_a_registered_dataset_loads_by_any_spelling_through_its_checker(tmp_path):
    assert "testonlytiny" in dataset_names()
    assert dataset_info("TestOnly_Tiny").display == "TestOnlyTiny"
    with pytest.raises(DataError, match="TestOnlyTiny needs"):
        load_dataset("testonlytiny", data_root=tmp_path)
    (tmp_path / "tiny.ok").write_text("")
    ds = load_dataset("TESTONLYTINY", data_root=tmp_path)
    assert ds.name == "testonlytiny" and ds.num_classes == 3 and ds.source == str(tmp_path)
    assert torch.allclose(ds.train.images[:, 0], torch.full((6, 4, 4), 0.5))  # (0.75-0.5)/0.5
    assert torch.allclose(ds.train.images[:, 1], torch.full((6, 4, 4), 4.0))  # (0.75-0.25)/0.125


def test_registering_a_taken_or_bad_dataset_name_is_rejected():
    def loader(info, root, device, download):
        raise AssertionError("never called")

    kw = dict(display="X", channel=1, im_size=(8, 8), num_classes=2, min_train_per_class=1)
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("CIFAR10", **kw)(loader)
    with pytest.raises(ValueError, match="letters and digits"):
        register_dataset("my-data", **kw)(loader)
    with pytest.raises(ValueError, match="mean and std"):
        register_dataset("badstats", mean=(0.5, 0.5), std=(0.5, 0.5), **kw)(loader)
    assert "badstats" not in DATASETS and dataset_info("cifar10").display == "CIFAR10"


def test_unknown_dataset_message_is_one_line_listing_every_name():
    with pytest.raises(DataError) as err:
        dataset_info("ImageNet")
    text = str(err.value)
    assert "\n" not in text and text.startswith("unknown dataset 'ImageNet'; valid datasets: ")
    assert all(n in text for n in dataset_names())


# -- missing data ----------------------------------------------------------------------------


def test_missing_cifar_names_path_and_fix(tmp_path):
    msg = check_available("cifar10", tmp_path)
    assert msg is not None and str(tmp_path) in msg and "--download" in msg
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_root=tmp_path)
    text = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in text and "--download" in text
    assert check_available("cifar10", tmp_path, download=True) is None


def test_missing_mnist_names_layout(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_root=tmp_path)
    text = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in text and "train-images-idx3-ubyte" in text and "--download" in text


def test_missing_tinyimagenet_and_tensor_file(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "tinyimagenet.pt")):
        load_dataset("tinyimagenet", data_root=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"tensor:{tmp_path / 'none.pt'}")


def test_corrupt_tensor_file_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=r"bad\.pt could not be read"):
        load_dataset(f"tensor:{bad}")


# -- IDX files -------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_in_torchvision_layout(tmp_path, compress):
    arrays = _make_idx_folder(tmp_path / "MNIST" / "raw", compress=compress)
    ds = load_dataset("mnist", data_root=tmp_path)
    assert ds.source == str(tmp_path / "MNIST" / "raw")
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.test_images.shape == (10, 1, 28, 28)
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255
    back = ds.train.images[:, 0] * 0.3081 + 0.1307
    assert torch.allclose(back, raw, atol=1e-6)
    assert ds.train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.class_names[0].startswith("0")


def test_idx_files_directly_in_root(tmp_path):
    _make_idx_folder(tmp_path, compress=True)
    ds = load_dataset("fashionmnist", data_root=tmp_path)
    assert ds.source == str(tmp_path)
    assert ds.class_names[0] == "T-shirt/top" and ds.mean == (0.2861,)


def test_idx_parser_rejects_truncated_and_bad_header(tmp_path):
    good = tmp_path / "x-idx1-ubyte"
    _write_idx(good, np.arange(5), compress=False)
    assert read_idx(good).tolist() == [0, 1, 2, 3, 4]
    trunc = tmp_path / "t"
    trunc.write_bytes(good.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        read_idx(trunc)
    bad = tmp_path / "b"
    bad.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 20)
    with pytest.raises(DataError, match="not an uint8 IDX"):
        read_idx(bad)


@pytest.mark.skipif(
    not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_system_folder(tmp_path):
    # An empty data root falls back to /usr/share/datasets/fashion-mnist.
    ds = load_dataset("fashionmnist", data_root=tmp_path)
    assert ds.source == str(SYSTEM_FASHION_MNIST)
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.train.images.dtype == torch.float32
    assert ds.test_images.shape == (10000, 1, 28, 28) and ds.test_labels.shape == (10000,)
    assert ds.train.class_counts() == [6000] * 10
    assert ds.num_classes == 10 and ds.class_names[-1] == "Ankle boot"
    # reference normalisation (0.2861, 0.3530) matches the data's own statistics
    assert abs(float(ds.train.images.mean())) < 0.01
    assert abs(float(ds.train.images.std()) - 1.0) < 0.01
    assert torch.isclose(ds.train.images.min(), torch.tensor(-0.2861 / 0.3530), atol=1e-5)
    # MNIST must not be read from FashionMNIST files
    with pytest.raises(DataError, match="look like FashionMNIST"):
        load_dataset("mnist", data_root=SYSTEM_FASHION_MNIST)


# -- digits ----------------------------------------------------------------------------------


def test_digits_geometry_split_and_statistics():
    ds = load_dataset("Digits")
    assert ds.name == "digits" and ds.channel == 1 and ds.im_size == (16, 16)
    assert len(ds.train) == 1257 and ds.test_images.shape == (540, 1, 16, 16)
    counts = ds.train.class_counts()
    assert min(counts) == dataset_info("digits").min_train_per_class == 122
    test_counts = torch.bincount(ds.test_labels, minlength=10).tolist()
    assert all(abs(tr / 0.7 - te / 0.3) < 12 for tr, te in zip(counts, test_counts))  # stratified
    assert abs(float(ds.train.images.mean())) < 1e-5 and abs(float(ds.train.images.std()) - 1) < 1e-4
    assert ds.class_names == tuple(str(i) for i in range(10))
    again = load_dataset("digits")
    assert torch.equal(ds.train.images, again.train.images) and torch.equal(ds.test_labels, again.test_labels)


# -- tensor files ----------------------------------------------------------------------------


def test_tensor_dataset_uint8_nhwc_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    xtr = torch.randint(0, 256, (25, 12, 10, 3), generator=g, dtype=torch.uint8)
    xte = torch.randint(0, 256, (7, 12, 10, 3), generator=g, dtype=torch.uint8)
    ytr = torch.arange(25) % 5
    yte = torch.arange(7) % 5
    path = save_tensor_dataset(tmp_path / "mine.pt", xtr, ytr, xte, yte, class_names=list("abcde"))
    ds = load_dataset(f"tensor:{path}")
    assert ds.name == f"tensor:{path}"
    assert (ds.channel, ds.im_size, ds.num_classes) == (3, (12, 10), 5)
    assert ds.class_names == tuple("abcde")
    expect = xtr.permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    assert torch.allclose(ds.train.images * std + mean, expect, atol=1e-5)
    assert torch.allclose(torch.tensor(ds.mean), expect.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.equal(ds.test_labels, yte) and ds.train.class_counts() == [5] * 5
    info = dataset_info(f"tensor:{path}")
    assert (info.channel, info.im_size, info.num_classes, info.min_train_per_class) == (3, (12, 10), 5, 5)


def test_tensor_dataset_float_nchw_with_given_statistics(tmp_path):
    g = torch.Generator().manual_seed(1)
    xtr = torch.rand(12, 2, 8, 8, generator=g)
    xte = torch.rand(4, 2, 8, 8, generator=g)
    ytr = torch.tensor([0, 1, 2] * 4)
    yte = torch.tensor([2, 1, 0, 0])
    path = save_tensor_dataset(tmp_path / "f.pt", xtr, ytr, xte, yte, mean=[0.5, 0.25], std=[0.5, 0.125])
    ds = load_dataset(f"TENSOR:{path}")
    assert ds.mean == (0.5, 0.25) and ds.std == (0.5, 0.125)
    assert torch.allclose(ds.test_images[:, 1] * 0.125 + 0.25, xte[:, 1], atol=1e-6)
    assert ds.class_names == ("0", "1", "2") and ds.num_classes == 3


def test_tensor_dataset_missing_keys_and_bad_labels(tmp_path):
    torch.save({"images_train": torch.zeros(2, 1, 4, 4)}, tmp_path / "a.pt")
    with pytest.raises(DataError, match="lacks the keys labels_train, images_test, labels_test"):
        load_dataset(f"tensor:{tmp_path / 'a.pt'}")
    save_tensor_dataset(tmp_path / "b.pt", torch.zeros(2, 1, 4, 4), torch.tensor([0, 3]),
                        torch.zeros(1, 1, 4, 4), torch.tensor([0]), class_names=["x", "y"])
    with pytest.raises(DataError, match="labels go up to 3 but only 2 class_names"):
        load_dataset(f"tensor:{tmp_path / 'b.pt'}")


def test_tinyimagenet_reference_file(tmp_path):
    g = torch.Generator().manual_seed(2)
    torch.save(
        {
            "images_train": torch.randint(0, 256, (6, 3, 64, 64), generator=g, dtype=torch.uint8),
            "labels_train": torch.tensor([0, 1, 2, 199, 5, 7]),
            "images_val": torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8),
            "labels_val": torch.tensor([0, 199]),
            "classes": [f"n{i:08d}" for i in range(200)],
        },
        tmp_path / "tinyimagenet.pt",
    )
    ds = load_dataset("tinyimagenet", data_root=tmp_path)
    assert ds.num_classes == 200 and ds.im_size == (64, 64) and ds.mean == (0.485, 0.456, 0.406)
    assert ds.class_names[199] == "n00000199" and ds.test_images.shape == (2, 3, 64, 64)


def test_a_tensor_file_declares_whether_flips_keep_the_label_and_dsa_follows_it(tmp_path):
    """A digit-like dataset saved as a tensor file gets DSA without flips when it says so (the
    name rule only knows the built-in digit datasets); a non-boolean declaration is refused."""
    from benchmarks.data import DataError, load_dataset, save_tensor_dataset
    from methods.registry import get_method

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 1, 8, 8, generator=g), torch.arange(2).repeat(10)
    strategies = {}
    for flag in (None, False, True):
        path = save_tensor_dataset(tmp_path / f"d{flag}.pt", x, y, x, y, flip_preserves_label=flag)
        data = load_dataset(f"tensor:{path}")
        assert data.train.flip_preserves_label is flag
        plan = get_method("dsa").eval_plan(data.train)
        strategies[flag] = plan.dsa_strategy
    assert strategies[None] == strategies[True] == "color_crop_cutout_flip_scale_rotate"
    assert strategies[False] == "color_crop_cutout_scale_rotate"

    bad = tmp_path / "bad.pt"
    torch.save({"images_train": x, "labels_train": y, "images_test": x, "labels_test": y,
                "flip_preserves_label": "no"}, bad)
    with pytest.raises(DataError, match="flip_preserves_label must be true or false"):
        load_dataset(f"tensor:{bad}")
