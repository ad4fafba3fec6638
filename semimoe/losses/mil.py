"""Losses of the IKD-MIL segmenter (He, Li, Zemp, arXiv 2407.10274):
multiple-instance learning from image labels, and the teacher-to-student
distillation with OEEM pixel weights (Li et al., MICCAI 2022).

Conventions:

* ``out``: a :class:`semimoe.models.mil.MILOutput`: ``sides`` (B, 1, H, W)
  logits, ``fused`` (B, 1, H, W) probability. Both losses are applied to
  every side output (as ``sigmoid`` of its logits) and to the fused map,
  and the per-map losses are **summed** (not averaged) over the maps.
* ``labels``: integer or bool (B,) image labels; nonzero = positive
  ("tumour somewhere"), 0 = negative (all background).
* Positive and negative terms are each a mean over their own images; a
  batch without positives (negatives) has a positive (negative) term of 0.
  No host sync: the counts stay on the device.
* Side outputs use the logit forms of the binary cross-entropy
  (``softplus``/``logsigmoid``: finite for any logit); the fused map is a
  probability and is clamped to ``[eps, 1 - eps]`` before any logarithm.
* Arithmetic in float32 (inputs of lower precision are upcast).
* Soft Dice, per image: ``1 - (2 sum(p g) + eps) / (sum(p) + sum(g) + eps)``
  (linear denominator, as :func:`semimoe.losses.boundary_dice_loss`).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mil_pool", "mil_loss", "distill_loss", "oeem_weights", "MIL_POOLS", "MIL_POOLINGS"]

MIL_POOLS = ("max", "lse", "topk")           # modes of :func:`mil_pool`
MIL_POOLINGS = ("dice",) + MIL_POOLS          # positive-image losses of :func:`mil_loss`


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------
def _check_map(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_pool_args(mode: str, lse_r: float, topk: float) -> None:
    if mode not in MIL_POOLS:
        raise ValueError(f"mode must be one of {MIL_POOLS}, got {mode!r}")
    if mode == "lse" and not (math.isfinite(lse_r) and lse_r > 0):
        raise ValueError(f"lse_r must be a finite number > 0, got {lse_r!r}")
    if mode == "topk" and not 0.0 < topk <= 1.0:
        raise ValueError(f"topk must be in (0, 1], got {topk!r}")


def _maps(out) -> List[Tuple[Tensor, bool]]:
    """[(map, is_logits)]: every side's logits, then the fused probability;
    all (B, 1, H, W) of one shape."""
    sides, fused = out.sides, out.fused
    if len(sides) == 0:
        raise ValueError("out.sides is empty")
    for i, s in enumerate(sides):
        _check_map(s, f"out.sides[{i}]")
    _check_map(fused, "out.fused")
    shape = tuple(fused.shape)
    for i, s in enumerate(sides):
        if tuple(s.shape) != shape:
            raise ValueError(f"out.sides[{i}] has shape {tuple(s.shape)}, out.fused {shape}")
    return [(s, True) for s in sides] + [(fused, False)]


def _positive(labels: Tensor, B: int, device) -> Tensor:
    """labels -> bool (B,) on ``device``."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != B:
        raise ValueError(f"labels must have shape (B,) = ({B},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer or bool image labels, got {labels.dtype}")
    return labels.to(device) != 0


