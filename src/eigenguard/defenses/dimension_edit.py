"""`--defense dimension-edit`: train with Figure 1's dimension edit at the insertion point (an analysis).

Not a defense the paper proposes: the experiment of its Section 3.2, which motivates EigenGuard. The model
trains from scratch with `guard.dimension_edit.DimensionEdit(mode, r)` at insertion point `at` (default
stage1), the edit active at training and test time. `eigenguard analyze dims` sweeps r for both modes.
"""

from typing import Any

from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.defenses.base import Defense, DefenseContext, check_insertion_point
from eigenguard.guard.dimension_edit import DimensionEdit, Mode
from eigenguard.models import Backbone
from eigenguard.options import component, option


@component
class DimensionEditTraining(Defense):
    name = "dimension-edit"

    mode: Mode = option("reduce", "remove the top r directions, or lift r of them")
    r: int = option(0, "directions removed or lifted (0: plain training)", ">= 0")
    at: str = option("stage1", "insertion point of the edit")

    def check(self, config: TrainConfig, insertion_points: tuple[str, ...]) -> None:
        check_insertion_point(self.at, insertion_points, config.model)

    def rebuild(self, model: nn.Module) -> None:
        assert isinstance(model, Backbone)
        model.insert(self.at, DimensionEdit(self.mode, self.r))

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.trainer.new_model()
        self.rebuild(model)
        ctx.trainer.fit(model, ctx.train_set, epochs=ctx.config.epochs)
        return model, {}
