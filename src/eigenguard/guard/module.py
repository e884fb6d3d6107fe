"""The EigenGuard module: an nn.Module that filters the spectrum of the features passing through it."""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from eigenguard.errors import EigenguardError
from eigenguard.guard.arrowhead import FrozenHistory
from eigenguard.guard.spectral_filter import (
    Grad,
    Solver,
    Spectrum,
    filter_each_against,
    filter_jointly,
    frozen_history,
)
from eigenguard.options import Configurable, option

INFERENCE_MODES = ("per-sample", "batch")
Precision = Literal["float32", "float64"]
PRECISIONS = {name: getattr(torch, name) for name in get_args(Precision)}  # the dtype of each name


@dataclass(frozen=True, eq=True)
class GuardOptions(Configurable):
    """What a guard does: one typed, frozen object, passed whole from the defense to the module. The
    defaults are the paper's; EigenGuard's docstring says why each choice exists."""

    role: ClassVar[str] = "guard"
    name: ClassVar[str] = "eigenguard"

    k: int = option(20, "top singular directions flattened to one scale", ">= 1")
    momentum: float = option(0.7, "momentum of the history buffer His", "[0, 1)")
    floor: float = option(1e-3, "the tail's scale, floor * sigma_k", "[0, 1]")
    history_init: Literal["first", "zeros"] = option("first", "His before step one: the first batch, or zeros")
    grad: Grad = option("constant", "backward through a constant filter, or through the eigendecomposition")
    precision: Precision = option("float32", "dtype of the Gram matrix and its eigh")
    spectrum: Spectrum = option("paper", "the filter: top k to sigma_k and the rest to the floor, or one half")
    training: Literal["batch", "per-sample"] = option(
        "batch", "filter a training batch jointly (the paper), or each image against His, as at inference"
    )
    solver: Solver = option("secular", "how per-sample inference solves each image's spectrum")


