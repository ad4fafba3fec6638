"""Training objectives of Semi-MoE as modules (docs/METHOD.md §3).

* :class:`SupervisedObjective` -- on labeled images: each task loss on the
  expert's own head plus on the gate's head, combined by the adaptive
  multi-objective (AMO) weighting.
* :class:`SemiMoEObjective` -- adds the unsupervised term on unlabeled
  images: pseudo-labels from the gate's heads (detached, optionally refined),
  each expert's own head against them, ``w(e) * AMO(...)``.

Both own the AMO parameters (``objective.amo``), which get their own
optimiser (:meth:`make_amo_optimizer`). ``dice``: ``"batch"`` (one seg and
one boundary Dice per batch) | ``"image"`` (the released code: one per image,
averaged, boundary smoothing 1e-8).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from .losses import boundary_dice_loss, dice_loss_sq, sdf_loss
from .multi_objective import AdaptiveMultiObjectiveLoss
from .pseudo import PseudoLabels, make_pseudo_labels

__all__ = ["SupervisedObjective", "SemiMoEObjective", "DICE_FORMS"]

Triple = Tuple[Tensor, Tensor, Tensor]
DICE_FORMS = ("batch", "image")


class SupervisedObjective(nn.Module):
    """``AMO(L_seg, L_sdf, L_bnd)`` on labeled images.

    ``forward(out, targets)`` takes the model's :class:`~semimoe.models.SemiMoEOutput`
    and :class:`~semimoe.data.Targets`; returns ``(loss, parts)`` with
    ``parts = {"sup_seg", "sup_sdf", "sup_bnd"}`` (each the sum over the
    expert's and the gate's head).
    """

    def __init__(self, amo: str = "reference", dice: str = "batch"):
        super().__init__()
        if dice not in DICE_FORMS:
            raise ValueError(f"dice must be one of {DICE_FORMS}, got {dice!r}")
        self.amo = AdaptiveMultiObjectiveLoss(variant=amo)
        self.dice = dice

    def seg_loss(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return dice_loss_sq(logits.float(), target, weight=weight, per_image=self.dice == "image")

    def bnd_loss(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        if self.dice == "image":
            return boundary_dice_loss(logits.float(), target, eps=1e-8, weight=weight, per_image=True)
        return boundary_dice_loss(logits.float(), target, weight=weight)

    def task_losses(self, out, targets) -> Triple:
        """Each task loss on the expert's own head plus on the gate's head."""
        ex = out.experts
        l_seg = self.seg_loss(ex["seg"], targets.mask) + self.seg_loss(out.seg, targets.mask)
        l_sdf = sdf_loss(ex["sdf"].float(), targets.sdf) + sdf_loss(out.sdf.float(), targets.sdf)
        l_bnd = self.bnd_loss(ex["bnd"], targets.boundary) + self.bnd_loss(out.bnd, targets.boundary)
        return l_seg, l_sdf, l_bnd

    def forward(self, out, targets) -> Tuple[Tensor, Dict[str, Tensor]]:
        l_seg, l_sdf, l_bnd = self.task_losses(out, targets)
        return self.amo(l_seg, l_sdf, l_bnd), {"sup_seg": l_seg, "sup_sdf": l_sdf, "sup_bnd": l_bnd}

    def make_amo_optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """Adam over the AMO parameters (reference: lr 0.05, weight decay 5e-5)."""
        return torch.optim.Adam(self.amo.parameters(), lr=lr, weight_decay=weight_decay)


class SemiMoEObjective(SupervisedObjective):
    """The supervised objective plus the unsupervised term of Semi-MoE.

    ``unsupervised(out, weight)`` takes the model's output on an unlabeled
    batch and the ramp weight ``w(e)``; returns ``(w * AMO(...), parts,
    pseudo_labels)`` with ``parts = {"unsup_seg", "unsup_sdf", "unsup_bnd"}``.
    ``refine``: pseudo-label refinement (:func:`~semimoe.losses.make_pseudo_labels`).
    """

    def __init__(self, amo: str = "reference", refine: Optional[Any] = None, dice: str = "batch"):
        super().__init__(amo, dice)
        self.refine = refine

    def unsupervised(self, out, weight: float) -> Tuple[Tensor, Dict[str, Tensor], PseudoLabels]:
        pl = make_pseudo_labels(out.seg.float(), out.sdf.float(), out.bnd.float(), refine=self.refine)
        ex = out.experts
        w = pl.weight
        l_seg = self.seg_loss(ex["seg"], pl.mask, weight=w)
        l_sdf = sdf_loss(ex["sdf"].float(), pl.sdf, weight=w)
        l_bnd = self.bnd_loss(ex["bnd"], pl.boundary, weight=w)
        return self.amo(l_seg, l_sdf, l_bnd) * weight, {"unsup_seg": l_seg, "unsup_sdf": l_sdf,
                                                        "unsup_bnd": l_bnd}, pl
