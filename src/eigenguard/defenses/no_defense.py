"""No defense: train on the poisoned data with the config's recipe. The baseline every table starts from."""

from typing import Any

from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext


class NoDefense(Defense):
    name = "none"

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.trainer.new_model()
        ctx.trainer.fit(model, ctx.train_set, epochs=ctx.config.epochs)
        return model, {}
