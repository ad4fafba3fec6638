"""Segmentation, SDF and boundary losses of Semi-MoE.

Conventions (all functions):

* ``logits``: float (B, C, H, W), raw scores; softmax over dim 1 is taken inside.
* ``target`` (class maps): integer (B, H, W) or (B, 1, H, W) with values in
  [0, C). Values outside that range are not checked (checking would force a
  device sync); such pixels count as "no class" in the one-hot target.
* ``weight``: optional float per-pixel weights (B, H, W) or (B, 1, H, W),
  e.g. from :func:`semimoe.losses.make_pseudo_labels`. ``None`` means all
  ones. Weighted losses reduce exactly to the unweighted ones for all-ones
  weights; weights are treated as constants (no gradient is expected).
* The Dice losses pool the batch by default: sums run over the batch and all
  pixels together (one Dice per class for the whole batch). ``per_image=True``
  is the released code's form: one Dice per image and class, averaged over
  both (docs/METHOD.md §3b; ``train.dice=image``).
* Shape mismatches raise ``ValueError`` naming the offending argument;
  nothing is silently broadcast.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["dice_loss_sq", "sdf_loss", "boundary_dice_loss"]


# ----------------------------------------------------------------------------
# Shape checking helpers
# ----------------------------------------------------------------------------
def _check_logits(logits: Tensor, name: str, channels: Optional[int] = None, min_channels: int = 2) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    c = logits.shape[1]
    if channels is not None and c != channels:
        raise ValueError(f"{name} must have {channels} channel(s) (shape (B, {channels}, H, W)), got {tuple(logits.shape)}")
    if channels is None and c < min_channels:
        raise ValueError(f"{name} must have at least {min_channels} channels, got {tuple(logits.shape)}")


def _as_bhw(t: Tensor, name: str, ref: Tensor) -> Tensor:
    """Return ``t`` as (B, H, W) where ``ref`` is (B, C, H, W); accepts
    (B, H, W) or (B, 1, H, W) with matching B, H, W."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    B, _, H, W = ref.shape
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3 or tuple(t.shape) != (B, H, W):
        raise ValueError(
            f"{name} must have shape (B, H, W) = {(B, H, W)} or (B, 1, H, W), got {tuple(t.shape)}"
        )
    return t


def _check_target(target: Tensor, logits: Tensor) -> Tensor:
    t = _as_bhw(target, "target", logits)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"target must be an integer class map (e.g. torch.long), got {t.dtype}")
    return t


def _check_weight(weight: Optional[Tensor], logits: Tensor) -> Optional[Tensor]:
    if weight is None:
        return None
    w = _as_bhw(weight, "weight", logits)
    if not w.is_floating_point():
        w = w.to(logits.dtype)
    return w


def _one_hot(target: Tensor, C: int, dtype: torch.dtype) -> Tensor:
    # comparison instead of F.one_hot: no device sync, no range check
    classes = torch.arange(C, device=target.device).view(1, C, 1, 1)
    return (target.unsqueeze(1) == classes).to(dtype)


# ----------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------

def _probs_and_one_hot(logits, target, weight):
    """Checked inputs of the Dice losses: (softmax probabilities, one-hot target,
    pixel weights or None)."""
    _check_logits(logits, "logits")
    t = _check_target(target, logits)
    w = _check_weight(weight, logits)
    p = torch.softmax(logits, dim=1)
    return p, _one_hot(t, logits.shape[1], p.dtype), w

