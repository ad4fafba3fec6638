"""Pseudo-labels for unlabeled images from the gate's three heads."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .losses import _check_logits

__all__ = ["PseudoLabels", "make_pseudo_labels", "REFINE_OPTIONS"]

REFINE_OPTIONS = ("sdf_agree", "boundary_split", "confidence")
# fixed application order, whatever order the caller lists them in
_ORDER = {"boundary_split": 0, "sdf_agree": 1, "confidence": 2}


class PseudoLabels(NamedTuple):
    """Detached pseudo-labels (no gradient).

    mask:     long (B, H, W), gland = 1, background = 0.
    sdf:      float (B, H, W), tanh of the SDF head, in (-1, 1).
    boundary: long (B, H, W), boundary = 1.
    weight:   float (B, H, W) pixel weights in [0, 1], or None (all ones).
    """

    mask: Tensor
    sdf: Tensor
    boundary: Tensor
    weight: Optional[Tensor]


def _parse_refine(refine) -> Tuple[str, ...]:
    if refine is None:
        return ()
    if isinstance(refine, str):
        names = [r.strip() for r in refine.split("+") if r.strip()]
    elif isinstance(refine, (list, tuple, set, frozenset)):
        names = []
        for r in refine:
            if not isinstance(r, str):
                raise ValueError(f"refine entries must be strings, got {r!r}")
            names.extend(x.strip() for x in r.split("+") if x.strip())
    else:
        raise ValueError(f"refine must be None, a string or a sequence of strings, got {refine!r}")
    bad = [n for n in names if n not in _ORDER]
    if bad:
        raise ValueError(f"unknown refine option(s) {bad}; valid: {list(REFINE_OPTIONS)} (combine with '+' or a list)")
    return tuple(sorted(set(names), key=_ORDER.__getitem__))


@torch.no_grad()
def make_pseudo_labels(
    seg_logits: Tensor,
    sdf_logits: Tensor,
    bnd_logits: Tensor,
    refine: Union[None, str, Sequence[str]] = None,
) -> PseudoLabels:
    """Pseudo-labels from the (fused) seg, SDF and boundary heads.

    Reference behaviour (``refine=None``): ``mask = argmax(seg_logits)``,
    ``sdf = tanh(sdf_logits)``, ``boundary = argmax(bnd_logits)``, no weights.
    Everything is computed under ``no_grad``; outputs never require grad.

    ``refine`` selects optional refinements: one name, several joined with
    ``"+"`` (``"sdf_agree+confidence"``) or a sequence of names. They are
    applied in this fixed order:

    1. ``"boundary_split"``: mask pixels predicted as boundary are set to
       background (``mask[boundary == 1] = 0``), so glands that the seg head
       merges across a predicted boundary come apart. (The boundary target
       is a ring just outside each gland, so this cuts merged neighbours at
       the gaps between them.) The SDF and boundary maps are unchanged.
    2. ``"sdf_agree"``: weight 0 where the SDF sign contradicts the (possibly
       split) mask, 1 elsewhere; margin-free: a pixel disagrees iff
       ``(mask == 1 and sdf < 0) or (mask == 0 and sdf > 0)``; ``sdf == 0``
       agrees with both.
    3. ``"confidence"``: weight ``clamp((p_max - 1/C) / (1 - 1/C), 0, 1)``
       with ``p_max`` the largest softmax probability of ``seg_logits``
       (C = 2: ``p_max`` rescaled from [0.5, 1] to [0, 1]).

    Weights from several options are multiplied; with neither ``sdf_agree``
    nor ``confidence``, ``weight`` is None.

    Args:
        seg_logits: float (B, C, H, W), C >= 2 (2 in Semi-MoE).
        sdf_logits: float (B, 1, H, W).
        bnd_logits: float (B, C_b, H, W), C_b >= 2; class 1 = boundary.
        refine: None, option name(s), see above.

    Returns:
        :class:`PseudoLabels` (mask long (B,H,W), sdf float (B,H,W),
        boundary long (B,H,W), weight float (B,H,W) or None).
    """
    _check_logits(seg_logits, "seg_logits")
    _check_logits(sdf_logits, "sdf_logits", channels=1)
    _check_logits(bnd_logits, "bnd_logits")
    B, C, H, W = seg_logits.shape
    for name, t in (("sdf_logits", sdf_logits), ("bnd_logits", bnd_logits)):
        if (t.shape[0], t.shape[2], t.shape[3]) != (B, H, W):
            raise ValueError(
                f"{name} must match seg_logits in B, H, W = {(B, H, W)}, got {tuple(t.shape)}"
            )
    opts = _parse_refine(refine)

    mask = seg_logits.argmax(dim=1)
    sdf = torch.tanh(sdf_logits[:, 0]).detach()
    boundary = bnd_logits.argmax(dim=1)
    weight: Optional[Tensor] = None

    for opt in opts:
        if opt == "boundary_split":
            mask = torch.where(boundary == 1, torch.zeros_like(mask), mask)
        elif opt == "sdf_agree":
            fg = mask == 1
            disagree = (fg & (sdf < 0)) | (~fg & (sdf > 0))
            w = (~disagree).to(sdf.dtype)
            weight = w if weight is None else weight * w
        elif opt == "confidence":
            pmax = torch.softmax(seg_logits, dim=1).amax(dim=1)
            w = ((pmax - 1.0 / C) / (1.0 - 1.0 / C)).clamp_(0.0, 1.0).to(sdf.dtype)
            weight = w if weight is None else weight * w
    return PseudoLabels(mask.detach(), sdf, boundary.detach(), None if weight is None else weight.detach())
