"""The evaluation plan (methods.protocol): defaults per method, overrides, soft labels, learned
lr, optimisers and schedules, augmentation objects, ZCA, best-validation selection, format-1
files and the CLI's --eval-set / --explain."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import benchmarks.eval_networks as nw
import benchmarks.evaluate as ev
from benchmarks.cli import main
from benchmarks.data import Dataset
from benchmarks.evaluate import EvaluationError, effective_plan, evaluate_synset, evaluate_whole_dataset, validation_split
from methods import get_method
from methods.base import Method
from methods.ensemble import train_ensemble
from methods.errors import MethodError, SyntheticSetFormatError
from methods.networks import get_network
from methods.protocol import (
    DCAugmentation,
    DSAAugmentation,
    EvalPlan,
    apply_overrides,
    epoch_schedule,
    plan_keys,
    plan_problems,
)
from methods.realdata import ClassData
from methods.registry import all_method_info
from methods.rng import make_generator
from methods.synset import SyntheticSet
from methods.training import kl_divergence, make_loss, soft_cross_entropy
from methods.zca import ZCA
from tests.conftest import make_classdata

ARCH = "ConvNetW32"


def _dataset(num_classes=4, per_class=30, channel=1, size=16, seed=0, name="blobs") -> Dataset:
    full = make_classdata(num_classes, per_class, channel, size, seed, name)
    tr, te = [], []
    for idx in full.indices_by_class:
        k = idx.numel() // 3
        tr.append(idx[:k])
        te.append(idx[k:])
    tr, te = torch.cat(tr), torch.cat(te)
    train = ClassData(full.images[tr], full.labels[tr], num_classes, full.mean, full.std, name=name)
    return Dataset(name, train, full.images[te], full.labels[te], num_classes, channel, (size, size),
                   full.mean, full.std, tuple(str(i) for i in range(num_classes)))


def _synset(ds: Dataset, ipc: int, plan: EvalPlan = EvalPlan(), **kw) -> SyntheticSet:
    idx = torch.cat([ix[:ipc] for ix in ds.train.indices_by_class])
    images = kw.pop("images", ds.train.images[idx])
    labels = kw.pop("labels", ds.train.labels[idx])
    return SyntheticSet(images, labels, "random", {}, 0, ipc, ds.num_classes, dataset=ds.name, eval_plan=plan, **kw)


# -- defaults per method ----------------------------------------------------------------------


def _v1_eval_defaults(method, real) -> dict:
    """Format 1's rule, written out: what eval_defaults held before the plan existed."""
    dsa = method.uses_dsa_in_eval()
    strategy = None
    if dsa:
        from methods.augment import default_dsa_strategy

        strategy = getattr(method.config, "dsa_strategy", None) or default_dsa_strategy(real.name)
    return {"dsa": dsa, "dsa_strategy": strategy, "epochs_no_aug": method.eval_epochs_no_aug}


EXPECTED_NO_AUG = {"cafe": 600, "cafe_dsa": 600, "dm": 1000, "dc": 300, "dsa": 300, "random": 300,
                   "herding": 300, "kcenter": 300}


@pytest.mark.parametrize("info", all_method_info(), ids=lambda i: i.name)
def test_every_method_plan_is_the_published_protocol_with_its_dsa_and_epochs(info):
    real = make_classdata(2, 4, 1, 8, name="mnist")
    method = get_method(info.name)
    plan = method.eval_plan(real)
    assert plan.eval_defaults() == _v1_eval_defaults(method, real) == method.eval_defaults(real)
    if info.name in EXPECTED_NO_AUG:
        assert plan.epochs_no_aug == EXPECTED_NO_AUG[info.name]
    if type(method).eval_plan is not Method.eval_plan:
        return  # a method with its own protocol (trajectory matching: the learned lr) says so itself
    # everything else is the shared protocol
    assert dataclasses.replace(plan, dsa=False, dsa_strategy=None, epochs_no_aug=300) == EvalPlan()
    assert (plan.lr, plan.momentum, plan.weight_decay, plan.batch_size) == (0.01, 0.9, 5e-4, 256)
    assert (plan.labels, plan.loss, plan.optimizer, plan.schedule, plan.selection) == (
        "hard", "ce", "sgd", "reference_step", "final")


