"""CLP, Channel Lipschitzness-based Pruning (Zheng, Tang, Li & Liu, ECCV 2022): data-free, post-training.

A backdoor channel reacts strongly to a small trigger: its output is large for a small change of its
input, i.e. it has a large Lipschitz constant. CLP bounds each channel's constant from the weights alone
and prunes the outliers of every layer, with no data and no fine-tuning.

For a convolution followed by a BatchNorm, channel k computes gamma_k / sigma_k * (W_k * x) + const, so
its upper bound (UCLC) is |gamma_k / sigma_k| times the spectral norm of W_k, the kernel of shape
(C_in, kh, kw) taken as a C_in x (kh kw) matrix; sigma_k = sqrt(running_var_k), without BatchNorm's eps,
as the official code (rkteddy/channel-Lipschitzness-based-pruning, defense.py). Per layer, every channel
whose UCLC exceeds mean + u * std of that layer's UCLCs (the unbiased std) is pruned: its BatchNorm weight
and bias are set to 0, so the channel outputs the constant 0. Default u = 3, the paper's and the official
code's value; it is fixed beforehand, not tuned on test data (BackdoorBench sweeps u in [0, 10] for its
plots and returns u = 3).

Our choice: the official code pairs each BatchNorm with the convolution registered just before it in
module order, which its authors say breaks on other architectures. Here the pairs come from the traced
graph (torch.fx): a BatchNorm2d is paired with a Conv2d only when the convolution's output is its input.
Layers without such a pair (a BatchNorm after an addition, linear layers) are left alone.
"""

from typing import Any

import torch
import torch.fx
from torch import nn

from eigenguard.defenses.base import Defense, DefenseContext
from eigenguard.errors import EigenguardError
from eigenguard.options import component, option


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """(BatchNorm name, convolution, BatchNorm) for every BatchNorm2d whose input is a Conv2d's output."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # a model with data-dependent control flow
        raise EigenguardError(f"clp cannot trace {type(model).__name__} to pair its convolutions: {e}") from None
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.op == "call_module":
            conv = modules[source.target]
            if isinstance(conv, nn.Conv2d) and len(source.users) == 1:
                pairs.append((str(node.target), conv, modules[node.target]))
    return pairs


def channel_lipschitz(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The UCLC of each output channel: |gamma / sqrt(running_var)| times its kernel's spectral norm."""
    assert bn.running_var is not None
    kernels = conv.weight.detach().float().flatten(2)  # (C_out, C_in / groups, kh kw)
    scale = (bn.weight.detach().float() / bn.running_var.float().sqrt()).abs()
    return torch.linalg.matrix_norm(kernels, ord=2) * scale


@component
class CLP(Defense):
    name = "clp"
    needs_backdoored = True
    final_evaluation = True

    u: float = option(3.0, "a channel is pruned above mean + u * std of its layer's bounds", ">= 0")

    def prune(self, model: nn.Module) -> dict[str, int]:
        """Prune every layer's outlying channels in place; returns how many per BatchNorm layer."""
        pruned = {}
        with torch.no_grad():
            for name, conv, bn in conv_bn_pairs(model):
                scores = channel_lipschitz(conv, bn)
                off = scores > scores.mean() + self.u * scores.std()
                bn.weight[off] = 0
                bn.bias[off] = 0
                pruned[name] = int(off.sum())
        return pruned

    def run(self, ctx: DefenseContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.backdoored()
        pruned = self.prune(model)
        channels = sum(bn.num_features for _, _, bn in conv_bn_pairs(model))
        report = {"layers": len(pruned), "channels": channels, "pruned_channels": sum(pruned.values())}
        ctx.trainer.log({"phase": "clp", "epoch": 0, **report})
        return model, {**report, "pruned_per_layer": {k: v for k, v in pruned.items() if v}}
