"""The expert stage: layout and key, seeded reproducible experts, resume after a kill (finished
experts never retrained, files byte-identical to an uninterrupted run), loading errors, the
pipeline's ``resources_for`` and the ``condbench experts`` parser."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

import methods  # noqa: F401
from benchmarks.experts import (
    ExpertsError,
    add_experts_parser,
    cmd_experts,
    expert_dir,
    experts_needed,
    load_trajectories,
    resources_for,
    train_expert,
    train_experts,
)
from methods.errors import MethodError
from methods.networks import get_network
from methods.trajectories import RESOURCE, TrajectoryKey, Trajectories
from methods.zca import ZCA
from tests.conftest import make_classdata

MODEL = "ConvNetW32"


def _data():
    return make_classdata(4, 10, 1, 16, name="synthetic")


def _key(**kw):
    return TrajectoryKey(**dict(dict(dataset="synthetic", arch=MODEL, zca=False, epochs=3, batch=16), **kw))


class Kill(Exception):
    pass


def test_layout_key_and_trajectory_contents(tmp_path):
    key = _key()
    report = train_experts(_data(), key, 2, tmp_path)
    folder = expert_dir(tmp_path, key)
    assert folder.parent == tmp_path / "experts" and folder.name.startswith("synthetic_ConvNetW32_nozca_3ep_seed0_")
    assert report.trained == [0, 1] and not report.skipped
    meta = json.loads((folder / "key.json").read_text())
    assert meta["key"] == key.to_dict() and meta["num_params"] == sum(
        p.numel() for p in get_network(MODEL, 1, 4, (16, 16), seed=0).parameters())
    traj = load_trajectories(tmp_path, key, 2)
    assert isinstance(traj, Trajectories) and traj.num_experts == 2
    assert traj.experts[0].shape == (4, meta["num_params"])
    init = get_network(MODEL, 1, 4, (16, 16), seed=key.expert_seed(0, "init"))
    assert torch.equal(traj.experts[0][0], torch.cat([p.detach().reshape(-1) for p in init.parameters()]))
    assert not torch.equal(traj.experts[0][1], traj.experts[0][0])  # it trained
    assert not torch.equal(traj.experts[0], traj.experts[1])  # experts differ
    assert not list(folder.glob("*.partial.pt")) and not list(folder.glob(".*tmp"))
    assert json.loads((folder / "expert_0.json").read_text())["train_time_s"] > 0
    # keys differ in everything that changes the trajectory
    assert len({_key().folder_name(), _key(zca=True).folder_name(), _key(lr=0.02).folder_name(),
                _key(seed=1).folder_name(), _key(epochs=4).folder_name()}) == 5


def test_kill_and_rerun_trains_only_the_rest_byte_identical(tmp_path):
    data, key = _data(), _key()
    reference = tmp_path / "ref"
    train_experts(data, key, 3, reference)

    def kill_after_expert_1(i, epoch):
        if i == 1 and epoch == key.epochs:
            raise Kill

    run = tmp_path / "run"
    with pytest.raises(Kill):
        train_experts(data, key, 3, run, on_epoch=kill_after_expert_1)
    again = train_experts(data, key, 3, run)
    assert again.skipped == [0, 1] and again.trained == [2] and not again.resumed

    def kill_mid_expert_2(i, epoch):
        if i == 2 and epoch == 2:
            raise Kill

    mid = tmp_path / "mid"
    with pytest.raises(Kill):
        train_experts(data, key, 3, mid, on_epoch=kill_mid_expert_2)
    assert (expert_dir(mid, key) / "expert_2.partial.pt").exists()
    with pytest.raises(ExpertsError, match=r"experts 2 of 3 are missing \(2 interrupted\)"):
        load_trajectories(mid, key, 3)
    resumed = train_experts(data, key, 3, mid)
    assert resumed.resumed == {2: 2} and resumed.skipped == [0, 1] and not resumed.trained
    for root in (run, mid):
        for i in range(3):
            a = (expert_dir(reference, key) / f"expert_{i}.pt").read_bytes()
            assert (expert_dir(root, key) / f"expert_{i}.pt").read_bytes() == a
    assert not (expert_dir(mid, key) / "expert_2.partial.pt").exists()


def test_loading_errors_are_one_line_with_the_command(tmp_path):
    key = _key()
    with pytest.raises(ExpertsError) as exc:
        load_trajectories(tmp_path, key, 2)
    msg = str(exc.value)
    assert "no expert trajectories for synthetic/ConvNetW32, 3 epochs" in msg and "\n" not in msg
    assert f"condbench experts --dataset synthetic --arch {MODEL} --num-experts 2 --epochs 3 --seed 0" in msg
    train_experts(_data(), key, 1, tmp_path)
    with pytest.raises(ExpertsError, match=r"experts 1, 2 of 3 are missing; finish them with `condbench experts"):
        load_trajectories(tmp_path, key, 3)
    with pytest.raises(ExpertsError, match="found: synthetic_ConvNetW32_nozca_3ep"):
        load_trajectories(tmp_path, _key(arch="ConvNet"), 1)
    other = make_classdata(4, 10, 1, 16, name="other")
    with pytest.raises(ExpertsError, match="the data are 'other'"):
        train_experts(other, key, 1, tmp_path)
    (expert_dir(tmp_path, key) / "expert_0.pt").write_bytes(b"garbage")
    with pytest.raises(ExpertsError, match="could not be read"):
        load_trajectories(tmp_path, key, 1)


def test_resources_for_loads_what_mtt_needs(tmp_path):
    assert resources_for("dm", "synthetic", 1, experts_root=tmp_path) == {}
    ov = dict(model=MODEL, expert_train_epochs=3, num_experts=1, syn_steps=2, expert_epochs=1, max_start_epoch=2,
              lr_img=10.0, lr_lr=1e-5, lr_teacher=0.01, zca=False)
    with pytest.raises(ExpertsError, match="condbench experts --dataset synthetic"):
        resources_for("mtt", "synthetic", 1, overrides=ov, experts_root=tmp_path)
    train_experts(_data(), TrajectoryKey(dataset="synthetic", arch=MODEL, zca=False, epochs=3), 1, tmp_path)
    assert experts_needed("dm", "synthetic", 1) is None
    assert experts_needed("mtt", "synthetic", 1, overrides=ov) == (
        TrajectoryKey(dataset="synthetic", arch=MODEL, zca=False, epochs=3), 1)
    assert experts_needed("mtt", "cifar10", 1)[0].zca and not experts_needed("mtt", "cifar10", 50)[0].zca
    res = resources_for("datm", "synthetic", 1, overrides=ov, experts_root=tmp_path)
    assert set(res) == {RESOURCE} and res[RESOURCE].num_experts == 1
    with pytest.raises(MethodError, match="no row for cifar10 at IPC 3"):
        resources_for("mtt", "cifar10", 3, experts_root=tmp_path)


def test_zca_experts_train_on_whitened_images(tmp_path):
    data, key = _data(), _key(epochs=1, zca=True)
    report = train_experts(data, key, 1, tmp_path)
    assert "_zca_" in report.folder.name and report.folder != expert_dir(tmp_path, _key(epochs=1))
    stored = load_trajectories(tmp_path, key, 1).experts[0]
    zca = ZCA.fit(data.images)
    white = dataclasses.replace(data, images=zca.whiten(data.images), indices_by_class=list(data.indices_by_class))
    assert torch.equal(stored, train_expert(white, key, 0, device=torch.device("cpu")))
    assert not torch.equal(stored, train_expert(data, key, 0, device=torch.device("cpu")))


def test_cli_parser_and_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_experts_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["experts", "--dataset", "digits", "--arch", "mlp", "--num-experts", "1",
                              "--epochs", "1", "--root", str(tmp_path), "--device", "cpu"])
    assert args.func is cmd_experts and args.zca is False and args.batch == 256 and args.lr == 0.01
    assert cmd_experts(args) == 0
    assert "1 trained" in capsys.readouterr().out
    assert cmd_experts(args) == 0
    assert "1 already there" in capsys.readouterr().out
    key = TrajectoryKey(dataset="digits", arch="MLP", zca=False, epochs=1)
    assert load_trajectories(tmp_path, key, 1).experts[0].shape[0] == 2


def test_experts_cli_refuses_an_unwritable_root_before_training(capsys):
    """`condbench experts --root` that cannot be written is one line, exit 2, nothing trained."""
    from benchmarks.cli import main

    rc = main(["experts", "--dataset", "digits", "--num-experts", "1", "--epochs", "1", "--root", "/proc/x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--root" in err[0] and "Traceback" not in err[0]
