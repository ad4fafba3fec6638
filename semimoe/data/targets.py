"""Semi-MoE training targets from a segmentation mask, in one kernel call."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..ops._common import check_image_batch
from ..ops.distance_transform import int64_targets


class Targets(NamedTuple):
    """Training targets of a batch of masks, all of the mask's shape and device.

    mask:     int64, 1 on glands (``mask != 0``), the segmentation target.
    sdf:      float32 in [-1, 1], positive inside glands, 0 on the inner
              boundary (:func:`semimoe.ops.signed_distance`).
    boundary: int64, 1 on the ring of width ``radius`` just outside each gland
              (``dilation(mask, disk(radius)) - mask``), the boundary target.
    """

    mask: torch.Tensor
    sdf: torch.Tensor
    boundary: torch.Tensor


def make_targets(mask: torch.Tensor, radius: float = 2, normalize: str = "image",
                 zero_boundary: bool = True) -> Targets:
    """Segmentation, signed-distance and boundary targets of ``mask``.

    Args:
        mask: (H, W) or (B, H, W) binary mask or instance label map (any
            integer/bool dtype), CPU or CUDA. Nonzero pixels are glands.
        radius: width of the boundary ring (the reference uses disk(2)).
        normalize, zero_boundary: see :func:`semimoe.ops.signed_distance`.

    All three come from one pass of the distance transform kernel on the
    mask's device (the reference computes two SciPy
    EDTs, a boundary and a dilation per image on the CPU).
    """
    check_image_batch(mask, "mask")
    return Targets(*int64_targets(mask, radius=radius, normalize=normalize,
                                  zero_boundary=zero_boundary))
