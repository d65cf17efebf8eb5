"""Teacher (soft-label) evaluation: the override keys, the cached teacher, the per-view labels."""

from __future__ import annotations

import pytest
import torch

from benchmarks.data import Dataset
from benchmarks.evaluate import EvaluationError, evaluate_synset, evaluate_whole_dataset
from benchmarks.storage import disk_cache
from benchmarks.teacher import (
    PerViewLabels, TeacherSpec, canonical_overrides, overrides_problems, split_overrides,
    train_teacher,
)
from methods.realdata import ClassData
from methods.synset import SyntheticSet
from tests.conftest import make_classdata


def _dataset(name="blobs", num_classes=4, per_class=30, size=8) -> Dataset:
    full = make_classdata(num_classes, per_class, 1, size, 0, name)
    tr = torch.cat([idx[: idx.numel() // 3] for idx in full.indices_by_class])
    te = torch.cat([idx[idx.numel() // 3:] for idx in full.indices_by_class])
    train = ClassData(full.images[tr], full.labels[tr], num_classes, full.mean, full.std, name=name)
    return Dataset(name, train, full.images[te], full.labels[te], num_classes, 1, (size, size), full.mean,
                   full.std, tuple(str(i) for i in range(num_classes)))


def _synset(ds: Dataset, ipc=2) -> SyntheticSet:
    idx = torch.cat([i[:ipc] for i in ds.train.indices_by_class])
    return SyntheticSet(images=ds.train.images[idx], labels=ds.train.labels[idx], method="random", config={},
                        seed=0, ipc=ipc, num_classes=ds.num_classes, dataset=ds.name, indices=idx)


def test_split_overrides_turns_teacher_into_a_soft_label_plan():
    plan, spec, problems = split_overrides({"labels": "teacher", "temperature": 4.0, "teacher_epochs": 3,
                                            "teacher_per_view": True})
    assert problems == []
    assert plan == {"labels": "soft", "loss": "kl", "temperature": 4.0}
    assert spec == TeacherSpec(arch=None, epochs=3, per_view=True)
    assert split_overrides({"labels": "teacher", "loss": "soft_ce"})[0]["loss"] == "soft_ce"
    assert split_overrides({"lr": 0.02}) == ({"lr": 0.02}, None, [])


def test_bad_teacher_overrides_are_named():
    assert "only apply with labels=teacher" in overrides_problems({"teacher_epochs": 3})[0]
    problems = overrides_problems({"labels": "teacher", "teacher_epochs": 0, "teacher_arch": "NoSuchNet",
                                   "loss": "ce"})
    assert any(p.startswith("teacher_epochs must be an integer >= 1") for p in problems)
    assert any(p.startswith("teacher_arch:") for p in problems)
    assert any("with labels=teacher use loss=kl" in p for p in problems)
    assert canonical_overrides({"labels": "teacher", "teacher_arch": "convnet"}) == {
        "labels": "teacher", "teacher_arch": "ConvNet"}


def test_teacher_is_cached_and_labels_the_set(tmp_path):
    ds = _dataset()
    cache = disk_cache(tmp_path)
    first = train_teacher(ds, "MLP", seed=0, epochs=3, cache=cache)
    second = train_teacher(ds, "MLP", seed=0, epochs=3, cache=cache)
    assert not first.cache_hit and second.cache_hit
    assert len(list(tmp_path.glob("*.pt"))) == 1
    x = ds.train.images[:5]
    assert torch.equal(first.logits(x), second.logits(x))
    other = train_teacher(ds, "MLP", seed=1, epochs=3, cache=cache)
    assert not other.cache_hit and not torch.equal(other.logits(x), first.logits(x))


def test_teacher_evaluation_records_teacher_labels_and_differs_from_hard():
    ds = _dataset()
    synset = _synset(ds)
    hard = evaluate_synset(synset, ds, "MLP", num_eval=1, epochs=3)
    soft = evaluate_synset(synset, ds, "MLP", num_eval=1, epochs=3,
                           plan_overrides={"labels": "teacher", "temperature": 2.0, "teacher_epochs": 3})
    assert hard.labels == "hard" and soft.labels == "teacher"
    assert soft.plan["labels"] == "teacher" and soft.plan["loss"] == "kl" and soft.plan["temperature"] == 2.0
    assert soft.plan["teacher_arch"] == "MLP" and soft.plan["teacher_epochs"] == 3
    assert 0.0 <= soft.plan["teacher_test_accuracy"] <= 1.0
    assert soft.accuracies != hard.accuracies


def test_per_view_labels_ask_the_teacher_about_each_augmented_batch():
    ds = _dataset()
    teacher = train_teacher(ds, "MLP", seed=0, epochs=2)
    seen = []

    def augment(x, generator):
        return x + 1.0

    def loss(out, target):
        seen.append(target)
        return (out - target).pow(2).mean()

    views = PerViewLabels(teacher, augment, loss)
    x = ds.train.images[:3]
    views.augment_fn(x, torch.Generator())
    views.loss_fn(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    assert torch.equal(seen[0], teacher.logits(x + 1.0))
    result = evaluate_synset(_synset(ds), ds, "MLP", num_eval=1, epochs=2, teacher=teacher,
                             plan_overrides={"labels": "teacher", "teacher_per_view": True,
                                             "augmentation": "dc:noise"})
    assert result.plan["teacher_per_view"] is True and result.labels == "teacher"


def test_teacher_for_another_dataset_is_rejected():
    ds = _dataset()
    other = _dataset(name="other", num_classes=3)
    teacher = train_teacher(other, "MLP", seed=0, epochs=1)
    with pytest.raises(EvaluationError, match="the teacher was trained on 'other' .* train a teacher for 'blobs'"):
        evaluate_synset(_synset(ds), ds, "MLP", num_eval=1, epochs=1, teacher=teacher,
                        plan_overrides={"labels": "teacher"})
    with pytest.raises(EvaluationError, match="whole-dataset baseline trains on the dataset's own labels"):
        evaluate_whole_dataset(ds, "MLP", num_eval=1, epochs=1, plan_overrides={"labels": "teacher"})