def dice_loss_sq(
    logits: Tensor, target: Tensor, smooth: float = 1.0, weight: Optional[Tensor] = None,
    per_image: bool = False,
) -> Tensor:
    """Soft Dice loss with squared denominator over all classes (the seg loss).

    With p = softmax(logits, 1) and g = one-hot(target), per class c::

        loss_c = 1 - (2 * sum(w p_c g_c) + smooth) / (sum(w p_c^2) + sum(w g_c^2) + smooth)

    sums over batch and pixels (``per_image``: over each image's pixels, one
    loss per image and class), w = 1 without ``weight``; result is the mean
    of the losses over the C classes (background included) and, per image,
    the images.

    Args:
        logits: float (B, C, H, W), C >= 2.
        target: integer (B, H, W) or (B, 1, H, W), values in [0, C).
        smooth: additive smoothing of numerator and denominator.
        weight: optional float (B, H, W) or (B, 1, H, W) pixel weights.
        per_image: one Dice per image (the released code) instead of one
            for the batch.

    Returns:
        scalar tensor (0-dim), dtype of ``logits``.
    """
    p, g, w = _probs_and_one_hot(logits, target, weight)
    dims = (2, 3) if per_image else (0, 2, 3)
    if w is not None:
        wu = w.unsqueeze(1)
        inter = (wu * p * g).sum(dim=dims)
        den = (wu * p * p).sum(dim=dims) + (wu * g).sum(dim=dims)  # g^2 = g
    else:
        inter = (p * g).sum(dim=dims)
        den = (p * p).sum(dim=dims) + g.sum(dim=dims)
    dice = (2.0 * inter + smooth) / (den + smooth)
    return (1.0 - dice).mean()


def sdf_loss(sdf_logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    """Mean squared error between ``tanh(sdf_logits)`` and the target SDF.

    ``target`` of shape (B, H, W) is compared pixel by pixel with channel 0 of
    the prediction. (The reference's supervised SDF loss broadcasts
    (B, 1, H, W) against (B, H, W) into (B, B, H, W), comparing every
    prediction with every target in the batch; this is the corrected form.)
    Any other shape raises ``ValueError``.

    With weights: ``sum(w * (tanh(x) - t)^2) / sum(w)`` (0 when all weights
    are 0); without: the plain mean.

    Args:
        sdf_logits: float (B, 1, H, W).
        target: float (B, H, W) or (B, 1, H, W), values in [-1, 1].
        weight: optional float (B, H, W) or (B, 1, H, W) pixel weights.

    Returns:
        scalar tensor (0-dim).
    """
    _check_logits(sdf_logits, "sdf_logits", channels=1)
    t = _as_bhw(target, "target", sdf_logits)
    if not t.is_floating_point():
        t = t.to(sdf_logits.dtype)
    w = _check_weight(weight, sdf_logits)
    sq = (torch.tanh(sdf_logits[:, 0]) - t) ** 2
    if w is None:
        return sq.mean()
    return (w * sq).sum() / w.sum().clamp_min(torch.finfo(sq.dtype).tiny)


def boundary_dice_loss(
    logits: Tensor, target: Tensor, eps: float = 1e-5, weight: Optional[Tensor] = None,
    per_image: bool = False,
) -> Tensor:
    """Soft Dice ``1 - (2TP + eps) / (2TP + FP + FN + eps)`` averaged over classes.

    With p = softmax(logits, 1), g = one-hot(target) and w the pixel weights
    (1 without ``weight``), per class c, summed over batch and pixels
    (``per_image``: over each image's pixels, then averaged over the images
    too, as the released code; it uses ``eps=1e-8``)::

        TP_c = sum(w p_c g_c), FP_c = sum(w p_c (1 - g_c)), FN_c = sum(w (1 - p_c) g_c)

    Note 2TP + FP + FN = sum(w p_c) + sum(w g_c) (linear, not squared,
    denominator; this is what distinguishes it from :func:`dice_loss_sq`).

    Args:
        logits: float (B, 2, H, W) (any C >= 2 works).
        target: integer (B, H, W) or (B, 1, H, W), values in [0, C).
        eps: smoothing of numerator and denominator.
        weight: optional float (B, H, W) or (B, 1, H, W) pixel weights.
        per_image: one Dice per image instead of one for the batch.

    Returns:
        scalar tensor (0-dim).
    """
    p, g, w = _probs_and_one_hot(logits, target, weight)
    dims = (2, 3) if per_image else (0, 2, 3)
    if w is not None:
        wu = w.unsqueeze(1)
        pg = wu * p
        tp = (pg * g).sum(dim=dims)
        fp = (pg * (1.0 - g)).sum(dim=dims)
        fn = (wu * (1.0 - p) * g).sum(dim=dims)
    else:
        tp = (p * g).sum(dim=dims)
        fp = (p * (1.0 - g)).sum(dim=dims)
        fn = ((1.0 - p) * g).sum(dim=dims)
    dice = (2.0 * tp + eps) / (2.0 * tp + fp + fn + eps)
    return (1.0 - dice).mean()