def test_dsa_methods_resolve_to_dsa_and_1000_epochs_others_to_the_dc_rule():
    real = make_classdata(2, 4, 1, 8, name="mnist")
    dm = get_method("dm").eval_plan(real).resolve("mnist", "ConvNet")
    assert (dm.epochs, dm.augmentation) == (1000, "dsa:color_crop_cutout_scale_rotate")
    dc = get_method("dc").eval_plan(real)
    assert dc.resolve("mnist", "ConvNet").augmentation == "dc:crop_scale_rotate"
    assert dc.resolve("digits", "ConvNet").augmentation == "none" and dc.resolve("digits", "ConvNet").epochs == 300
    assert get_method("cafe").eval_plan(real).resolve("digits", "ConvNet").epochs == 600


def test_reference_step_schedule_is_the_reference_loop():
    sched = epoch_schedule("reference_step", 10, 0.01)
    assert len(sched) == 11 and [new for _, new in sched] == [ep in (0, 7) for ep in range(11)]
    assert [lr for lr, _ in sched] == list(lr for _, lr, _ in ev.lr_schedule(10, 0.01))
    cos = epoch_schedule("cosine", 3, 0.1)
    assert cos[0] == (0.1, True) and [n for _, n in cos[1:]] == [False] * 3 and cos[2][0] == pytest.approx(0.05)
    assert epoch_schedule("constant", 2, 0.3) == [(0.3, True), (0.3, False), (0.3, False)]


# -- overrides --------------------------------------------------------------------------------


def test_plan_problems_lists_every_problem_at_once():
    problems = plan_problems({"foo": 1, "lr": "fast", "optimizer": "rmsprop"})
    assert len(problems) == 3
    assert problems[0].startswith("unknown eval plan key 'foo'; valid keys: ") and "val_fraction" in problems[0]
    assert "'lr' must be a number" in problems[1] and "'optimizer' must be" in problems[2]
    values = plan_problems({"lr": -1, "val_fraction": 1.5, "augmentation": "dsa:spin+cutmix", "batch_size": 0})
    assert any("lr must be a positive number" in p for p in values)
    assert any("val_fraction must be in (0, 1)" in p for p in values)
    assert any("unknown DSA strategy token(s) 'spin'" in p for p in values)
    assert any("unknown augmentation 'cutmix'" in p for p in values)
    assert any("batch_size must be a positive integer" in p for p in values)
    assert plan_problems({"loss": "kl"}) == ["loss 'kl' trains on soft labels; with labels=hard use loss=ce"]
    assert plan_problems({"lr": 1, "epochs": 5, "augmentation": "dc:crop_noise+dsa:color"}) == []
    assert plan_problems("lr=1")[0].startswith("evaluation plan overrides must be a mapping")


def test_apply_overrides_coerces_validates_and_switches_the_loss_with_the_labels():
    plan = apply_overrides(EvalPlan(), {"lr": 1, "labels": "soft"})
    assert plan.lr == 1.0 and isinstance(plan.lr, float) and plan.loss == "soft_ce"
    assert apply_overrides(plan, {"labels": "hard"}).loss == "ce"
    assert apply_overrides(EvalPlan(), {"labels": "soft", "loss": "kl"}).loss == "kl"
    assert apply_overrides(EvalPlan(), {}) == EvalPlan() and apply_overrides(EvalPlan(), None) == EvalPlan()
    with pytest.raises(MethodError, match="unknown eval plan key 'momentun'"):
        apply_overrides(EvalPlan(), {"momentun": 0.5})


