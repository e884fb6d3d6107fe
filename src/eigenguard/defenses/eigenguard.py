"""EigenGuard as a defense: the guard inserted into a fresh model, trained with the config's recipe.

The guard's own choices (insertion point, k, momentum, history start, backward mode, precision, the
filter's spectrum and floor, batch or per-sample training) and how the anchors are picked are this
defense's options (`--set defense.k=40`), declared once in training/guarded.py (GuardedTraining, which
trains the model and describes the anchors); guard/module.py documents the guard's choices.
"""

from typing import Any

from torch import nn

from eigenguard.config import TrainConfig
from eigenguard.defenses.base import Defense, DefenseContext, check_insertion_point
from eigenguard.errors import EigenguardError
from eigenguard.options import component
from eigenguard.training.guarded import GuardedTraining


@component
class EigenGuardDefense(GuardedTraining, Defense):  # GuardedTraining's rebuild, Defense's role
    """The paper's method: train with the guard at `at`. Its options are GuardedTraining's (the guard's, the
    paper's values as defaults, and how the anchors are chosen); guard/module.py documents the guard's
    choices, training/guarded.py the anchors'."""

    name = "eigenguard"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.needs_clean_pool = self.anchors == "clean"

    def check(self, config: TrainConfig, insertion_points: tuple[str, ...]) -> None:
        check_insertion_point(self.at, insertion_points, config.model)
        # sigma_k is clamped to the matrix's rank, so a k past its row count means the same as that count
        rows = 2 * config.batch_size + (0 if self.anchors == "none" else self.anchor_count)
        k = self.guard.k
        if k > rows:
            raise EigenguardError(
                f"invalid defense option k = {k}: the guard's matrix [His; batch; anchors] has 2 x batch_size"
                f" + anchor_count = {rows} rows; allowed: 1..{rows}"
            )

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = self.train_guarded(
            ctx.trainer, ctx.train_set, ctx.config.epochs, clean_pool=ctx.clean_pool, poisoned=ctx.poison_indices
        )
        return model, {}
