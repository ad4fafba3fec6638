"""The MIL segmenter of IKD-MIL (He, Li, Zemp, arXiv 2407.10274): a CNN
encoder with a side output at every level, trained from image labels only.

Layout, for ``depth`` levels of widths ``base_width * 2**i`` (the encoder of
:class:`semimoe.models.unet.UNet`):

* level i: (2x2 max-pool unless i = 0) + :class:`~semimoe.models.unet.DoubleConv`;
* side output i: 1x1 conv to one logit channel, bilinearly upsampled
  (``align_corners=False``) to the input size (level 0 is already there);
* fusion: ``fused = sum_i w_i * sigmoid(side_i)`` with fixed weights
  ``w`` (``ModelConfig.side_weights`` normalised to sum 1, or equal).

There is no decoder and no boundary head. The losses that train it are in
:mod:`semimoe.losses.mil`.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from .semimoe import _FUSIONS, ModelConfig, ModelPredictor
from .unet import DoubleConv, init_weights

__all__ = ["MILSegmenter", "MILOutput", "MILPredictor"]


class MILOutput(NamedTuple):
    """Output of :meth:`MILSegmenter.forward` (shapes for input (B, C, H, W)).

    sides: ``depth`` tensors (B, 1, H, W), the side outputs' logits at full
        resolution, level 0 (finest) first; dtype of the model (or autocast).
    fused: (B, 1, H, W) float32 probability, ``sum_i w_i * sigmoid(sides[i])``.
    """

    sides: Tuple[Tensor, ...]
    fused: Tensor


class MILSegmenter(nn.Module):
    """Side-output CNN of IKD-MIL (module doc).

    ``forward(x)``: x float (B, in_channels, H, W), normalised with the
    dataset mean/std, H and W multiples of ``2**(depth-1)``; returns
    :class:`MILOutput`. Uses ``cfg.base_width``, ``cfg.depth``,
    ``cfg.in_channels`` and ``cfg.side_weights``; ``cfg.arch`` is recorded
    as ``"mil"``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = dataclasses.replace(cfg, arch="mil")
        widths = [cfg.base_width * 2 ** i for i in range(cfg.depth)]
        self.enc = nn.ModuleList([DoubleConv(cfg.in_channels, widths[0])] +
                                 [DoubleConv(widths[i - 1], widths[i]) for i in range(1, cfg.depth)])
        self.side = nn.ModuleList([nn.Conv2d(w, 1, kernel_size=1) for w in widths])
        init_weights(self)

    # ------------------------------------------------------------------ API
    @property
    def side_weights(self) -> Tuple[float, ...]:
        """The fusion weights, one per level, summing to 1 (fixed, not learned)."""
        sw = self.cfg.side_weights or (1.0,) * self.cfg.depth
        total = sum(sw)
        return tuple(w / total for w in sw)

    @property
    def size_multiple(self) -> int:
        """H and W of an input must be multiples of this: ``2**(depth-1)``."""
        return 2 ** (self.cfg.depth - 1)

    def set_fusion(self, fusion: str) -> "MILSegmenter":
        """Accepts ``"fused"`` / ``"reference"`` and does nothing else: this
        model has no gated-fusion op, so both paths are the same plain
        PyTorch. It exists so that export and the runtimes, which switch a
        :class:`~semimoe.models.SemiMoE` to the reference path, run it
        unchanged."""
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}")
        self.cfg.fusion = fusion
        return self

    def predictor(self) -> "MILPredictor":
        """Module x (B,3,H,W) -> (B,3,H,W): ``1 - fused``, ``fused``, zeros
        (the :class:`~semimoe.models.SemiMoEPredictor` contract). Shares this
        model's parameters."""
        return MILPredictor(self)

    def forward(self, x: Tensor) -> MILOutput:
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"H and W must be multiples of 2**(depth-1) = {m}, got {tuple(x.shape[-2:])}")
        size = x.shape[-2:]
        sides = []
        for i, (block, head) in enumerate(zip(self.enc, self.side)):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            s = head(x)
            if i > 0:
                s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            sides.append(s)
        fused = None
        for w, s in zip(self.side_weights, sides):
            term = w * torch.sigmoid(s.float())
            fused = term if fused is None else fused + term
        return MILOutput(tuple(sides), fused)


class MILPredictor(ModelPredictor):
    """Deployment view of a :class:`MILSegmenter`: x (B, 3, H, W) float ->
    (B, 3, H, W) float32: channel 0 = ``1 - fused``, channel 1 = ``fused``,
    channel 2 = zeros (no boundary head)."""

    def forward(self, x: Tensor) -> Tensor:
        p = self.model(x).fused.float()
        return torch.cat([1.0 - p, p, torch.zeros_like(p)], dim=1)