def test_to_dict_has_every_field_and_round_trips():
    plan = EvalPlan(labels="soft", loss="kl", temperature=4.0, optimizer="adam", zca=True, selection="best_val")
    d = plan.to_dict()
    assert list(d) == plan_keys() and EvalPlan.from_dict(d) == plan
    with pytest.raises(MethodError, match="invalid evaluation plan: unknown eval plan key 'novel'"):
        EvalPlan.from_dict({**d, "novel": 1})


def test_explicit_epochs_win_and_negative_epochs_are_refused():
    ds = _dataset()
    syn = _synset(ds, 1)
    assert effective_plan(syn, ARCH, ds.name, epochs=3, plan_overrides={"epochs": 9}).epochs == 3
    assert effective_plan(syn, ARCH, ds.name, plan_overrides={"epochs": 9}).epochs == 9
    with pytest.raises(EvaluationError, match="epochs must be >= 0"):
        effective_plan(syn, ARCH, ds.name, plan_overrides={"epochs": -2})


# -- soft labels and their losses -------------------------------------------------------------


def test_soft_losses():
    out = torch.randn(5, 3)
    sharp = 50.0 * F.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3).float()
    assert soft_cross_entropy(out, sharp) == pytest.approx(float(F.cross_entropy(out, sharp.argmax(1))), rel=1e-5)
    assert float(kl_divergence(out, out)) == pytest.approx(0.0, abs=1e-6)
    t = 4.0
    p, log_q = F.softmax(sharp / t, 1), F.log_softmax(out / t, 1)
    expected = t * t * float((p * (p.clamp_min(1e-30).log() - log_q)).sum(1).mean())
    assert float(kl_divergence(out, sharp, t)) == pytest.approx(expected, rel=1e-4)
    assert make_loss("ce") is None
    assert float(make_loss("soft_ce", 2.0)(out, sharp)) == pytest.approx(float(soft_cross_entropy(out, sharp, 2.0)))


def _mislabelled_set(ds: Dataset, ipc: int = 5) -> SyntheticSet:
    """Hard labels shifted to the wrong class, soft labels (logits) pointing at the right one."""
    syn = _synset(ds, ipc)
    truth = syn.labels
    return _synset(ds, ipc, EvalPlan(labels="soft", loss="soft_ce"), labels=(truth + 1) % ds.num_classes,
                   soft_labels=8.0 * F.one_hot(truth, ds.num_classes).float())


def test_soft_labels_reach_the_loss():
    ds = _dataset()
    syn = _mislabelled_set(ds)
    soft = evaluate_synset(syn, ds, ARCH, num_eval=2, epochs=20, seed=0)
    hard = evaluate_synset(syn, ds, ARCH, num_eval=2, epochs=20, seed=0, plan_overrides={"labels": "hard"})
    kl = evaluate_synset(syn, ds, ARCH, num_eval=1, epochs=20, seed=0, plan_overrides={"loss": "kl", "temperature": 2})
    assert soft.labels == "soft" and hard.labels == "hard" and soft.plan["loss"] == "soft_ce"
    assert soft.mean > 0.6 and kl.mean > 0.6  # chance is 0.25
    assert hard.mean < 0.25  # the wrong hard labels are learned


def test_soft_labels_are_required_when_the_plan_asks_for_them():
    ds = _dataset()
    with pytest.raises(EvaluationError, match=r"labels=soft\) but the set stores none"):
        evaluate_synset(_synset(ds, 1), ds, ARCH, num_eval=1, epochs=1, plan_overrides={"labels": "soft"})
    with pytest.raises(Exception, match=r"soft labels must have shape \(4, 4\)"):
        _synset(ds, 1, soft_labels=torch.zeros(4, 3))


# -- learned lr, optimisers -------------------------------------------------------------------


def _spy_optimizers(monkeypatch) -> list:
    created = []
    real = nw.make_optimizer

    def spy(name, params, lr, **kw):
        opt = real(name, params, lr, **kw)
        created.append((name, lr, opt))
        return opt

    monkeypatch.setattr(nw, "make_optimizer", spy)
    return created


