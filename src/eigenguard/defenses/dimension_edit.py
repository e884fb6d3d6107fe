"""`--defense dimension-edit`: train with Figure 1's dimension edit at the insertion point (an analysis).

Not a defense the paper proposes: the experiment of its Section 3.2, which motivates EigenGuard. The model
trains from scratch with `analysis.dimension_edit.DimensionEdit(mode, r)` at `--guard-at` (default
stage1), the edit active at training and test time. `eigenguard analyze dims` sweeps r for both modes.
Options: mode (reduce | add), r (directions removed or lifted; 0 = plain training).
"""

from typing import Any

from torch import nn

from eigenguard.analysis.dimension_edit import DimensionEdit
from eigenguard.config import TrainConfig
from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.models import Backbone


class DimensionEditTraining(Defense):
    name = "dimension-edit"

    def __init__(self, mode: str = "reduce", r: int = 0) -> None:
        DimensionEdit(mode, r)  # validates both, with the module's own one-line errors
        self.mode, self.r = mode, int(r)

    def rebuild(self, model: nn.Module, config: TrainConfig) -> None:
        assert isinstance(model, Backbone)
        model.insert(config.guard_at, DimensionEdit(self.mode, self.r))

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.trainer.new_model()
        self.rebuild(model, ctx.config)
        ctx.trainer.fit(model, ctx.train_set, epochs=ctx.config.epochs)
        return model, {}
