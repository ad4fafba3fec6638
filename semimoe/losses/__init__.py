"""Losses of Semi-MoE: segmentation Dice, SDF MSE, boundary Dice, adaptive
multi-objective weighting, unsupervised ramp, pseudo-labels, and the
training objectives built from them (:mod:`.objectives`).

All tensors follow the shape conventions in :mod:`semimoe.losses.losses`.
"""
from .losses import boundary_dice_loss, dice_loss_sq, sdf_loss
from .multi_objective import AdaptiveMultiObjectiveLoss, unsup_weight
from .objectives import SemiMoEObjective, SupervisedObjective
from .pseudo import REFINE_OPTIONS, PseudoLabels, make_pseudo_labels

__all__ = [
    "dice_loss_sq",
    "sdf_loss",
    "boundary_dice_loss",
    "AdaptiveMultiObjectiveLoss",
    "unsup_weight",
    "PseudoLabels",
    "make_pseudo_labels",
    "REFINE_OPTIONS",
    "SupervisedObjective",
    "SemiMoEObjective",
]