def test_a_learned_lr_reaches_the_optimiser(monkeypatch):
    ds = _dataset()
    syn = _synset(ds, 1, EvalPlan(lr_source="learned"), learned_lr=0.0123)
    created = _spy_optimizers(monkeypatch)
    result = evaluate_synset(syn, ds, ARCH, num_eval=1, epochs=4, seed=0)  # drop after epoch 3
    assert [lr for _, lr, _ in created] == [0.0123, pytest.approx(0.00123)]
    assert result.plan["lr"] == 0.0123 and result.plan["lr_source"] == "learned"
    created.clear()
    evaluate_synset(syn, ds, ARCH, num_eval=1, epochs=2, seed=0, plan_overrides={"lr_source": "fixed"})
    assert [lr for _, lr, _ in created][0] == 0.01
    with pytest.raises(EvaluationError, match="lr_source=learned"):
        evaluate_synset(_synset(ds, 1), ds, ARCH, num_eval=1, epochs=1, plan_overrides={"lr_source": "learned"})


def test_adam_cosine_plan_runs_and_each_epoch_gets_its_lr(monkeypatch):
    ds = _dataset()
    created = _spy_optimizers(monkeypatch)
    seen = []
    real_epoch = nw.train_epoch

    def spy_epoch(net, images, labels, optimizer, **kw):
        seen.append(optimizer.param_groups[0]["lr"])
        return real_epoch(net, images, labels, optimizer, **kw)

    monkeypatch.setattr(nw, "train_epoch", spy_epoch)
    result = evaluate_synset(_synset(ds, 2), ds, ARCH, num_eval=1, epochs=3, seed=0,
                             plan_overrides={"optimizer": "adam", "schedule": "cosine", "lr": 0.001})
    assert [name for name, _, _ in created] == ["adam"] and isinstance(created[0][2], torch.optim.Adam)
    assert seen == pytest.approx([lr for lr, _ in epoch_schedule("cosine", 3, 0.001)])
    assert result.plan["optimizer"] == "adam" and 0 <= result.mean <= 1


def test_the_ensemble_trains_non_default_plans_sequentially():
    x, y = torch.randn(8, 1, 8, 8), torch.arange(4).repeat(2)
    nets = [get_network("MLP", 1, 4, (8, 8), seed=i) for i in range(2)]
    gens = [make_generator(i) for i in range(2)]
    sched = [(0.01, True)]
    assert train_ensemble(nets, gens, x, y, sched, mode="vectorized", optimizer="adam") == "sequential"
    soft = F.one_hot(y, 4).float()
    assert train_ensemble(nets, gens, x, soft, sched, mode="vectorized", loss_fn=make_loss("soft_ce")) == "sequential"
    assert train_ensemble(nets, gens, x, y, sched, mode="vectorized") == "vectorized"


# -- augmentation objects ---------------------------------------------------------------------


def test_augmentations_compose_and_resolve():
    plan = EvalPlan(augmentation="dc:crop_noise+dsa")
    augs = plan.augmentations("cifar10", "ConvNet")
    assert augs == (DCAugmentation("crop_noise"), DSAAugmentation("color_crop_cutout_flip_scale_rotate"))
    resolved = plan.resolve("cifar10", "ConvNet")
    assert resolved.augmentation == "dc:crop_noise+dsa:color_crop_cutout_flip_scale_rotate" and resolved.epochs == 1000
    built = nw.make_augment(augs)
    assert isinstance(built, nw.Compose) and [type(a).__name__ for a in built.augments] == ["DCAugment", "DSA"]
    x = torch.randn(3, 3, 8, 8)
    assert built(x, make_generator(0)).shape == x.shape
    assert EvalPlan(augmentation="none", dsa=True).resolve("mnist", "ConvNetBN").augmentation == "none"
    assert EvalPlan(augmentation="dc").resolve("cifar10", "ConvNet").augmentations == ()  # the rule: none here
    assert EvalPlan(dsa=True, dsa_strategy="crop").resolve("mnist", "ConvNetBN").augmentation == "dsa:crop"


