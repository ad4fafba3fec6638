"""The Semi-MoE expert: a plain 2-D U-Net that returns its last decoder
features and its own logits.

Layout (reference, docs/METHOD.md §1), for ``depth`` levels of widths
``base_width * 2**i``:

* encoder level i: (2x2 max-pool unless i = 0) + double 3x3 conv (+BN+ReLU);
* decoder level i (from the bottom up): nearest x2 upsample + 3x3 conv
  (+BN+ReLU) to width_i, concatenated with the skip of level i, double conv;
* head: 1x1 conv from the top decoder features (``base_width`` channels, full
  resolution) to ``out_channels`` logits.

``UNet(base_width=64, depth=5)`` is the reference network (64-128-256-512-1024,
34.5 M parameters with a 2-class head).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from ..ops.upsample_conv import transposed_weight, upsample_conv2d

__all__ = ["UNet", "DoubleConv", "UpConv", "TransposedUpConv", "init_weights"]


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=True), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DoubleConv(nn.Sequential):
    """(3x3 conv + BN + ReLU) x 2."""

    def __init__(self, cin: int, cout: int):
        super().__init__(*_conv_bn_relu(cin, cout), *_conv_bn_relu(cout, cout))


class UpConv(nn.Module):
    """Nearest x2 upsample then 3x3 conv + BN + ReLU (the reference ``up_conv``).

    The upsample and the convolution run as one
    :func:`semimoe.ops.upsample_conv2d` (on CPU: one stride-2 transposed
    convolution of the low-resolution input, 2.25x fewer multiply-adds; same
    function). ``transposed = False`` (an attribute, not saved) always
    materialises the upsample instead, e.g. for a graph traced on CPU but run
    on a GPU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.block = nn.Sequential(*_conv_bn_relu(cin, cout))
        self.transposed: Optional[bool] = None  # None: the op chooses per device

    def forward(self, x: Tensor) -> Tensor:
        conv = self.block[0]
        if self.transposed is False or not _plain_3x3(conv):  # upsample, then the block as it is
            return self.block(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = upsample_conv2d(x, conv.weight, conv.bias)
        for layer in list(self.block)[1:]:
            x = layer(x)
        return x


def _plain_3x3(c: nn.Module) -> bool:
    return (type(c) is nn.Conv2d and c.kernel_size == (3, 3) and c.padding == (1, 1) and c.stride == (1, 1)
            and c.dilation == (1, 1) and c.groups == 1 and c.padding_mode == "zeros")


class TransposedUpConv(nn.Module):
    """Inference form of :class:`UpConv`: the stride-2 transposed convolution
    with its 4x4 kernel combined once
    (:func:`semimoe.ops.upsample_conv.transposed_weight`), then the rest of
    the block. Used by :func:`semimoe.models.inference_copy` for CPU targets;
    build it with :meth:`from_upconv` from a trained block (no gradient flows
    to the combined weights).
    """

    def __init__(self, deconv: nn.ConvTranspose2d, post: nn.Module):
        super().__init__()
        self.deconv = deconv  # (Cin, Cout, 4, 4), stride 2, padding 1
        self.post = post  # what followed the 3x3 convolution (BatchNorm or Identity, ReLU)

    @staticmethod
    def convertible(up: nn.Module) -> bool:
        """True for an :class:`UpConv` whose first layer is a plain 3x3,
        padding-1 convolution (the only layout :meth:`from_upconv` rewrites)."""
        return isinstance(up, UpConv) and _plain_3x3(up.block[0])

    @classmethod
    @torch.no_grad()
    def from_upconv(cls, up: "UpConv") -> "TransposedUpConv":
        if not cls.convertible(up):
            raise ValueError("up must be an UpConv starting with a 3x3, padding-1, stride-1 Conv2d")
        c = up.block[0]
        deconv = nn.ConvTranspose2d(c.in_channels, c.out_channels, 4, stride=2, padding=1, bias=c.bias is not None)
        deconv = deconv.to(device=c.weight.device, dtype=c.weight.dtype)
        deconv.weight.copy_(transposed_weight(c.weight.double()))
        if c.bias is not None:
            deconv.bias.copy_(c.bias)
        deconv.requires_grad_(False)
        return cls(deconv, nn.Sequential(*list(up.block)[1:]))

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.deconv(x))


class UNet(nn.Module):
    """U-Net expert.

    Args:
        in_channels: image channels (3).
        out_channels: logits of the head (2 seg/boundary, 1 SDF).
        base_width: channels of the first level (reference 64).
        depth: number of resolution levels (reference 5); inputs must have
            H and W divisible by ``2**(depth-1)``.

    ``forward(x)`` with x float (B, in_channels, H, W) returns
    ``(features (B, base_width, H, W), logits (B, out_channels, H, W))``.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_width: int = 64, depth: int = 5):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        widths = [base_width * 2 ** i for i in range(depth)]
        self.depth = depth
        self.widths = widths
        self.enc = nn.ModuleList([DoubleConv(in_channels, widths[0])] +
                                 [DoubleConv(widths[i - 1], widths[i]) for i in range(1, depth)])
        # decoder modules listed bottom-up: up[j] goes from level depth-1-j to depth-2-j
        self.up = nn.ModuleList([UpConv(widths[i], widths[i - 1]) for i in range(depth - 1, 0, -1)])
        self.dec = nn.ModuleList([DoubleConv(2 * widths[i - 1], widths[i - 1]) for i in range(depth - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: Tensor, adapters: Optional[Sequence[nn.Module]] = None,
                taps: Optional[Dict[str, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        """``adapters`` (optional): one module per double-conv block (the
        ``depth`` encoder blocks, then the ``depth - 1`` decoder blocks), each
        applied to its block's output (IC-MoE-style adapters,
        :mod:`semimoe.models.icmoe`); ``taps`` (optional dict) receives the
        bottleneck features (``"bottleneck"``, after its adapter)."""
        x = self.features(x, adapters, taps)
        return x, self.head(x)

    def features(self, x: Tensor, adapters: Optional[Sequence[nn.Module]] = None,
                 taps: Optional[Dict[str, Tensor]] = None) -> Tensor:
        """The last decoder features (B, base_width, H, W) without the head;
        arguments as :meth:`forward`."""
        n_blocks = 2 * self.depth - 1
        if adapters is not None and len(adapters) != n_blocks:
            raise ValueError(f"adapters must hold one module per double-conv block ({n_blocks}), got {len(adapters)}")
        skips = []
        for i, block in enumerate(self.enc):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            if adapters is not None:
                x = adapters[i](x)
            skips.append(x)
        if taps is not None:
            taps["bottleneck"] = x
        for j, (up, dec) in enumerate(zip(self.up, self.dec)):
            skip = skips[self.depth - 2 - j]
            x = dec(torch.cat([skip, up(x)], dim=1))
            if adapters is not None:
                x = adapters[self.depth + j](x)
        return x


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """Reference initialisation: Kaiming-normal (fan-in, ReLU gain) conv and
    linear weights, zero biases, BatchNorm weight ~ N(1, 0.02) and bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
