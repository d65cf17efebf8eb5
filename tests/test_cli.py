"""CLI end to end, its user-error handling, and the pipeline/storage it runs on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import UserError
from benchmarks.cli import main, parse_overrides
from benchmarks.data import load_dataset
from benchmarks.pipeline import DeviceError, resolve_device, run_condense
from benchmarks.storage import CheckpointError, FileCheckpointStore, disk_cache
from methods.errors import MethodError
from methods.synset import SyntheticSet

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_condense_and_evaluate_digits_end_to_end(tmp_path):
    out = tmp_path / "syn.pt"
    done = _cli("condense", "--method", "random", "--dataset", "digits", "--ipc", "2", "--seed", "1",
                "--out", str(out), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    synset = SyntheticSet.load(out)
    assert synset.method == "random" and synset.ipc == 2 and synset.images.shape == (20, 1, 16, 16)
    record_path = tmp_path / "eval.json"
    done = _cli("evaluate", str(out), "--num-eval", "2", "--epochs", "20", "--arch", "ConvNet",
                "--json", str(record_path), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ConvNet" in done.stdout and "±" in done.stdout
    record = json.loads(record_path.read_text())
    assert record["method"] == "random" and record["dataset"] == "digits" and record["ipc"] == 2
    (result,) = record["results"]
    assert result["arch"] == "ConvNet" and result["epochs"] == 20 and len(result["accuracies"]) == 2
    assert result["mean"] > 0.3  # 10 classes: chance is 0.1


@pytest.fixture
def synset_file(tmp_path) -> Path:
    ds = load_dataset("digits")
    return run_condense("random", {}, ds, 1, 0).save(tmp_path / "s.pt")


def _bad_cases(tmp_path: Path, synset_file: Path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(512))
    empty = tmp_path / "empty_root"
    empty.mkdir()
    custom = SyntheticSet(torch.zeros(2, 1, 16, 16), torch.tensor([0, 1]), "random", {}, 0, 1, 2,
                          dataset="custom").save(tmp_path / "custom.pt")
    base = ["condense", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "o.pt")]
    return {
        "unknown method": (["condense", "--method", "nosuch", "--dataset", "digits", "--ipc", "1"],
                           "unknown method 'nosuch'; valid methods:"),
        "unknown dataset": (["condense", "--method", "random", "--dataset", "imagenet9", "--ipc", "1"],
                            "unknown dataset 'imagenet9'; valid datasets:"),
        "unknown architecture": (["evaluate", str(synset_file), "--arch", "ConvNet,NoNet", "--epochs", "1"],
                                 "unknown architecture 'NoNet'; valid architectures:"),
        "ipc zero": (["condense", "--method", "random", "--dataset", "digits", "--ipc", "0"],
                     "IPC must be a positive integer, got 0"),
        "ipc negative": (["condense", "--method", "random", "--dataset", "digits", "--ipc", "-3"],
                         "IPC must be a positive integer, got -3"),
        "ipc too large": (["condense", "--method", "random", "--dataset", "digits", "--ipc", "123"],
                          "IPC 123 is larger than the smallest class of dataset 'digits' (122"),
        "missing data": (["condense", "--method", "random", "--dataset", "cifar10", "--ipc", "1",
                          "--data-root", str(empty)],
                         f"CIFAR10 not found under data root {empty}"),
        "unreadable synset": (["evaluate", str(garbage)], "could not be read as a synthetic set"),
        "unknown --set key": (base[:1] + ["--method", "random", "--set", "foo=1"] + base[1:],
                              "unknown config key 'foo'"),
        "bad --set syntax": (base[:1] + ["--method", "random", "--set", "foo"] + base[1:],
                             "--set expects KEY=VALUE, got 'foo'"),
        "missing synset": (["evaluate", str(tmp_path / "nope.pt")], "does not exist"),
        "synset of an unknown dataset": (["evaluate", str(custom)], "records dataset 'custom'"),
    }


CASES = ["unknown method", "unknown dataset", "unknown architecture", "ipc zero", "ipc negative",
         "ipc too large", "missing data", "unreadable synset", "unknown --set key", "bad --set syntax",
         "missing synset", "synset of an unknown dataset"]


@pytest.mark.parametrize("case", CASES)
def test_user_errors_give_one_clear_line_and_exit_2(case, tmp_path, synset_file, capsys):
    argv, message = _bad_cases(tmp_path, synset_file)[case]
    code = main(argv + ["--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert err.count("condbench: error:") == 1


def test_user_error_through_the_real_process_has_no_traceback(tmp_path):
    done = _cli("condense", "--method", "random", "--dataset", "cifar10", "--ipc", "1",
                "--data-root", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "--download" in done.stderr and "Traceback" not in done.stderr


def test_help_texts_have_examples(capsys):
    for argv in (["--help"], ["condense", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
        assert "example" in capsys.readouterr().out


def test_list_shows_methods_datasets_architectures(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "digits" in out and "max IPC 122" in out and "ResNet18BN_AP" in out


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(["a=true", "b=0.01", "c=[1, 2]", "d=ConvNet", "e="]) == {
        "a": True, "b": 0.01, "c": [1, 2], "d": "ConvNet", "e": None}
    with pytest.raises(UserError, match="not valid YAML"):
        parse_overrides(["a=[1,"])


# -- pipeline and storage ----------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="invalid device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


def test_run_condense_validates_before_loading(tmp_path):
    with pytest.raises(MethodError, match="unknown method"):
        run_condense("nosuch", {}, "cifar10", 1, 0, data_root=tmp_path)  # no DataError: method first
    with pytest.raises(MethodError, match="larger than the smallest class"):
        run_condense("random", {}, "cifar100", 501, 0, data_root=tmp_path)  # no loading needed
    with pytest.raises(MethodError, match="iterations"):
        run_condense("random", {}, "digits", 1, 0, iterations=0)


def test_file_checkpoint_store_round_trip_and_corruption(tmp_path):
    store = FileCheckpointStore(tmp_path / "run" / "state.ckpt")
    assert store.load() is None
    store.save({"iteration": 3, "images": torch.arange(4.0), "rng": torch.Generator().get_state()})
    state = store.load()
    assert state["iteration"] == 3 and torch.equal(state["images"], torch.arange(4.0))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["state.ckpt"]  # no temp files left
    (tmp_path / "run" / "state.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"state\.ckpt is unreadable.*delete it"):
        store.load()


def test_disk_cache_computes_once_and_recovers_from_corruption(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"w": torch.ones(3) * len(calls)}

    cache = disk_cache(tmp_path / "cache")
    first = cache("features/digits/seed:0", compute)
    again = disk_cache(tmp_path / "cache")("features/digits/seed:0", compute)  # new process, same folder
    assert len(calls) == 1 and torch.equal(first["w"], again["w"])
    (entry,) = list((tmp_path / "cache").glob("*.pt"))
    entry.write_bytes(b"junk")
    recomputed = cache("features/digits/seed:0", compute)
    assert len(calls) == 2 and torch.equal(recomputed["w"], torch.full((3,), 2.0))
    cache("other", compute)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
    assert not list((tmp_path / "cache").glob("*.tmp"))


def _slow_compute_in_child(folder: str, log_file: str) -> float:
    """Run in a spawned process: compute one key of a shared disk cache slowly, noting each
    computation in ``log_file``; returns the value's entry."""
    import time as _time

    def compute():
        with open(log_file, "a") as fh:
            fh.write("computed\n")
        _time.sleep(1.5)
        return {"w": torch.full((2,), 7.0)}

    return float(disk_cache(folder)("features/shared", compute)["w"][0])


def test_disk_cache_computes_a_key_once_when_two_processes_ask_at_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    log_file = tmp_path / "computations.txt"
    with ctx.Pool(2) as pool:
        values = pool.starmap(_slow_compute_in_child, [(str(tmp_path / "cache"), str(log_file))] * 2)
    assert values == [7.0, 7.0]
    assert log_file.read_text().splitlines() == ["computed"]  # the second process waited and loaded
