"""Losses of Semi-MoE: segmentation Dice, SDF MSE, boundary Dice, adaptive
multi-objective weighting, unsupervised ramp, pseudo-labels, and the
training objectives built from them (:mod:`.objectives`); the IKD-MIL
image-label and distillation losses (:mod:`.mil`).

All tensors follow the shape conventions in :mod:`semimoe.losses.losses`
(the MIL losses: :mod:`semimoe.losses.mil`).
"""
from .icmoe import (boundary_band, confident_pseudo_labels, consensus, load_balance_loss, pixel_contrastive_loss,
                    pixel_vote, sample_pixels, vote_logits)
from .losses import boundary_dice_loss, dice_loss_sq, sdf_loss
from .mil import MIL_POOLINGS, MIL_POOLS, distill_loss, mil_loss, mil_pool, oeem_weights
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
    "mil_pool",
    "mil_loss",
    "distill_loss",
    "oeem_weights",
    "MIL_POOLS",
    "MIL_POOLINGS",
    "vote_logits",
    "pixel_vote",
    "consensus",
    "confident_pseudo_labels",
    "load_balance_loss",
    "sample_pixels",
    "boundary_band",
    "pixel_contrastive_loss",
]
