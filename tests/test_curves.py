"""Learning curves from kept loop states (benchmarks/curves.py, RunContext.keep_at, the sweep's
``snapshots:`` key and the ``curve`` command): exactly the asked iterations are kept, the set
at N is the set a run of N iterations makes, a tiny debug sweep writes kept states and curve
records that verify clean, and the ``curve`` command evaluates a checkpoint copied by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import methods  # noqa: F401  (registers every method)
from benchmarks import sweep_cli
from benchmarks.cells import Cell
from benchmarks.curves import CURVE_STATUS, CurveError, set_at
from benchmarks.pipeline import run_condense
from benchmarks.record import Record
from benchmarks.store import Store
from benchmarks.sweep import SpecError, build_sweep
from methods.context import MemoryCheckpointStore, RunContext
from methods.errors import MethodError
from methods.registry import get_method
from tests.conftest import make_classdata

SMALL_DM = dict(model="ConvNetW32", batch_real=8)


def _dm(iterations: int, context=None, seed: int = 7):
    data = make_classdata(10, 20, 1, 16)
    return get_method("dm", dict(SMALL_DM, iterations=iterations)).condense(data, 2, seed=seed, context=context)


def test_keep_at_keeps_exactly_the_asked_iterations_beside_the_periodic_saves():
    store = MemoryCheckpointStore()
    final = _dm(5, RunContext(checkpoint=store, checkpoint_every=100, keep_at=frozenset({1, 3})))
    kept = store.kept
    assert sorted(kept) == [1, 3]
    assert [state["iteration"] for state in kept.values()] == [1, 3]
    assert store.saves == 0  # checkpoint_every 100: keeping is not saving
    assert not torch.equal(kept[1]["images"], kept[3]["images"])
    assert not torch.equal(kept[3]["images"], final.images)
    plain = MemoryCheckpointStore()
    again = _dm(5, RunContext(checkpoint=plain, checkpoint_every=100))
    assert plain.kept == {} and torch.equal(again.images, final.images)  # keeping changes nothing


def test_keep_at_needs_a_store_that_keeps_and_positive_counts():
    with pytest.raises(MethodError, match="keep_at needs a checkpoint store"):
        RunContext(keep_at=frozenset({2}))
    with pytest.raises(MethodError, match="positive iteration counts"):
        RunContext(checkpoint=MemoryCheckpointStore(), keep_at=frozenset({0}))


def test_the_set_at_n_is_the_set_of_a_run_with_n_iterations_and_differs_from_the_final_set():
    store = MemoryCheckpointStore()
    final = _dm(4, RunContext(checkpoint=store, keep_at=frozenset({2})))
    point = set_at(final, store.kept[2])
    short = _dm(2)
    assert torch.equal(point.images, short.images)
    assert not torch.equal(point.images, final.images)
    assert torch.equal(point.labels, final.labels) and point.eval_plan == final.eval_plan
    assert point.cost["iterations"] == 2 and point.cost["image_steps"] == 2
    other = _dm(2, seed=8)
    with pytest.raises(CurveError, match="belongs to another run .seed 7"):
        set_at(other, store.kept[2])


def test_a_learned_lr_and_soft_labels_come_from_the_kept_state():
    store = MemoryCheckpointStore()
    final = _dm(2, RunContext(checkpoint=store, keep_at=frozenset({1})))
    state = dict(store.kept[1])
    final.learned_lr = 0.5
    final.soft_labels = torch.zeros(len(final), 10)
    with pytest.raises(CurveError, match="no learned syn_lr"):
        set_at(final, state)
    state["tensors"] = {"syn_lr": torch.tensor(0.02), "label_logits": torch.ones(len(final), 10)}
    point = set_at(final, state)
    assert point.learned_lr == pytest.approx(0.02) and torch.equal(point.soft_labels, torch.ones(len(final), 10))
    assert final.learned_lr == 0.5  # the final set is untouched


# -- the sweep key -------------------------------------------------------------------------

BASE = dict(datasets=["digits"], ipcs=[1], seeds=[0], random_baseline=False)


def test_snapshots_are_checked_like_other_spec_keys(tmp_path):
    spec = dict(BASE, output=str(tmp_path / "o"), methods=[
        {"method": "dm", "budgets": {"iterations": 4}, "snapshots": [0, 4, 2, 2, "x"]},
        {"method": "herding", "snapshots": [1]},
        {"method": "whole", "snapshots": [1]},
        {"method": "dc", "snapshots": 10},
        {"method": "dm", "label": "default budget", "snapshots": [20000]},
    ])
    with pytest.raises(SpecError) as err:
        build_sweep(spec)
    problems = err.value.problems
    assert "methods[0].snapshots[0]: must be a positive integer (an iteration count), got 0" in problems
    assert any(p.startswith("methods[0].snapshots[1]: 4 is not below the budget of 4 iterations") for p in problems)
    assert "methods[0].snapshots[3]: duplicate iteration count 2" in problems
    assert any(p.startswith("methods[0].snapshots[4]: must be a positive integer") for p in problems)
    assert any(p.startswith("methods[1].snapshots: herding is not a learned method") for p in problems)
    assert any(p.startswith("methods[2].snapshots: the whole-dataset baseline") for p in problems)
    assert any(p.startswith("methods[3].snapshots: must be a non-empty list") for p in problems)
    assert any(p.startswith("methods[4].snapshots[0]: 20000 is not below the budget of 20000") for p in problems)
    assert len(problems) == 8


def test_snapshots_are_no_part_of_the_cell_id_and_old_cells_load(tmp_path):
    entry = {"method": "dm", "budgets": {"iterations": 4}}
    plain = build_sweep(dict(BASE, output=str(tmp_path / "o"), methods=[entry]))
    kept = build_sweep(dict(BASE, output=str(tmp_path / "o"), methods=[dict(entry, snapshots=[3, 1])]))
    assert [c.cell_id for c in plain.cells] == [c.cell_id for c in kept.cells]
    assert kept.cells[0].snapshots == (1, 3) and plain.cells[0].snapshots == ()
    old = kept.cells[0].to_json()
    del old["snapshots"]  # a cells.json written before the field existed
    assert Cell.from_json(old).snapshots == ()
    assert Cell.from_json(json.loads(json.dumps(kept.cells[0].to_json()))) == kept.cells[0]


# -- a real tiny sweep -----------------------------------------------------------------------


def _spec(tmp_path: Path) -> Path:
    spec = dict(BASE, name="curves", output=str(tmp_path / "out"), eval_archs=["ConvNet"], num_eval=1,
                budgets={"eval_epochs": 1},
                methods=[{"method": "dm", "budgets": {"iterations": 4}, "snapshots": [1, 2], **SMALL_DM}])
    path = tmp_path / "curves.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curves")
    spec = _spec(tmp)
    assert sweep_cli.main(["run", str(spec), "--executor", "debug"]) == 0
    return tmp, spec, Store(tmp / "out")


def _curve(store: Store, cid: str, n: int) -> dict:
    return json.loads(store.curve_path(cid, "ConvNet", n).read_text())


def test_a_sweep_keeps_its_snapshots_and_writes_curve_records_that_verify_clean(swept, capsys):
    _, _, store = swept
    (cell,) = [Cell.from_json(c) for c in store.read_cells()[1]]
    assert cell.snapshots == (1, 2)
    assert store.kept_iterations(cell.cell_id) == [1, 2]
    assert not store.checkpoint_path(cell.cell_id).exists()
    final = Record.from_json(json.loads(store.record_path(cell.cell_id, "ConvNet").read_text()))
    assert final.iterations == 4 and final.status == "done"
    for n in (1, 2):
        rec = _curve(store, cell.cell_id, n)
        assert rec["status"] == CURVE_STATUS and rec["iterations"] == n
        state = torch.load(store.snapshot_path(cell.cell_id, n), weights_only=True)
        assert state["iteration"] == n
        for key in ("cell_id", "method", "label", "overrides", "method_config", "eval_plan", "num_eval", "eval_epochs",
                    "seed", "method_info", "synset_path"):
            assert rec[key] == json.loads(json.dumps(getattr(final, key))), key
        assert rec["cost"]["eval_wall_time_s"] > 0 and rec["cost"]["image_steps"] == n
        assert 0 < rec["cost"]["condense_wall_time_s"] < final.cost["condense_wall_time_s"]
    # the curve records are no records of the cell's own: status and verify are undisturbed
    capsys.readouterr()
    assert sweep_cli.main(["status", str(store.root), "--verify", "--no-query"]) == 0
    out = capsys.readouterr().out
    assert "verify: OK" in out and "1 done" in out
    assert sorted(p.name for p in store.records_dir.iterdir()) == [f"{cell.cell_id}__ConvNet.json"]
    # nothing left to do
    assert sweep_cli.main(["curve", str(store.root)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_the_curve_command_evaluates_a_checkpoint_copied_by_hand(swept, tmp_path, capsys):
    tmp, _, store = swept
    (cell,) = [Cell.from_json(c) for c in store.read_cells()[1]]
    data_root = str(tmp / "data")
    checkpoint = tmp_path / "ck.pt"  # what a running cell's checkpoint file holds after 3 iterations
    three = run_condense("dm", dict(cell.overrides), "digits", 1, 0, device="cpu", iterations=3,
                         checkpoint_path=checkpoint, checkpoint_every=1)
    shutil.copy(checkpoint, store.snapshot_path(cell.cell_id, 3))
    shutil.copy(store.snapshot_path(cell.cell_id, 1), store.snapshot_path(cell.cell_id, 5))  # misnamed copy
    capsys.readouterr()
    rc = sweep_cli.main(["curve", str(store.root), "--cell", cell.cell_id, "--data-root", data_root])
    out = capsys.readouterr().out
    assert rc == 1  # the misnamed copy is skipped and said so
    assert "holds iteration 1, its name says 5" in out
    assert f"curve {cell.cell_id}" in out and "iteration 3 on ConvNet" in out
    rec = _curve(store, cell.cell_id, 3)
    assert rec["status"] == CURVE_STATUS and rec["iterations"] == 3
    assert not store.curve_path(cell.cell_id, "ConvNet", 5).exists()
    from methods.synset import SyntheticSet

    final = SyntheticSet.load(store.synset_path(cell.cell_id))
    point = set_at(final, torch.load(store.snapshot_path(cell.cell_id, 3), weights_only=True))
    assert torch.equal(point.images, three.images)
    before = store.curve_path(cell.cell_id, "ConvNet", 1).read_bytes()
    store.snapshot_path(cell.cell_id, 5).unlink()
    assert sweep_cli.main(["curve", str(store.root), "--data-root", data_root]) == 0  # resumable: skips written
    assert store.curve_path(cell.cell_id, "ConvNet", 1).read_bytes() == before
    assert "nothing to do" in capsys.readouterr().out


def test_the_curve_command_names_a_missing_store_or_cell(swept, tmp_path, capsys):
    _, _, store = swept
    assert sweep_cli.main(["curve", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert sweep_cli.main(["curve", str(store.root), "--cell", "ffffffffffff"]) == 2
    err = capsys.readouterr().err
    assert "ffffffffffff" in err and "not in" in err and len(err.strip().splitlines()) == 1
    assert sweep_cli.main(["curve", str(store.root), "--num-eval", "0"]) == 2
    assert "--num-eval must be an integer >= 1" in capsys.readouterr().err


def test_deleting_a_cells_results_deletes_its_kept_states_and_curve_records(tmp_path):
    store = Store(tmp_path / "s")
    store.snapshot_dir("abc").mkdir(parents=True)
    store.snapshot_path("abc", 3).write_bytes(b"x")
    store.curves_dir.mkdir()
    store.curve_path("abc", "ConvNet", 3).write_text("{}")
    store.curve_path("abd", "ConvNet", 3).write_text("{}")
    store.delete_cell_results("abc")
    assert not store.snapshot_dir("abc").exists()
    assert [p.name for p in store.curves_dir.iterdir()] == ["abd__ConvNet__it000003.json"]


def test_running_cells_get_their_points_from_the_kept_states_alone(swept, tmp_path, capsys):
    """``curve --running``: a cell still condensing (no final set yet) gets the same points the
    worker writes after it finishes -- its set at N is rebuilt by resuming the kept state with a
    budget of N."""
    tmp, _, store = swept
    (cell,) = [Cell.from_json(c) for c in store.read_cells()[1]]
    running = Store(tmp_path / "running")
    shutil.copytree(store.root, running.root)
    running.synset_path(cell.cell_id).unlink()  # as while the cell condenses
    for n in (1, 2):
        running.curve_path(cell.cell_id, "ConvNet", n).unlink()
    capsys.readouterr()
    assert sweep_cli.main(["curve", str(running.root), "--data-root", str(tmp / "data")]) == 0
    out = capsys.readouterr().out
    assert "no final synthetic set yet" in out and "add --running" in out  # the plain command leaves it
    assert not running.curve_path(cell.cell_id, "ConvNet", 1).exists()
    assert sweep_cli.main(["curve", str(running.root), "--running", "--data-root", str(tmp / "data")]) == 0
    out = capsys.readouterr().out
    assert "still condensing; its set rebuilt from the state kept at iteration 1" in out
    for n in (1, 2):
        rebuilt, worker = _curve(running, cell.cell_id, n), _curve(store, cell.cell_id, n)
        assert rebuilt["accuracies"] == worker["accuracies"]  # bit for bit: the same set and networks
        assert rebuilt["method_config"] == worker["method_config"]  # names the cell's budget, not N
        assert rebuilt["iterations"] == n


def test_running_cafe_points_wait_for_the_final_set(tmp_path):
    """CAFE's lr schedule is relative to its budget: its kept state refuses a resume with
    another budget, so --running names the problem instead of a point."""
    from benchmarks.curves import run_curves

    spec = dict(BASE, name="c", output=str(tmp_path / "out"), eval_archs=["ConvNet"], num_eval=1,
                budgets={"eval_epochs": 1}, methods=[{"method": "cafe", "budgets": {"iterations": 3}, "snapshots": [1],
                                                      "model": "ConvNetW32", "batch_real": 4, "probe_per_class": 4,
                                                      "max_loop_steps": 2}])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    assert sweep_cli.main(["run", str(path), "--executor", "debug"]) == 0
    store = Store(tmp_path / "out")
    (cell,) = [Cell.from_json(c) for c in store.read_cells()[1]]
    store.synset_path(cell.cell_id).unlink()
    store.curve_path(cell.cell_id, "ConvNet", 1).unlink()
    lines = []
    summary = run_curves(store, running=True, data_root=str(tmp_path / "data"), log=lines.append)
    assert not summary.written and len(summary.skipped) == 1
    assert "cannot be rebuilt from a kept state (cafe does not resume its state of iteration 1 with a budget of 1" \
        in summary.skipped[0] and "budget 3" in summary.skipped[0] and "when the cell is done" in summary.skipped[0]
