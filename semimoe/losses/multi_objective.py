"""Adaptive multi-objective weighting of the three task losses, and the
unsupervised-loss ramp."""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["AdaptiveMultiObjectiveLoss", "unsup_weight"]

_VARIANTS = ("reference", "kendall")


class AdaptiveMultiObjectiveLoss(nn.Module):
    """Combine (L_seg, L_sdf, L_bnd) with learnable scalars s_seg, s_sdf, s_bnd.

    ``variant="reference"`` (released Semi-MoE code), s initialised to 1.0::

        M = e^{-s_seg} L_seg + 0.4 e^{s_seg}
          + 0.5 e^{-s_sdf} L_sdf + 0.4 e^{s_sdf}
          + e^{-s_bnd} L_bnd + 0.4 e^{s_bnd}

    (task coefficients ``(1, 0.5, 1)`` and regulariser coefficient ``0.4``
    are constructor arguments). For fixed L the optimum is
    s = ½ ln(c_t L / 0.4), where the task's term equals 2 sqrt(0.4 c_t L);
    the regulariser grows exponentially, not logarithmically as in Kendall
    et al.

    ``variant="kendall"`` (Kendall, Gal & Cipolla, CVPR 2018, the regression
    form used for every task), s_t = log(sigma_t), initialised to 0.0
    (sigma = 1)::

        M = sum_t  L_t / (2 sigma_t^2) + log(sigma_t)
          = sum_t  0.5 e^{-2 s_t} L_t + s_t

    The task/regulariser coefficients are ignored in this variant.

    The three parameters are 0-dim ``nn.Parameter`` s and should get their own
    optimiser (reference: Adam, lr 0.05, weight decay 5e-5), see
    :meth:`make_optimizer`.

    Inputs: three scalar (0-dim) loss tensors. Output: scalar tensor.
    """

    def __init__(
        self,
        variant: str = "reference",
        init: Optional[float] = None,
        task_coef: tuple = (1.0, 0.5, 1.0),
        reg_coef: float = 0.4,
    ):
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if len(task_coef) != 3:
            raise ValueError(f"task_coef must have 3 entries (seg, sdf, bnd), got {task_coef!r}")
        self.variant = variant
        if init is None:
            init = 1.0 if variant == "reference" else 0.0
        self.s_seg = nn.Parameter(torch.tensor(float(init)))
        self.s_sdf = nn.Parameter(torch.tensor(float(init)))
        self.s_bnd = nn.Parameter(torch.tensor(float(init)))
        self.task_coef = tuple(float(c) for c in task_coef)
        self.reg_coef = float(reg_coef)

    def _params(self):
        return (self.s_seg, self.s_sdf, self.s_bnd)

    def forward(self, l_seg: Tensor, l_sdf: Tensor, l_bnd: Tensor) -> Tensor:
        losses = (l_seg, l_sdf, l_bnd)
        for name, l in zip(("l_seg", "l_sdf", "l_bnd"), losses):
            if not isinstance(l, Tensor) or l.numel() != 1:
                raise ValueError(f"{name} must be a scalar tensor, got {getattr(l, 'shape', type(l))}")
        total = None
        if self.variant == "reference":
            for c, s, l in zip(self.task_coef, self._params(), losses):
                term = c * torch.exp(-s) * l.reshape(()) + self.reg_coef * torch.exp(s)
                total = term if total is None else total + term
        else:
            for s, l in zip(self._params(), losses):
                term = 0.5 * torch.exp(-2.0 * s) * l.reshape(()) + s
                total = term if total is None else total + term
        return total

    @torch.no_grad()
    def weights(self) -> Dict[str, float]:
        """Current effective multiplier of each task loss (python floats)."""
        out = {}
        for name, c, s in zip(("seg", "sdf", "bnd"), self.task_coef, self._params()):
            if self.variant == "reference":
                out[name] = c * math.exp(-float(s))
            else:
                out[name] = 0.5 * math.exp(-2.0 * float(s))
        return out

    def make_optimizer(self, lr: float = 0.05, weight_decay: float = 5e-5) -> torch.optim.Optimizer:
        """The reference's separate optimiser for s: Adam(lr 0.05, wd 5e-5)."""
        return torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, task_coef={self.task_coef}, reg_coef={self.reg_coef}"


def unsup_weight(epoch: int, total_epochs: int, max_weight: float = 0.5) -> float:
    """Linear ramp of the unsupervised loss weight (reference schedule).

    ``w = max_weight * (epoch + 1) / total_epochs``, clamped to
    ``[0, max_weight]``; ``epoch`` is 0-based, so the last epoch gets
    ``max_weight``.
    """
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
    w = max_weight * (epoch + 1) / total_epochs
    return float(min(max(w, 0.0), max_weight))
