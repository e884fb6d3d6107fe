"""CBD's mechanism where the answer is known: the weights, and a backdoored model that fits some samples
making f_C's loss ignore them."""

import pytest
import torch
from torch import nn

from eigenguard.defenses import create_defense
from eigenguard.defenses.cbd import CBD, cbd_weights, weighted_loss
from eigenguard.errors import EigenguardError
from tests.test_defenses import tiny_context, tiny_dataset


def test_weights_follow_the_formula_and_sum_to_the_batch_size() -> None:
    loss_b = torch.tensor([0.0, 1.0, 2.0, 1.0])
    loss_c = torch.tensor([1.0, 1.0, 2.0, 3.0])
    raw = loss_b / (loss_b + loss_c + 1e-8)
    w = cbd_weights(loss_b, loss_c)
    assert torch.allclose(w, raw * 4 / raw.sum())
    assert w.sum().item() == pytest.approx(4.0) and w[0] == 0  # a sample f_B fits exactly counts for nothing


def test_samples_the_backdoored_model_fits_get_no_gradient() -> None:
    class Knows(nn.Module):  # f_B: certain of the given label on the first two samples, unsure elsewhere
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(len(x), 3)
            logits[:2, 0] = 50.0
            return logits

    labels = torch.tensor([0, 0, 1, 2])
    logits = torch.randn(4, 3, requires_grad=True)
    weighted_loss(Knows())(logits, labels, torch.zeros(4, 1, 2, 2)).backward()
    assert logits.grad is not None
    assert logits.grad[:2].abs().max() < 1e-12 and logits.grad[2:].abs().sum() > 0


def test_cbd_trains_two_models_and_reports_its_weights() -> None:
    ctx = tiny_context(tiny_dataset(64), tiny_dataset(32, seed=1), poisoned=torch.tensor([0, 5, 9]))
    _, report = CBD(backdoor_epochs=1).run(ctx)
    assert [row["phase"] for row in ctx.trainer.history] == ["backdoor", "train"]
    assert 0 <= report["weight_auroc"] <= 1 and report["weight_mean_clean"] > 0


def test_cbd_options_are_checked() -> None:
    for bad in ({"backdoor_epochs": 0}, {"backdoor_lr": 0.0}, {"backdoor_lr": float("nan")}):
        with pytest.raises(EigenguardError, match=f"option {next(iter(bad))} = .* for defense 'cbd'; allowed: "):
            create_defense("cbd", **bad)
