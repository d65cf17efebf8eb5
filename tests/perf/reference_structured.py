"""Reference-STRUCTURED oracles for timing: the same computation as the methods, organised the
way the released code organises it, so the perf suite can report "ours vs the reference's
structure" as a ratio measured in one process.

What each oracle keeps from the reference (notes §1.4, §1.5, §2.6, §2.9, §2.10):

* DC/DSA image step (``main.py``): per class, one real forward/backward (detached gradient)
  and one synthetic forward/backward with ``create_graph=True``; the losses of all classes are
  summed and ONE ``loss.backward()`` runs at the end (every class's double-backward graph alive
  at once, gradients also accumulated into the network's parameters, as ``loss.backward()``
  does there). DSA: one siamese draw per class shared by its real and synthetic batch.
* CAFE image step (``distill.py``): the class-major real batch (C x N images) is forwarded in
  one pass WITH autograd, the real-image cross-entropy term is included, and ``loss.backward()``
  back-propagates through the whole real graph into the network weights and the images.
* DM image step (``main_DM.py``): per class, a real embedding (no graph: the network's
  parameters are frozen) and a synthetic embedding; the summed loss, one ``backward``.
* Inner-loop epoch / evaluation training (``utils.py:epoch``): a ``TensorDataset`` +
  ``DataLoader`` (batch 256, shuffle) built per epoch, ``.to(device)`` per batch, the accuracy
  through numpy as the reference logs it.
* Test pass (``epoch('test', ...)``): a ``DataLoader`` over the test set with a per-sample
  normalisation (the reference's ``transforms.Normalize`` in its dataset), batch 256, fp32
  NCHW, eval mode, and no ``torch.no_grad()`` (the reference builds the graph there too).

The loss formulas come from ``tests/oracles.py`` (DC) and ``tests/oracles_fa.py`` (DM); CAFE's
single-pass real branch is written here because the test oracle forwards per class. Every
random draw comes from a seeded CPU generator (the DataLoader's shuffling too).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from methods.realdata import ClassData
from tests.oracles import dc_oracle_loss
from tests.oracles_fa import dm_oracle_loss

Augment = Callable[[Tensor, torch.Generator], Tensor]


# --------------------------------------------------------------------------------------------
# Image steps
# --------------------------------------------------------------------------------------------


def dc_step_reference(
    net: nn.Module,
    real: ClassData,
    image_syn: Tensor,
    optimizer_img: torch.optim.Optimizer,
    ipc: int,
    batch_real: int,
    generator: torch.Generator,
    dsa=None,
    distance: str = "layerwise",
) -> float:
    """One DC/DSA image step as ``main.py`` structures it (see the module docstring)."""
    reals, syns = [], []
    for c in range(real.num_classes):
        img_real = real.sample(c, batch_real, generator)
        img_syn = image_syn[c * ipc : (c + 1) * ipc]
        if dsa is not None:
            img_real, img_syn = dsa.siamese([img_real, img_syn], generator)
        reals.append(img_real)
        syns.append(img_syn)
    loss = dc_oracle_loss(net, reals, syns, list(range(real.num_classes)), distance)
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()
    return float(loss.item())


def cafe_step_reference(
    net: nn.Module,
    real: ClassData,
    image_syn: Tensor,
    optimizer_img: torch.optim.Optimizer,
    ipc: int,
    batch_real: int,
    generator: torch.Generator,
    layer_weights: Sequence[tuple[int, float]],
    embedding_weight: float = 1.0,
    discrimination_weight: float = 0.01,
    dsa=None,
) -> float:
    """One CAFE image step as ``distill.py`` structures it: one autograd forward of the whole
    class-major real batch, the real CE term, ``loss.backward()`` into weights and images."""
    C = real.num_classes
    reals, syns = [], []
    for c in range(C):
        img_real = real.sample(c, batch_real, generator)
        img_syn = image_syn[c * ipc : (c + 1) * ipc]
        if dsa is not None:
            img_real, img_syn = dsa.siamese([img_real, img_syn], generator)
        reals.append(img_real)
        syns.append(img_syn)
    img_real, img_syn = torch.cat(reals), torch.cat(syns)
    lab_real = torch.arange(C, device=img_real.device).repeat_interleave(batch_real)
    feats_real = net.feature_maps(img_real)  # WITH autograd, as released
    feats_syn = net.feature_maps(img_syn)

    def criterion_middle(a: Tensor, b: Tensor) -> Tensor:  # MSELoss(sum) of class means
        a = a.reshape(C, a.shape[0] // C, *a.shape[1:]).mean(1)
        b = b.reshape(C, b.shape[0] // C, *b.shape[1:]).mean(1)
        return F.mse_loss(a, b, reduction="sum")

    loss = img_real.new_zeros(())
    for i, w in layer_weights:
        loss = loss + w * criterion_middle(feats_real[i], feats_syn[i])
    emb_real, emb_syn = feats_real[-1].flatten(1), feats_syn[-1].flatten(1)
    output_real = net.classifier(emb_real)
    loss = loss + F.cross_entropy(output_real, lab_real)  # no effect on the images
    loss = loss + embedding_weight * criterion_middle(emb_real, emb_syn)
    centres = emb_syn.reshape(C, ipc, -1).mean(1)
    logits = torch.mm(emb_real, centres.t())
    loss = loss + discrimination_weight * F.cross_entropy(logits, lab_real, reduction="sum")
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()
    return float(loss.item())


def dm_step_reference(
    net: nn.Module,
    real: ClassData,
    image_syn: Tensor,
    optimizer_img: torch.optim.Optimizer,
    ipc: int,
    batch_real: int,
    generator: torch.Generator,
    dsa=None,
) -> float:
    """One DM image step as ``main_DM.py`` structures it (per-class embeddings, frozen net)."""
    reals, syns = [], []
    for c in range(real.num_classes):
        img_real = real.sample(c, batch_real, generator)
        img_syn = image_syn[c * ipc : (c + 1) * ipc]
        if dsa is not None:
            img_real, img_syn = dsa.siamese([img_real, img_syn], generator)
        reals.append(img_real)
        syns.append(img_syn)
    loss = dm_oracle_loss(net, reals, syns)
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()
    return float(loss.item())


# --------------------------------------------------------------------------------------------
# Training epochs and the test pass
# --------------------------------------------------------------------------------------------


def train_epoch_reference(
    net: nn.Module,
    images: Tensor,
    labels: Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    batch_size: int = 256,
    augment: Optional[Augment] = None,
) -> tuple[float, float]:
    """One ``epoch('train', ...)``: a DataLoader built for this epoch (as the reference builds
    it per inner loop / evaluation), per-batch ``.to(device)``, numpy accuracy."""
    device = images.device
    loader = DataLoader(
        TensorDataset(images.detach().cpu().clone(), labels.detach().cpu().clone()),
        batch_size=batch_size, shuffle=True, num_workers=0, generator=generator,
    )
    net.train()
    loss_avg, acc_avg, num = 0.0, 0.0, 0
    for img, lab in loader:
        img, lab = img.float().to(device), lab.long().to(device)
        if augment is not None:
            img = augment(img, generator)
        output = net(img)
        loss = F.cross_entropy(output, lab)
        acc = np.sum(np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy()))
        loss_avg += loss.item() * lab.shape[0]
        acc_avg += acc
        num += lab.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss_avg / num, acc_avg / num


class NormalizedTestSet(Dataset):
    """Raw images normalised per sample on access (the reference's ``transforms.Normalize``)."""

    def __init__(self, raw: Tensor, labels: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        self.raw, self.labels = raw, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return self.raw.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return (self.raw[i] - self.mean) / self.std, self.labels[i]


def reference_test_pass(net: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 256) -> float:
    """``epoch('test', ...)``: eval mode, fp32 NCHW, autograd left on, numpy accuracy."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    net.eval()
    correct, num = 0, 0
    for img, lab in loader:
        img, lab = img.float().to(device), lab.long().to(device)
        output = net(img)
        loss = F.cross_entropy(output, lab)
        loss.item()
        correct += int(np.sum(np.equal(np.argmax(output.cpu().data.numpy(), axis=-1), lab.cpu().data.numpy())))
        num += lab.shape[0]
    return correct / max(1, num)


def evaluate_reference(
    make_net: Callable[[torch.Generator], nn.Module],
    generators: Sequence[torch.Generator],
    images: Tensor,
    labels: Tensor,
    test_set: Dataset,
    epochs: int,
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    augment: Optional[Augment] = None,
) -> list[float]:
    """``evaluate_synset`` per network: E+1 epochs (a DataLoader per epoch), lr x0.1 and a new
    optimiser after epoch E//2+1, then the reference test pass. Returns the accuracies."""
    accs = []
    for g in generators:
        net = make_net(g)
        lr_now = lr
        optimizer = torch.optim.SGD(net.parameters(), lr=lr_now, momentum=momentum, weight_decay=weight_decay)
        drop = epochs // 2 + 1
        for ep in range(epochs + 1):
            train_epoch_reference(net, images, labels, optimizer, g, augment=augment)
            if ep == drop:
                lr_now *= 0.1
                optimizer = torch.optim.SGD(net.parameters(), lr=lr_now, momentum=momentum, weight_decay=weight_decay)
        accs.append(reference_test_pass(net, test_set, images.device))
    return accs
