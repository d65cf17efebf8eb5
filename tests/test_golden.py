"""Golden regression test: every registered method's synthetic set and its evaluation, bit for bit.

The expected values in ``tests/golden/methods.json`` were written by this file (one torch thread,
CPU) from the code *before* the architecture refactor (registry, evaluation plan, shared loop), so
a refactor that changes a single bit of any method's images, labels or evaluation accuracies fails
here. Regenerate only for a deliberate, documented change of results::

    CONDBENCH_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py

Budgets are tiny (one or two outer iterations on the bundled digits) so the whole file runs in
well under a minute; it still goes through every method's real loop, DSA, the evaluation
schedule (lr drop at E//2+1), DC's evaluation augmentation (ConvNetBN) and the whole-dataset
baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from benchmarks.data import load_dataset
from benchmarks.evaluate import evaluate_synset, evaluate_whole_dataset
from benchmarks.pipeline import run_condense

GOLDEN = Path(__file__).parent / "golden" / "methods.json"
WRITE = os.environ.get("CONDBENCH_WRITE_GOLDEN") == "1"

#: (case name, method, overrides, ipc, iterations)
CASES = [
    ("random_ipc2", "random", {}, 2, None),
    ("herding_ipc2", "herding", {"feature_epochs": 1}, 2, None),
    ("kcenter_ipc2", "kcenter", {"feature_epochs": 1}, 2, None),
    ("dc_ipc1", "dc", {}, 1, 2),
    ("dc_ipc2", "dc", {"outer_loop": 2, "inner_loop": 2}, 2, 1),
    ("dsa_ipc1", "dsa", {}, 1, 2),
    ("dm_ipc2", "dm", {"batch_real": 64}, 2, 3),
    ("cafe_ipc1", "cafe", {"max_loop_steps": 3, "probe_per_class": 16}, 1, 1),
    ("cafe_dsa_ipc1", "cafe_dsa", {"max_loop_steps": 3, "probe_per_class": 16}, 1, 1),
]
EVAL_EPOCHS = 2


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", device="cpu")


@pytest.fixture(scope="module")
def golden():
    if WRITE or not GOLDEN.exists():
        return {}
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if WRITE:
        GOLDEN.write_text(json.dumps(_written, indent=1, sort_keys=True) + "\n")


_written: dict = {}


def _check(golden: dict, name: str, got: dict) -> None:
    if WRITE:
        _written[name] = got
        return
    assert name in golden, f"no golden entry for {name}; regenerate with CONDBENCH_WRITE_GOLDEN=1"
    assert got == golden[name]


@pytest.mark.parametrize("name,method,overrides,ipc,iterations", CASES, ids=[c[0] for c in CASES])
def test_method_golden(tmp_path, digits, golden, name, method, overrides, ipc, iterations):
    synset = run_condense(method, overrides, digits, ipc, seed=3, iterations=iterations,
                          cache_dir=tmp_path / "cache")
    got = {
        "images": _digest(synset.images.float()),
        "labels": synset.labels.tolist(),
        "indices": None if synset.indices is None else synset.indices.tolist(),
    }
    for arch in ("ConvNet", "ConvNetBN"):
        res = evaluate_synset(synset, digits, arch, num_eval=2, epochs=EVAL_EPOCHS, seed=5,
                              vectorize="sequential")
        got[arch] = {"accuracies": [repr(a) for a in res.accuracies], "augmentation": res.augmentation,
                     "epochs": res.epochs}
    _check(golden, name, got)


def test_whole_dataset_golden(digits, golden):
    res = evaluate_whole_dataset(digits, "ConvNet", num_eval=1, epochs=1, seed=2, vectorize="sequential")
    _check(golden, "whole", {"accuracies": [repr(a) for a in res.accuracies], "augmentation": res.augmentation})
