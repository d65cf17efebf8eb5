"""Bad input that used to be accepted silently (issue 16): each case is refused, before any
compute, with the exact one-line message a user sees (``condbench: error: ...``, exit 2)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch

from benchmarks import cli as cli_module
from benchmarks.cells import cell_id
from benchmarks.cli import main
from benchmarks.data import DataError, load_dataset, save_tensor_dataset
from benchmarks.pipeline import DeviceError, resolve_device, run_condense
from methods.errors import SyntheticSetFormatError
from methods.synset import SyntheticSet


def tensor_data(path: Path, *, seed: int = 0, train_nan: int = 0, test_inf: int = 0, n_test: int = 8, **extra) -> Path:
    g = torch.Generator().manual_seed(seed)
    xtr = torch.rand(40, 1, 8, 8, generator=g)
    xte = torch.rand(n_test, 1, 8, 8, generator=g)
    xtr.view(-1)[:train_nan] = float("nan")
    xte.view(-1)[:test_inf] = float("inf")
    ytr = torch.arange(40) % 2
    yte = torch.arange(n_test) % 2
    save_tensor_dataset(path, xtr, ytr, xte, yte, class_names=["a", "b"])
    if extra:
        blob = torch.load(path, weights_only=True)
        blob.update(extra)
        torch.save(blob, path)
    return path


def error_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("condbench: error: ")
    return err[len("condbench: error: "):]


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if the command gets as far as computing anything."""
    import benchmarks.evaluate
    import benchmarks.pipeline

    def refuse(*a, **k):
        raise AssertionError("computed before the output path was checked")

    monkeypatch.setattr(benchmarks.pipeline, "run_condense", refuse)
    monkeypatch.setattr(benchmarks.evaluate, "evaluate_synset", refuse)
    monkeypatch.setattr(benchmarks.evaluate, "evaluate_whole_dataset", refuse)


@pytest.fixture
def synset_file(tmp_path) -> Path:
    data = tensor_data(tmp_path / "d1.pt")
    synset = run_condense("random", {}, f"tensor:{data}", 2, 0, device="cpu")
    return synset.save(tmp_path / "set.pt")


# -- data loss -----------------------------------------------------------------------------------


def test_condense_refuses_to_write_over_its_input_dataset(tmp_path, capsys, no_compute):
    data = tensor_data(tmp_path / "D.pt")
    before = data.read_bytes()
    msg = error_of(capsys, "condense", "--method", "random", "--dataset", f"tensor:{data}", "--ipc", "1",
                   "--out", str(data))
    assert msg == f"--out {data} is an input of this command; write the result to another file"
    assert data.read_bytes() == before


