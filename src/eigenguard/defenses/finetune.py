"""FT: fine-tune the backdoored model on the defender's clean images (500 in the paper, 1% of CIFAR-10).

Defaults: 10 epochs, batch 64, SGD lr 0.01 (momentum and weight decay of the config), cosine to zero,
crop and flip as in training. The paper gives no FT recipe; NAD (Li et al. 2021a) fine-tunes its teacher
the same way, "5-10 epochs" on the clean subset with batch 64, and BackdoorBench's FT uses lr 0.01 with
cosine decay. Fine-Pruning and NAD's teacher reuse `fine_tune`.
"""

from typing import Any

from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.options import component, option


def fine_tune(
    model: nn.Module, ctx: DefenseContext, *, epochs: int, lr: float, batch_size: int, phase: str = "finetune"
) -> None:
    """Fine-tune `model` in place on the clean pool with a cosine schedule and no warm-up."""
    if epochs:
        ctx.trainer.fit(
            model,
            ctx.clean_pool,
            epochs=epochs,
            phase=phase,
            lr=lr,
            schedule="cosine",
            warmup_epochs=0.0,
            batch_size=min(batch_size, len(ctx.clean_pool)),
        )


@component
class FineTuning(Defense):
    name = "ft"
    needs_clean_pool = True
    needs_backdoored = True
    final_evaluation = True

    epochs: int = option(10, "epochs on the clean images", ">= 1")
    lr: float = option(0.01, "SGD peak lr (cosine to zero)", "> 0")
    batch_size: int = option(64, "clean images per step", ">= 1")

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.backdoored()
        fine_tune(model, ctx, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        return model, {}