def _masked_mean(per_image: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``per_image`` (B,) over ``mask`` (B,) bool; 0 for an empty mask.
    ``where``, not a product: an unused entry never reaches the result."""
    total = torch.where(mask, per_image, torch.zeros_like(per_image)).sum()
    return total / mask.sum().clamp_min(1).to(per_image.dtype)


def _bce(m: Tensor, is_logits: bool, target: float, eps: float) -> Tensor:
    """Pixel binary cross-entropy (B, H, W) of a map against a constant or
    a tensor target."""
    if is_logits:
        tgt = torch.full_like(m, target) if not isinstance(target, Tensor) else target
        return F.binary_cross_entropy_with_logits(m, tgt, reduction="none")[:, 0]
    p = m.clamp(eps, 1.0 - eps)
    if isinstance(target, Tensor):
        return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p))[:, 0]
    if target == 0.0:
        return -torch.log1p(-p)[:, 0]
    return -torch.log(p)[:, 0]


def _prob(m: Tensor, is_logits: bool) -> Tensor:
    return torch.sigmoid(m) if is_logits else m


def _soft_dice(p: Tensor, g: Tensor, eps: float) -> Tensor:
    """Per-image soft Dice loss (B,) of p against g, both (B, 1, H, W)."""
    inter = (p * g).flatten(1).sum(1)
    den = p.flatten(1).sum(1) + g.flatten(1).sum(1)
    return 1.0 - (2.0 * inter + eps) / (den + eps)


def _topk_count(n: int, topk: float) -> int:
    # the tolerance keeps e.g. 0.1 * 30 = 3.0000000000000004 at 3 pixels
    return min(n, max(1, math.ceil(topk * n - 1e-6)))


# ----------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------
def mil_pool(prob: Tensor, mode: str = "max", lse_r: float = 5.0, topk: float = 0.1) -> Tensor:
    """Image score from a pixel probability map (multiple-instance pooling).

    * ``"max"``: ``max_j p_j``;
    * ``"lse"``: ``(1/r) * log(mean_j exp(r * p_j))`` (log-sum-exp; computed
      as ``(logsumexp(r p) - log(HW)) / r``; tends to the max as r grows,
      to the mean as r -> 0);
    * ``"topk"``: mean of the ``k = ceil(topk * H*W)`` largest pixels
      (at least 1; ``topk`` in (0, 1]).

    Args:
        prob: float (B, 1, H, W) probabilities.
        mode: ``"max"`` | ``"lse"`` | ``"topk"``.
        lse_r: sharpness r of ``"lse"`` (> 0).
        topk: fraction of pixels of ``"topk"``.

    Returns:
        (B,) scores in [0, 1], float32 for inputs of lower precision, else
        the dtype of ``prob``.
    """
    _check_map(prob, "prob")
    _check_pool_args(mode, lse_r, topk)
    p = prob.flatten(1)
    if p.dtype in (torch.float16, torch.bfloat16):
        p = p.float()
    if mode == "max":
        return p.amax(dim=1)
    n = p.shape[1]
    if mode == "lse":
        return (torch.logsumexp(lse_r * p, dim=1) - math.log(n)) / lse_r
    return p.topk(_topk_count(n, topk), dim=1).values.mean(dim=1)


def _positive_pool_bce(m: Tensor, is_logits: bool, mode: str, lse_r: float, topk: float, eps: float) -> Tensor:
    """Per-image ``-log(pooled score)`` (B,): BCE of the pooled score against 1.
    Side logits: exact log-sigmoid forms for max and top-k (sigmoid is
    monotone, so the top pixels of p are the top logits); otherwise the
    pooled probability clamped to ``eps``."""
    if is_logits and mode == "max":
        return F.softplus(-m.flatten(1).amax(dim=1))
    if is_logits and mode == "topk":
        n = m[0].numel()
        k = _topk_count(n, topk)
        top = m.flatten(1).topk(k, dim=1).values
        return math.log(k) - torch.logsumexp(F.logsigmoid(top), dim=1)
    score = mil_pool(_prob(m, is_logits), mode, lse_r, topk)
    return -torch.log(score.clamp(eps, 1.0))


# ----------------------------------------------------------------------------
# MIL loss
# ----------------------------------------------------------------------------
def mil_loss(out, labels: Tensor, pooling: str = "dice", lse_r: float = 5.0, topk: float = 0.1,
             eps: float = 1e-6) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Image-label (MIL) loss of a :class:`~semimoe.models.mil.MILOutput`.

    For each map (every side output and the fused map; per-map losses are
    summed) with pixel probabilities p:

    * positive images: ``pooling="dice"`` (the released IKD-MIL): soft Dice
      loss of p against an all-ones map, per image; ``"max"`` / ``"lse"`` /
      ``"topk"``: ``-log(mil_pool(p))``, the BCE of the pooled score
      against 1;
    * negative images: mean pixel BCE of p against 0.

    Each term is averaged over its own images (0 when the batch has none).

    Args:
        out: ``MILOutput``: ``sides`` (B, 1, H, W) logits, ``fused``
            (B, 1, H, W) probability.
        labels: integer or bool (B,), nonzero = positive.
        pooling: ``"dice"`` | ``"max"`` | ``"lse"`` | ``"topk"``.
        lse_r, topk: see :func:`mil_pool`.
        eps: Dice smoothing and probability clamp of the fused map / pooled
            scores before a logarithm.

    Returns:
        ``(loss, parts)``: scalar float32 loss; parts (detached scalars):
        ``mil_pos``, ``mil_neg`` (positive / negative terms summed over the
        maps), ``mil_fused`` (the fused map's loss), ``mil_sides`` (the side
        outputs' losses summed).
    """
    if pooling not in MIL_POOLINGS:
        raise ValueError(f"pooling must be one of {MIL_POOLINGS}, got {pooling!r}")
    if pooling != "dice":
        _check_pool_args(pooling, lse_r, topk)
    maps = _maps(out)
    pos = _positive(labels, maps[0][0].shape[0], maps[0][0].device)
    neg = ~pos
    pos_terms, neg_terms = [], []
    for m, is_logits in maps:
        m = m.float()
        if pooling == "dice":
            p = _prob(m, is_logits)
            lp = _soft_dice(p, torch.ones_like(p), eps)
        else:
            lp = _positive_pool_bce(m, is_logits, pooling, lse_r, topk, eps)
        ln = _bce(m, is_logits, 0.0, eps).flatten(1).mean(dim=1)
        pos_terms.append(_masked_mean(lp, pos))
        neg_terms.append(_masked_mean(ln, neg))
    return _combine("mil", pos_terms, neg_terms)


def _combine(prefix: str, pos_terms: List[Tensor], neg_terms: List[Tensor],
             extra: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Dict[str, Tensor]]:
    per_map = [a + b for a, b in zip(pos_terms, neg_terms)]
    loss = torch.stack(per_map).sum()
    parts = {
        f"{prefix}_pos": torch.stack(pos_terms).sum().detach(),
        f"{prefix}_neg": torch.stack(neg_terms).sum().detach(),
        f"{prefix}_fused": per_map[-1].detach(),
        f"{prefix}_sides": torch.stack(per_map[:-1]).sum().detach(),
    }
    parts.update(extra or {})
    return loss, parts


# ----------------------------------------------------------------------------
# Distillation
# ----------------------------------------------------------------------------
def oeem_weights(pixel_loss: Tensor) -> Tensor:
    """OEEM pixel weights (Li et al., MICCAI 2022): easy pixels (low loss)
    weigh more. Per image: ``softmax_j(-loss_j) * H*W``, so the weights are
    positive and average 1 over the image's pixels.

    Args:
        pixel_loss: float (B, H, W) per-pixel losses.

    Returns:
        (B, H, W) weights, detached (constants of the loss), dtype of
        ``pixel_loss`` (computed in float32).
    """
    if not isinstance(pixel_loss, Tensor) or pixel_loss.dim() != 3 or not pixel_loss.is_floating_point():
        raise ValueError("pixel_loss must be a float tensor of shape (B, H, W), got "
                         f"{tuple(pixel_loss.shape) if isinstance(pixel_loss, Tensor) else type(pixel_loss).__name__}")
    B, H, W = pixel_loss.shape
    lo = pixel_loss.detach().float().reshape(B, H * W)
    w = torch.softmax(-lo, dim=1) * (H * W)
    return w.reshape(B, H, W).to(pixel_loss.dtype)


def distill_loss(out, teacher: Tensor, labels: Tensor, threshold: float = 0.5,
                 eps: float = 1e-6) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Distillation of a frozen teacher's fused soft map into a student
    (IKD-MIL), applied to every side output and the fused map of the
    student and summed over those maps.

    For each student map with pixel probabilities p, and t the teacher's
    map (detached), y = ``t >= threshold``:

    * positive images: ``dice(p, t) + mean_j(w_j * bce(p_j, y_j))``, the
      soft Dice loss against the soft teacher plus the pixel BCE against
      the thresholded teacher weighted by :func:`oeem_weights` of that BCE
      (easy pixels weigh more; weights mean 1 per image);
    * negative images: mean pixel BCE of p against 0 (the teacher unused).

    Each term is averaged over its own images (0 when the batch has none).

    Args:
        out: the student's ``MILOutput`` (``sides`` logits, ``fused`` probability).
        teacher: float (B, 1, H, W) or (B, H, W) teacher probabilities
            (typically its ``fused``).
        labels: integer or bool (B,), nonzero = positive.
        threshold: teacher probability from which a pixel is foreground.
        eps: Dice smoothing and clamp of the fused map before a logarithm.

    Returns:
        ``(loss, parts)``: scalar float32 loss; parts (detached scalars):
        ``kd_pos``, ``kd_neg``, ``kd_fused``, ``kd_sides`` (as
        :func:`mil_loss`), ``kd_dice`` and ``kd_ce`` (the two positive
        terms, summed over the maps).
    """
    maps = _maps(out)
    B, _, H, W = maps[-1][0].shape
    if not isinstance(teacher, Tensor):
        raise ValueError(f"teacher must be a torch.Tensor, got {type(teacher).__name__}")
    if teacher.dim() == 3:
        teacher = teacher.unsqueeze(1)
    if tuple(teacher.shape) != (B, 1, H, W):
        raise ValueError(f"teacher must have shape (B, 1, H, W) = {(B, 1, H, W)} or (B, H, W), "
                         f"got {tuple(teacher.shape)}")
    if not teacher.is_floating_point():
        raise ValueError(f"teacher must be float probabilities, got {teacher.dtype}")
    pos = _positive(labels, B, maps[0][0].device)
    neg = ~pos
    t = teacher.detach().float()
    y = (t >= threshold).float()
    pos_terms, neg_terms, dices, ces = [], [], [], []
    for m, is_logits in maps:
        m = m.float()
        dice = _soft_dice(_prob(m, is_logits), t, eps)
        ce_px = _bce(m, is_logits, y, eps)
        ce = (oeem_weights(ce_px) * ce_px).flatten(1).mean(dim=1)
        ln = _bce(m, is_logits, 0.0, eps).flatten(1).mean(dim=1)
        d, c = _masked_mean(dice, pos), _masked_mean(ce, pos)
        dices.append(d)
        ces.append(c)
        pos_terms.append(d + c)
        neg_terms.append(_masked_mean(ln, neg))
    extra = {"kd_dice": torch.stack(dices).sum().detach(), "kd_ce": torch.stack(ces).sum().detach()}
    return _combine("kd", pos_terms, neg_terms, extra)
