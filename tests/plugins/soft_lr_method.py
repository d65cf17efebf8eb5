"""A test-only learned method in one file: what the README's "adding a method" paragraph says.

``softlr`` pulls each class's synthetic images towards the mean of a random real batch (a tiny
distribution-matching step) and learns, with their own optimiser, per-image soft labels and the
learning rate the evaluator should train with. Nothing outside this file knows it: importing the
module registers it, the sweep validates and expands it from the registry, the worker records
the registry metadata, and the analysis renders its row from what was written. Its sets carry
soft labels and a learned lr, so their evaluation plan switches to ``labels=soft`` and
``lr_source=learned`` (see :meth:`methods.base.Method._synset`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.config import MethodConfig
from methods.loop import LoopRun, Synthesis
from methods.registry import register
from methods.synthesis import LearnedMethod, init_synthetic, real_batch


@dataclass(frozen=True)
class SoftLRConfig(MethodConfig):
    iterations: int = 4
    lr_img: float = 0.5
    lr_labels: float = 0.5
    batch_real: int = 8
    init: str = "real"


@register("softlr", display="SoftLR (test)", family="other", order=900,
          description="test-only: class-mean pull that also learns soft labels and its evaluation lr")
class SoftLR(LearnedMethod):
    config_class = SoftLRConfig
    generator_names = ("init", "data")

    def start(self, run: LoopRun) -> Synthesis:
        images, labels = init_synthetic(run.real, run.ipc, self.config.init, run.generators["init"], run.device)
        soft = (4.0 * F.one_hot(labels, run.num_classes).float()).requires_grad_(True)
        log_lr = torch.tensor(float(torch.log(torch.tensor(0.01))), requires_grad=True)
        return Synthesis(
            images=images, labels=labels,
            optimizer=torch.optim.SGD([images], lr=self.config.lr_img, momentum=0.5),
            tensors={"soft_labels": soft, "log_lr": log_lr},
            optimizers={"labels_lr": torch.optim.SGD([soft, log_lr], lr=self.config.lr_labels)},
        )

    def step(self, run: LoopRun, syn: Synthesis, iteration: int) -> torch.Tensor:
        c, ipc = run.num_classes, run.ipc
        target = real_batch(run.real, self.config.batch_real, run.generators["data"], run.device)
        target = target.reshape(c, -1, *target.shape[1:]).mean(1)
        soft, log_lr = syn.tensors["soft_labels"], syn.tensors["log_lr"]
        pull = (syn.images.reshape(c, ipc, *syn.images.shape[1:]) - target[:, None]).pow(2).mean()
        # keep the soft labels peaked on their class; pull the lr towards 0.02
        label_loss = F.cross_entropy(soft, syn.labels)
        lr_loss = (log_lr - float(torch.log(torch.tensor(0.02)))).pow(2)
        loss = pull + label_loss + lr_loss
        syn.optimizer.zero_grad()
        syn.optimizers["labels_lr"].zero_grad()
        loss.backward()
        syn.optimizer.step()
        syn.optimizers["labels_lr"].step()
        return loss.detach()

    def finish(self, run: LoopRun, syn: Synthesis, cost: dict[str, float]):
        return self._synset(run.real, run.ipc, run.seed, syn.images.detach(), syn.labels, cost,
                            soft_labels=syn.tensors["soft_labels"].detach(),
                            learned_lr=float(syn.tensors["log_lr"].detach().exp()))
