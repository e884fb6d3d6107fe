"""ANP, Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021).

Backdoor neurons are the ones whose small perturbation flips the model most. ANP learns a mask m in
[0, 1] on every BatchNorm neuron (channel) so that the masked model stays accurate on clean data even
under an adversarial multiplicative perturbation of the neurons, then prunes the neurons whose mask is
small. For a BatchNorm layer with weight w and bias b, the masked, perturbed layer uses
    weight w * (m + delta),  bias b * (1 + xi),   delta, xi in [-epsilon, epsilon] per neuron,
and the clean masked layer w * m, b. Each iteration on a clean batch:
  1. delta, xi drawn uniformly from [-epsilon, epsilon] (a random start every batch, as the official code);
  2. `noise_steps` signed-gradient ascent steps of size epsilon / noise_steps on the cross-entropy,
     clipped back to [-epsilon, epsilon] (the paper's bound; the official code leaves them unclipped);
  3. one SGD step on the masks of  alpha * CE(clean masked) + (1 - alpha) * CE(perturbed masked),
     then the masks are clipped to [0, 1].
Defaults from the paper and the official code (csdongxian/ANP_backdoor): epsilon 0.4, alpha 0.2, one
noise step, 2000 iterations of batch 128 on the 500 clean images (crop and flip), mask SGD lr 0.2 with
momentum 0.9. The mask is optimised on a copy in train mode (batch statistics), as in the official code.

Pruning: every neuron whose mask is below `threshold` gets its BatchNorm weight set to 0 in the original
model (bias unchanged, as the official code). The threshold is fixed beforehand at the paper's 0.2: a
defender has no triggered test set to tune it on (BackdoorBench picks it with the test ASR; we do not).

The optimisation checkpoints as the run's phase "anp" (masks, their momentum, the random stream) every
`checkpoint_every` iterations, else every tenth of them; a resumed run continues it from there and ends
with the masks of an uninterrupted one.
"""

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.options import component, option


def batchnorms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.affine]


@component
class ANP(Defense):
    name = "anp"
    needs_clean_pool = True
    needs_backdoored = True
    final_evaluation = True

    epsilon: float = option(0.4, "bound of the neurons' adversarial perturbation", "[0, 1)")
    alpha: float = option(0.2, "weight of the clean masked loss against the perturbed one", "[0, 1]")
    iterations: int = option(2000, "mask optimisation steps", ">= 1")
    batch_size: int = option(128, "clean images per step", ">= 1")
    mask_lr: float = option(0.2, "SGD lr of the masks", "> 0")
    noise_steps: int = option(1, "ascent steps on the perturbation per iteration", ">= 0")
    threshold: float = option(0.2, "neurons whose mask ends below it are pruned", "[0, 1]")

    def optimise_masks(self, model: nn.Module, ctx: DefenseContext) -> dict[str, torch.Tensor]:
        """The learned mask of every BatchNorm layer (name -> (C,) tensor in [0, 1]); `model` is not changed."""
        work = copy.deepcopy(model)
        work.train()  # batch statistics, as the official code
        for p in work.parameters():
            p.requires_grad_(False)
        layers = batchnorms(work)
        device = ctx.trainer.device
        masks = {n: torch.ones(m.num_features, device=device, requires_grad=True) for n, m in layers}
        delta = {n: torch.zeros(m.num_features, device=device, requires_grad=True) for n, m in layers}
        xi = {n: torch.zeros(m.num_features, device=device, requires_grad=True) for n, m in layers}
        optimizer = torch.optim.SGD(masks.values(), lr=self.mask_lr, momentum=0.9)
        pool, t = ctx.clean_pool, ctx.trainer
        gen = t.generator
        start = t.resume_phase(self.name, {}, {"sgd": optimizer}, masks)  # resumed: after iteration `start`
        every = t.phase_every(self.iterations)

        def forward(x: torch.Tensor, perturbed: bool) -> torch.Tensor:
            overrides = {}
            for n, m in layers:
                scale = masks[n] + delta[n] if perturbed else masks[n]
                overrides[f"{n}.weight"] = m.weight * scale
                overrides[f"{n}.bias"] = m.bias * (1 + xi[n]) if perturbed else m.bias
            return functional_call(work, overrides, (x,))

        for step in range(start, self.iterations):
            idx = torch.randint(0, len(pool), (min(self.batch_size, len(pool)),), device=device, generator=gen)
            x = pool.images[idx]
            x, y = t.normalize(t.augment(x)), pool.labels[idx]
            if self.epsilon > 0:
                with torch.no_grad():
                    for n in delta:
                        delta[n].uniform_(-self.epsilon, self.epsilon, generator=gen)
                        xi[n].uniform_(-self.epsilon, self.epsilon, generator=gen)
                for _ in range(self.noise_steps):
                    loss = F.cross_entropy(forward(x, perturbed=True), y)
                    grads = torch.autograd.grad(loss, [*delta.values(), *xi.values()])
                    with torch.no_grad():
                        for v, g in zip([*delta.values(), *xi.values()], grads, strict=True):
                            v.add_(g.sign(), alpha=self.epsilon / self.noise_steps).clamp_(-self.epsilon, self.epsilon)
            loss = self.alpha * F.cross_entropy(forward(x, perturbed=False), y)
            if self.alpha < 1:
                loss = loss + (1 - self.alpha) * F.cross_entropy(forward(x, perturbed=self.epsilon > 0), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for m in masks.values():
                    m.clamp_(0, 1)
            if (step + 1) % every == 0 or step + 1 == self.iterations:
                t.save_phase(self.name, step + 1, self.iterations, {}, {"sgd": optimizer}, masks)
        return {n: m.detach() for n, m in masks.items()}

    @staticmethod
    def prune(model: nn.Module, masks: dict[str, torch.Tensor], threshold: float) -> int:
        """Zero the BatchNorm weight of every neuron whose mask is below `threshold`; returns how many."""
        pruned = 0
        with torch.no_grad():
            for name, m in batchnorms(model):
                off = masks[name] < threshold
                m.weight[off] = 0
                pruned += int(off.sum())
        return pruned

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.backdoored()
        masks = self.optimise_masks(model, ctx)
        pruned = self.prune(model, masks, self.threshold)
        values = torch.cat(list(masks.values()))
        report = {
            "neurons": len(values),
            "pruned_neurons": pruned,
            "mask_quantiles": [
                round(float(q), 4) for q in values.quantile(torch.tensor([0.0, 0.1, 0.5], device=values.device))
            ],
        }
        ctx.trainer.log(
            {"phase": "anp", "epoch": self.iterations, **{k: v for k, v in report.items() if k != "mask_quantiles"}}
        )
        return model, report