def test_an_existing_out_file_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "syn.pt"
    out.write_bytes(b"mine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("benchmarks.pipeline.run_condense", lambda *a, **k: pytest.fail("computed"))
        msg = error_of(capsys, "condense", "--method", "random", "--dataset", "digits", "--ipc", "1", "--out", str(out))
    assert msg == f"--out {out} exists; pass --overwrite to replace it, or choose another path"
    assert out.read_bytes() == b"mine"
    assert main(["condense", "--method", "random", "--dataset", "digits", "--ipc", "1", "--out", str(out),
                 "--overwrite"]) == 0
    assert SyntheticSet.load(out).ipc == 1


# -- unwritable outputs, found before any compute ----------------------------------------------


def test_an_unwritable_out_is_refused_before_condensing(capsys, no_compute):
    msg = error_of(capsys, "condense", "--method", "random", "--dataset", "digits", "--ipc", "1",
                   "--out", "/proc/x.pt")
    assert msg.startswith("--out /proc/x.pt: cannot write ") and msg.endswith("choose another --out")


def test_an_out_below_a_file_is_refused_naming_the_file(tmp_path, capsys, no_compute):
    (tmp_path / "README.md").write_text("a file")
    out = tmp_path / "README.md" / "x.pt"
    msg = error_of(capsys, "condense", "--method", "random", "--dataset", "digits", "--ipc", "1", "--out", str(out))
    assert msg.startswith(f"--out {out}: cannot write ")
    assert msg.endswith("a part of the path is a file, not a folder: choose another --out")


def test_an_unwritable_json_is_refused_before_evaluating(synset_file, capsys, no_compute):
    msg = error_of(capsys, "evaluate", str(synset_file), "--json", "/proc/x.json", "--epochs", "1")
    assert msg.startswith("--json /proc/x.json: cannot write ")
    msg = error_of(capsys, "whole", "--dataset", "digits", "--json", "/proc/x.json", "--epochs", "1")
    assert msg.startswith("--json /proc/x.json: cannot write ")


def test_a_write_failing_after_the_check_saves_to_a_named_fallback(tmp_path, monkeypatch):
    import benchmarks.storage

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(benchmarks.storage, "atomic_write_bytes", full)
    with pytest.raises(Exception) as err:
        cli_module.write_output(b"payload", tmp_path / "out" / "syn.pt", "synthetic set")
    msg = str(err.value)
    assert msg.startswith(f"cannot write {tmp_path / 'out' / 'syn.pt'} under {tmp_path / 'out'} (OSError: No space "
                          "left on device); the filesystem is full")
    fallback = Path(msg.rsplit("saved to ", 1)[1].removesuffix(" instead"))
    assert fallback.read_bytes() == b"payload"
    fallback.unlink()


# -- garbage in ------------------------------------------------------------------------------------


def test_non_finite_training_or_test_images_are_refused_at_load(tmp_path):
    bad = tensor_data(tmp_path / "nan.pt", train_nan=3)
    with pytest.raises(DataError) as err:
        load_dataset(f"tensor:{bad}")
    assert str(err.value) == f"{bad}: 3 non-finite value(s) (NaN/Inf) in the training images; fix the data"
    bad = tensor_data(tmp_path / "inf.pt", test_inf=2)
    with pytest.raises(DataError) as err:
        load_dataset(f"tensor:{bad}")
    assert str(err.value) == f"{bad}: 2 non-finite value(s) (NaN/Inf) in the test images; fix the data"


def test_an_empty_test_split_is_one_line(tmp_path, capsys):
    data = tensor_data(tmp_path / "notest.pt", n_test=0)
    msg = error_of(capsys, "whole", "--dataset", f"tensor:{data}", "--epochs", "1", "--num-eval", "1")
    assert msg == f"{data}: the test split is empty; a dataset needs test images to evaluate on"


def test_a_non_finite_synthetic_set_is_refused_at_evaluation(synset_file, capsys, no_compute):
    synset = SyntheticSet.load(synset_file)
    synset.images.view(-1)[:3] = float("nan")
    synset.save(synset_file)
    msg = error_of(capsys, "evaluate", str(synset_file), "--epochs", "1")
    assert msg == (f"{synset_file} cannot be evaluated: its images hold 3 non-finite value(s) (NaN/Inf): the "
                   "condensation diverged; condense again (e.g. with a lower learning rate)")


def test_a_set_with_more_labels_than_images_is_corrupt(synset_file, capsys):
    blob = torch.load(synset_file, weights_only=True)
    blob["labels"] = torch.zeros(20, dtype=torch.long)
    blob.pop("checksum")
    torch.save(blob, synset_file)
    msg = error_of(capsys, "evaluate", str(synset_file), "--epochs", "1")
    assert msg == f"{synset_file} is a corrupt synthetic set: 4 images but 20 labels"


def test_flipped_bytes_in_a_set_fail_its_checksum(synset_file, capsys):
    blob = torch.load(synset_file, weights_only=True)
    blob["images"].view(-1)[:16] += 1.0  # 64 bytes of float32 changed, the file still loads
    torch.save(blob, synset_file)
    msg = error_of(capsys, "evaluate", str(synset_file), "--epochs", "1")
    assert msg == (f"{synset_file} is a corrupt synthetic set: its tensors do not match the checksum written with "
                   "them (the file was modified or damaged); condense it again")


def test_an_untrusted_file_gets_no_weights_only_advice(tmp_path, capsys):
    import pickle

    evil = tmp_path / "evil.pt"
    torch.save({"x": io.StringIO("objects")}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    msg = error_of(capsys, "evaluate", str(evil))
    assert "weights_only" not in msg
    assert msg.endswith("it holds Python objects besides tensors and plain values; refused, loading them could run code)")


def test_unknown_tensor_keys_warn_naming_the_expected_key(tmp_path, caplog):
    data = tensor_data(tmp_path / "keys.pt", classes=["x", "y"])
    with caplog.at_level(logging.WARNING, logger="benchmarks.data"):
        load_dataset(f"tensor:{data}")
    assert f"{data}: unknown key 'classes' ignored (did you mean 'class_names'?)" in caplog.messages


# -- wrong pairing ---------------------------------------------------------------------------------


def test_evaluating_on_another_dataset_needs_allow_other_dataset(tmp_path, synset_file, capsys):
    other = tensor_data(tmp_path / "d2.pt", seed=1)  # same geometry, other data
    msg = error_of(capsys, "evaluate", str(synset_file), "--dataset", f"tensor:{other}", "--epochs", "1",
                   "--num-eval", "1")
    assert msg == (f"{synset_file} was condensed from tensor:{tmp_path / 'd1.pt'}, not tensor:{other}; pass "
                   "--allow-other-dataset to evaluate it there anyway")
    assert main(["evaluate", str(synset_file), "--dataset", f"tensor:{other}", "--epochs", "1", "--num-eval", "1",
                 "--allow-other-dataset", "--json", str(tmp_path / "r.json")]) == 0


def test_a_dataset_file_changed_on_disk_is_another_dataset(tmp_path, synset_file, capsys):
    fields = dict(ipc=1, method="random", overrides={}, seed=0, iterations=None, num_eval=1, eval_epochs=None,
                  train_arch=None)
    data = tmp_path / "d1.pt"
    before = cell_id(dataset=f"tensor:{data}", **fields)
    tensor_data(data, seed=7)  # the user regenerated the file
    assert cell_id(dataset=f"tensor:{data}", **fields) != before
    msg = error_of(capsys, "evaluate", str(synset_file), "--epochs", "1")
    assert msg == (f"{synset_file} was condensed from another version of tensor:{data} (its contents changed since); "
                   "pass --allow-other-dataset to evaluate it there anyway")


# -- flags -----------------------------------------------------------------------------------------


def test_zero_epochs_is_refused(synset_file, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(synset_file), "--epochs", "0"])
    assert exit_.value.code == 2
    assert "argument --epochs: expected a positive integer, got 0" in capsys.readouterr().err


def test_an_unusable_mps_device_is_one_line():
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(DeviceError) as err:
        resolve_device("mps")
    assert str(err.value) == ("device 'mps' requested but this PyTorch has no usable MPS (Apple GPU) support here; "
                              "use --device cpu or auto")


def test_the_saved_config_states_the_iteration_budget_that_ran():
    synset = run_condense("dm", {}, "digits", 1, 0, device="cpu", iterations=2)
    assert synset.config["iterations"] == 2


def test_a_set_records_its_dataset_fingerprint(synset_file, tmp_path):
    from benchmarks.data import dataset_fingerprint

    fp = SyntheticSet.load(synset_file).extra["dataset_fingerprint"]
    assert fp == dataset_fingerprint(f"tensor:{tmp_path / 'd1.pt'}") and fp.startswith("tensor-sha256:")
    with pytest.raises(SyntheticSetFormatError):
        SyntheticSet.load(tmp_path / "missing.pt")


def test_a_checkpoint_written_for_other_data_is_refused(tmp_path):
    from benchmarks.storage import CheckpointError

    ckpt = tmp_path / "run.ckpt"
    d1, d2 = tensor_data(tmp_path / "a.pt"), tensor_data(tmp_path / "b.pt", seed=3)
    run_condense("dm", {}, f"tensor:{d1}", 1, 0, device="cpu", iterations=2, checkpoint_path=ckpt, checkpoint_every=1)
    with pytest.raises(CheckpointError) as err:
        run_condense("dm", {}, f"tensor:{d2}", 1, 0, device="cpu", iterations=4, checkpoint_path=ckpt)
    from benchmarks.data import dataset_fingerprint

    assert str(err.value) == (f"checkpoint {ckpt} was written for other data ({dataset_fingerprint(f'tensor:{d1}')}, "
                              f"not {dataset_fingerprint(f'tensor:{d2}')}); delete it or use another --checkpoint")


def test_constant_training_images_are_refused(tmp_path):
    path = tmp_path / "flat.pt"
    save_tensor_dataset(path, torch.full((10, 1, 4, 4), 0.5), torch.arange(10) % 2, torch.rand(4, 1, 4, 4),
                        torch.arange(4) % 2)
    with pytest.raises(DataError) as err:
        load_dataset(f"tensor:{path}")
    assert str(err.value) == (f"{path}: every training image is the same constant value; nothing can be learned "
                              "from it (check how the file was made)")
