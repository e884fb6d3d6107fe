"""NAD, Neural Attention Distillation (Li et al., ICLR 2021a).

A teacher is the backdoored model fine-tuned on the clean images (FT); the student, the backdoored model
itself, is then trained on the same clean images to match the teacher's attention maps at three depths:
    loss = CE + sum_i beta_i * mean((A_s^i - A_t^i)^2),   A(f) = normalise_L2(mean_c |f_c|^p), p = 2.
Defaults from the paper and the official code (bboylyg/NAD): betas 500, 1000, 1000 at the outputs of the
last three stages (the three groups of its WRN-16-1; here the last three insertion points, e.g. stage2-4
of ResNet-18), p = 2, teacher fine-tuned 10 epochs, student trained 20 epochs, batch 64, lr 0.01 (the
official schedule is 0.1 for two epochs then 0.01; BackdoorBench uses 0.01 throughout, as here). The clean
set is the run's clean images (500 as in the EigenGuard paper; NAD used 5% of the training set).
"""

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.defenses.finetune import fine_tune
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option
from eigenguard.training.features import FeatureTap


def attention_map(features: torch.Tensor, power: float) -> torch.Tensor:
    """NAD's attention: channel mean of |f|^p, flattened and L2-normalised per sample."""
    return F.normalize(features.float().abs().pow(power).mean(dim=1).flatten(1), dim=1)


@component
class NAD(Defense):
    name = "nad"
    needs_clean_pool = True
    needs_backdoored = True
    final_evaluation = True

    teacher_epochs: int = option(10, "epochs of the teacher's fine-tuning", ">= 1")
    epochs: int = option(20, "epochs of the student's distillation", ">= 1")
    lr: float = option(0.01, "SGD lr of both", "> 0")
    batch_size: int = option(64, "clean images per step", ">= 1")
    betas: tuple[float, ...] = option(
        (500.0, 1000.0, 1000.0), "attention-loss weights at the last insertion points", ">= 0"
    )
    power: float = option(2.0, "p of the attention map mean_c |f_c|^p", "> 0")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.betas:
            raise EigenguardError("invalid option betas = [] for defense 'nad'; allowed: at least one weight")

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        student = ctx.backdoored()
        teacher = copy.deepcopy(student)
        fine_tune(teacher, ctx, epochs=self.teacher_epochs, lr=self.lr, batch_size=self.batch_size, phase="teacher")
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        points = list(student.insertion_points[-len(self.betas) :])
        s_tap = FeatureTap({p: student.points[p] for p in points})
        t_tap = FeatureTap({p: teacher.points[p] for p in points})

        def loss_fn(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher(inputs)
            loss = F.cross_entropy(logits, labels)
            for beta, p in zip(self.betas, points, strict=True):
                diff = attention_map(s_tap.outputs[p], self.power) - attention_map(t_tap.outputs[p], self.power)
                loss = loss + beta * diff.pow(2).mean()
            return loss

        try:
            ctx.trainer.fit(
                student,
                ctx.clean_pool,
                epochs=self.epochs,
                phase="distill",
                lr=self.lr,
                schedule="constant",
                warmup_epochs=0.0,
                batch_size=min(self.batch_size, len(ctx.clean_pool)),
                loss_fn=loss_fn,
            )
        finally:
            s_tap.remove()
            t_tap.remove()
        return student, {"points": points}