class EigenGuard(nn.Module):
    """Flatten the top-k feature spectrum of a batch (Algorithm 1 of the EigenGuard paper).

    Features X (B, C, H, W) are flattened to rows F (B x D). In training mode:
        His <- mu * His + (1 - mu) * F                       (a buffer, no gradient)
        [His; F] = U diag(s) V^T                              (2B x D)
        s'_i = s_k for i <= k,  s'_i = 0.001 * s_k for i > k  (top k share one scale, the rest nearly vanish)
        output = the F rows of U diag(s') V^T, reshaped to (B, C, H, W)
    computed through the 2B x 2B Gram matrix (see spectral_filter.py), never a 2B x D SVD.

    Open choices, each an argument (defaults in brackets):
      history_init ["first"]: His before the first step: "first" = the first batch, "zeros" = as written in
        the paper (then the first His is 0.3 F, a biased average for the first few steps).
      grad ["constant"]: "constant" treats the filter matrix as a constant in the backward pass; "full"
        differentiates through the eigendecomposition too (repeated eigenvalues handled by safe_eigh).
      inference ["per-sample"]: in eval mode, "per-sample" filters each image against the frozen His alone,
        so a prediction never depends on the rest of the batch; "batch" is Algorithm 1 literally ([His; F]
        for the whole test batch), the protocol behind the paper's numbers. His is never updated in eval mode.
      precision ["float32"]: dtype of the Gram matrix and its eigendecomposition.
      spectrum ["paper"]: the filter, "paper" (top k to sigma_k, the rest to floor * sigma_k), "equalize"
        (only the top k capped at sigma_k) or "shrink" (only the rest shrunk); spectral_filter.py. The
        variants separate the filter's two halves, to find which one costs clean accuracy and which one
        removes a backdoor (docs/results/eigenguard-study.md).
      floor [0.001]: the tail's scale, floor * sigma_k ("paper" and "shrink"); how hard the tail is cut.
      training ["batch"]: "batch" filters the training batch jointly with His (Algorithm 1); "per-sample"
        filters each training image alone against His (and the anchors) as it was before this step, the
        way per-sample inference filters a test image against the frozen His, then updates His. It trades
        the paper's training computation for train/test consistency, and costs one bordered
        eigh per training image.
      solver ["secular"]: how per-sample inference decomposes each image's bordered Gram matrix: "secular"
        (the history's decomposition cached, each image's eigenvalues from its secular equation, arrowhead.py)
        or "eigh" (one dense eigh per image, the reference the secular path is tested against). The same filter.
    `anchor_rows`: when > 0, the last `anchor_rows` rows of a training batch are extra samples (the paper's
    100 lowest-loss training samples) that join the decomposition but are not returned. `anchor_source`:
    instead, a function called once per training step that returns such samples' features (computed
    without gradient by the caller, defenses/eigenguard.py), so they need not travel with the batch.
    His has the row count of the first training batch; a later batch with b rows updates His[:b].
    """

    history: torch.Tensor

    def __init__(self, options: GuardOptions | None = None, inference: str = "per-sample", **by_name: Any) -> None:
        """`options`, or its fields `by_name` (`EigenGuard(k=20)`); `inference`: the eval-mode protocol."""
        super().__init__()
        if options is not None and by_name:
            raise TypeError("EigenGuard takes its options as one GuardOptions or as fields, not both")
        if inference not in INFERENCE_MODES:
            allowed = ", ".join(INFERENCE_MODES)
            raise EigenguardError(f"EigenGuard inference '{inference}' is not allowed; allowed: {allowed}")
        self.options = options if options is not None else GuardOptions(**by_name)
        self.inference = inference
        self.anchor_rows = 0
        self.anchor_source: Callable[[], torch.Tensor] | None = None
        self.register_buffer("history", torch.zeros(0, 0))
        self._frozen: tuple[torch.Tensor, int, torch.dtype, FrozenHistory] | None = None

    def extra_repr(self) -> str:
        options = ", ".join(f"{f.name}={getattr(self.options, f.name)}" for f in fields(self.options))
        return f"{options}, inference={self.inference}, history={tuple(self.history.shape)}"

    def reset_history(self) -> None:
        self.history = torch.zeros(0, 0, device=self.history.device)
        self._frozen = None

    def _frozen_history(self, history: torch.Tensor, dtype: torch.dtype) -> FrozenHistory:
        """The decomposition of `history` (His as the filter sees it) that per-sample inference reuses,
        recomputed when His changes: another tensor (reset, a loaded checkpoint, .to()) or the same one
        updated in place (its version counter). The cache holds His itself, so that its identity cannot be
        taken over by a new tensor at the same address."""
        cached, buffer = self._frozen, self.history
        if cached is None or cached[0] is not buffer or cached[1] != buffer._version or cached[2] != dtype:
            cached = self._frozen = (buffer, buffer._version, dtype, frozen_history(history, dtype))
        return cached[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.options
        rows = x.shape[0] - (self.anchor_rows if self.training else 0)
        dtype = PRECISIONS[o.precision]
        sourced = self.anchor_source() if self.training and self.anchor_source is not None else None
        with torch.autocast(x.device.type, enabled=False):
            flat = x.flatten(1).float()
            if self.training:
                batch, anchors = flat[:rows], flat[rows:].detach()
                if sourced is not None:
                    anchors = torch.cat([anchors, sourced.detach().flatten(1).float()])
                self._check_width(batch)
                if o.training == "batch":
                    self._update_history(batch.detach())
                    context = torch.cat([self.history, anchors])
                    out = filter_jointly(
                        context, batch, k=o.k, floor=o.floor, grad=o.grad, dtype=dtype, spectrum=o.spectrum
                    )
                else:
                    if self.history.numel() == 0:
                        self._start_history(batch.detach())
                    context = torch.cat([self.history, anchors])
                    out = filter_each_against(
                        context, batch, k=o.k, floor=o.floor, dtype=dtype, spectrum=o.spectrum, grad=o.grad
                    )
                    self._update_history(batch.detach())
            else:
                history = self.history.to(flat.dtype) if self.history.numel() else flat.new_zeros(0, flat.shape[1])
                if self.inference == "batch":
                    out = filter_jointly(
                        history, flat, k=o.k, floor=o.floor, grad="constant", dtype=dtype, spectrum=o.spectrum
                    )
                else:
                    secular = o.solver == "secular" and len(history) > 0
                    frozen = self._frozen_history(history, dtype) if secular else None
                    out = filter_each_against(
                        history, flat, k=o.k, floor=o.floor, dtype=dtype, spectrum=o.spectrum, solver=o.solver,
                        frozen=frozen,
                    )  # fmt: skip
        return out.view(rows, *x.shape[1:]).to(x.dtype)

    def _check_width(self, batch: torch.Tensor) -> None:
        if self.history.numel() and self.history.shape[1] != batch.shape[1]:
            raise EigenguardError(
                f"EigenGuard saw features of size {batch.shape[1]} after {self.history.shape[1]}; "
                "one guard serves one insertion point (call reset_history() to start over)"
            )

    @torch.no_grad()
    def _start_history(self, batch: torch.Tensor) -> None:
        self.history = batch.clone() if self.options.history_init == "first" else torch.zeros_like(batch)

    @torch.no_grad()
    def _update_history(self, batch: torch.Tensor) -> None:
        if self.history.numel() == 0:
            self._start_history(batch)
        n = min(self.history.shape[0], batch.shape[0])
        momentum = self.options.momentum
        self.history[:n].mul_(momentum).add_(batch[:n], alpha=1.0 - momentum)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # His is sized by the first batch; adopt the checkpoint's shape before the normal copy.
        key = prefix + "history"
        if key in state_dict:
            self.history = torch.empty_like(state_dict[key], device=self.history.device)
            self._frozen = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@contextmanager
def inference_mode(guards: Iterable[EigenGuard], mode: str) -> Iterator[None]:
    """Temporarily switch every guard's eval-mode inference ("per-sample" or "batch"); restored on exit."""
    guards = list(guards)
    if mode not in INFERENCE_MODES:
        raise EigenguardError(f"EigenGuard inference '{mode}' is not allowed; allowed: {', '.join(INFERENCE_MODES)}")
    saved = [g.inference for g in guards]
    try:
        for g in guards:
            g.inference = mode
        yield
    finally:
        for g, previous in zip(guards, saved, strict=True):
            g.inference = previous