# -- ZCA --------------------------------------------------------------------------------------


def test_zca_whitens_and_unwhitens_exactly():
    images = make_classdata(3, 40, 1, 6, seed=1).images
    zca = ZCA.fit(images, reg=1e-3)
    z = zca.whiten(images)
    assert z.shape == images.shape
    assert torch.allclose(zca.unwhiten(z), images, atol=1e-4)
    flat = z.reshape(len(z), -1).double()
    cov = torch.cov(flat.T)
    assert torch.allclose(flat.mean(0), torch.zeros(flat.shape[1], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(cov, torch.eye(cov.shape[0], dtype=torch.float64), atol=0.05)  # nearly white (reg small)
    assert ZCA.from_dict(zca.to_dict()).whiten(images[:2]).equal(z[:2])
    with pytest.raises(ValueError, match="fitted on images of shape"):
        zca.whiten(torch.zeros(2, 1, 5, 5))


def test_a_whitened_set_evaluates_on_whitened_test_images(monkeypatch):
    ds = _dataset()
    zca = ZCA.fit(ds.train.images)
    base = _synset(ds, 5)
    syn = _synset(ds, 5, EvalPlan(zca=True), images=zca.whiten(base.images), zca=zca)
    tested = []
    real = nw.test_accuracy

    def spy(net, images, labels, **kw):
        tested.append(images)
        return real(net, images, labels, **kw)

    monkeypatch.setattr(nw, "test_accuracy", spy)
    result = evaluate_synset(syn, ds, ARCH, num_eval=2, epochs=5, seed=0)
    assert len(tested) == 2 and all(torch.equal(t, zca.whiten(ds.test_images)) for t in tested)
    assert result.plan["zca"] is True
    # the same as evaluating the whitened images, without ZCA, against pre-whitened test data
    whitened_ds = dataclasses.replace(ds, test_images=zca.whiten(ds.test_images))
    plain = _synset(ds, 5, images=syn.images)
    assert evaluate_synset(plain, whitened_ds, ARCH, num_eval=2, epochs=5, seed=0).accuracies == result.accuracies
    assert evaluate_synset(plain, ds, ARCH, num_eval=2, epochs=5, seed=0).accuracies != result.accuracies
    with pytest.raises(EvaluationError, match="stores no ZCA"):
        evaluate_synset(base, ds, ARCH, num_eval=1, epochs=1, plan_overrides={"zca": True})


# -- best-validation selection ----------------------------------------------------------------


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = torch.arange(4).repeat_interleave(10)
    keep, val = validation_split(labels, 0.2, seed=0)
    assert set(keep.tolist()).isdisjoint(val.tolist()) and len(keep) + len(val) == 40
    assert torch.bincount(labels[val]).tolist() == [2, 2, 2, 2]
    assert torch.equal(validation_split(labels, 0.2, seed=0)[1], val)
    assert not torch.equal(validation_split(labels, 0.2, seed=1)[1], val)


def test_best_val_never_touches_the_test_set_and_tests_the_best_validation_epoch(monkeypatch):
    ds = _dataset()
    syn = _synset(ds, 3)
    scores = iter([0.2, 0.7, 0.4, 0.7, 0.1])  # best (earliest on ties): epoch 1
    snapshots, tested = [], []
    real = nw.test_accuracy

    def spy(net, images, labels, **kw):
        if images.data_ptr() == ds.test_images.data_ptr() or torch.equal(images, ds.test_images):
            tested.append([p.detach().clone() for p in net.parameters()])
            return real(net, images, labels, **kw)
        # validation images: all from the training set
        train_rows = ds.train.images.reshape(len(ds.train.images), -1)
        assert all((train_rows == row).all(1).any() for row in images.reshape(len(images), -1))
        snapshots.append([p.detach().clone() for p in net.parameters()])
        return next(scores)

    monkeypatch.setattr(nw, "test_accuracy", spy)
    result = evaluate_synset(syn, ds, ARCH, num_eval=1, epochs=4, seed=0, plan_overrides={"selection": "best_val"})
    assert len(snapshots) == 5 and len(tested) == 1  # validated every pass, tested once
    assert result.selected_epochs == [1] and result.plan["selection"] == "best_val"
    assert all(torch.equal(a, b) for a, b in zip(tested[0], snapshots[1]))
    assert not all(torch.equal(a, b) for a, b in zip(tested[0], snapshots[-1]))


def test_whole_dataset_best_val_trains_without_the_hold_out():
    ds = _dataset(num_classes=3, per_class=24)
    result = evaluate_whole_dataset(ds, "MLP", num_eval=1, epochs=3, seed=0,
                                    plan_overrides={"selection": "best_val", "val_fraction": 0.25})
    assert result.selected_epochs is not None and 0 <= result.selected_epochs[0] <= 3
    assert result.plan["epochs"] == 3


# -- the synthetic-set file -------------------------------------------------------------------


def test_format_2_stores_plan_soft_labels_lr_and_zca(tmp_path):
    ds = _dataset()
    zca = ZCA.fit(ds.train.images)
    syn = _synset(ds, 1, EvalPlan(labels="soft", loss="kl", temperature=3.0, lr_source="learned", zca=True),
                  soft_labels=torch.randn(4, 4), learned_lr=0.02, zca=zca)
    raw = torch.load(syn.save(tmp_path / "s.pt"), weights_only=True)
    assert raw["format_version"] == 2 and raw["eval_plan"] == syn.eval_plan.to_dict()
    back = SyntheticSet.load(tmp_path / "s.pt")
    assert back.eval_plan == syn.eval_plan and back.learned_lr == 0.02
    assert torch.equal(back.soft_labels, syn.soft_labels) and torch.equal(back.zca.eigenvectors, zca.eigenvectors)
    raw["eval_plan"]["optimiser"] = "sgd"
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(SyntheticSetFormatError, match="corrupt synthetic set: invalid evaluation plan: unknown eval plan key 'optimiser'"):
        SyntheticSet.load(tmp_path / "bad.pt")


def test_format_1_files_load_and_evaluate_identically(tmp_path):
    ds = _dataset()
    syn = _synset(ds, 2, EvalPlan(epochs_no_aug=6))
    v1 = {k: v for k, v in syn.to_dict().items() if k not in ("eval_plan", "soft_labels", "learned_lr", "zca")}
    v1.update(format_version=1, eval_defaults={"dsa": False, "dsa_strategy": None, "epochs_no_aug": 6})
    torch.save(v1, tmp_path / "v1.pt")
    old = SyntheticSet.load(tmp_path / "v1.pt")
    assert old.eval_plan == EvalPlan(epochs_no_aug=6) and old.soft_labels is None and old.learned_lr is None
    a = evaluate_synset(old, ds, ARCH, num_eval=2, seed=1)
    b = evaluate_synset(SyntheticSet.load(old.save(tmp_path / "v2.pt")), ds, ARCH, num_eval=2, seed=1)
    assert a.epochs == 6 and a.accuracies == b.accuracies
    dsa_v1 = dict(v1, eval_defaults={"dsa": True, "epochs_no_aug": 300})
    torch.save(dsa_v1, tmp_path / "dsa_v1.pt")
    plan = effective_plan(SyntheticSet.load(tmp_path / "dsa_v1.pt"), "ConvNet", "cifar10")
    assert (plan.epochs, plan.augmentation) == (1000, "dsa:color_crop_cutout_flip_scale_rotate")


def test_method_synset_switches_the_plan_to_what_it_stores():
    real = make_classdata(2, 4, 1, 8, name="digits")
    method = get_method("random")
    images, labels = real.images[:2], real.labels[:2]
    plain = method._synset(real, 1, 0, images, labels, {})
    assert plain.eval_plan == method.eval_plan(real)
    rich = method._synset(real, 1, 0, images, labels, {}, soft_labels=torch.zeros(2, 2), learned_lr=0.05)
    assert (rich.eval_plan.labels, rich.eval_plan.loss, rich.eval_plan.lr_source) == ("soft", "soft_ce", "learned")
    assert rich.learned_lr == 0.05 and rich.soft_labels.shape == (2, 2)


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def digits_set(tmp_path):
    path = tmp_path / "r.pt"
    assert main(["condense", "--method", "random", "--dataset", "digits", "--ipc", "1", "--out", str(path),
                 "--device", "cpu"]) == 0
    return path


def test_explain_prints_the_effective_plan_per_architecture_without_training(digits_set, capsys, monkeypatch):
    monkeypatch.setattr(ev, "train_networks", lambda *a, **k: pytest.fail("--explain must not train"))
    capsys.readouterr()
    code = main(["evaluate", str(digits_set), "--arch", "ConvNet,ConvNetBN", "--eval-set", "optimizer=adam",
                 "--explain", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert "overrides: optimizer=adam" in lines[0]
    assert lines[1].split() == ["field", "ConvNet", "ConvNetBN"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert set(rows) == set(plan_keys())
    assert rows["optimizer"] == ["adam", "adam"] and rows["epochs"] == ["300", "1000"]
    assert rows["augmentation"] == ["none", "dc:crop_noise"] and rows["dsa_strategy"] == ["-", "-"]
    assert not (digits_set.with_suffix(".eval.json")).exists()


@pytest.mark.parametrize("items,message", [
    (["foo=1"], "--eval-set: unknown eval plan key 'foo'; valid keys: labels, loss,"),
    (["lr"], "--eval-set expects KEY=VALUE, got 'lr'"),
    (["labels=soft"], "the plan trains on soft labels (labels=soft) but the set stores none"),
])
def test_bad_eval_set_exits_2_with_one_line(digits_set, capsys, items, message):
    argv = ["evaluate", str(digits_set), "--device", "cpu"]
    for item in items:
        argv += ["--eval-set", item]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_eval_set_reaches_the_evaluation_and_the_record(digits_set, capsys, tmp_path):
    import json

    out = tmp_path / "rec.json"
    assert main(["evaluate", str(digits_set), "--num-eval", "1", "--eval-set", "epochs=1", "--eval-set",
                 "schedule=constant", "--json", str(out), "--device", "cpu"]) == 0
    record = json.loads(out.read_text())
    assert record["plan_overrides"] == {"epochs": 1, "schedule": "constant"}
    assert record["results"][0]["plan"]["schedule"] == "constant" and record["results"][0]["epochs"] == 1
    assert record["eval_plan"]["schedule"] == "reference_step"  # the set's own plan is unchanged


def test_whole_explain_shows_the_baseline_plan_with_overrides(capsys, monkeypatch):
    monkeypatch.setattr(ev, "train_networks", lambda *a, **k: pytest.fail("--explain must not train"))
    assert main(["whole", "--dataset", "mnist", "--arch", "ConvNet", "--explain", "--eval-set", "selection=best_val",
                 "--device", "cpu"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows["selection"] == ["best_val"] and rows["epochs"] == ["20"]
    assert rows["augmentation"] == ["dc:crop_scale_rotate"]


def test_a_plan_built_in_code_is_validated_before_training():
    ds = _dataset()
    with pytest.raises(EvaluationError, match="invalid evaluation plan: lr must be a positive number, got 0.0"):
        evaluate_synset(_synset(ds, 1, EvalPlan(lr=0.0)), ds, ARCH, num_eval=1, epochs=1)
    with pytest.raises(EvaluationError, match="epochs must be >= 0, got -1"):
        evaluate_whole_dataset(ds, "MLP", num_eval=1, epochs=-1)
