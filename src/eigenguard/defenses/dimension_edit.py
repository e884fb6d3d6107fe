"""`--defense dimension-edit`: train with Figure 1's dimension edit at the insertion point (an analysis).

Not a defense the paper proposes: the experiment of its Section 3.2, which motivates EigenGuard. The model
trains from scratch with `guard.dimension_edit.DimensionEdit(mode, r)` at insertion point `at` (default
stage1), the edit active at training and test time. `eigenguard analyze dims` sweeps r for both modes.
Options: mode (reduce | add), r (directions removed or lifted; 0 = plain training), at.
"""

from typing import Any, ClassVar

from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.defenses.base import Defense, DefenseContext, check_insertion_point
from eigenguard.guard.dimension_edit import DimensionEdit
from eigenguard.models import Backbone
from eigenguard.registry import Ranges


class DimensionEditTraining(Defense):
    name = "dimension-edit"
    RANGES: ClassVar[Ranges] = {"r": (0, None)}

    def __init__(self, mode: str = "reduce", r: int = 0, at: str = "stage1") -> None:
        DimensionEdit(mode, r)  # validates both, with the module's own one-line errors
        self.mode, self.r, self.at = mode, int(r), at

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
