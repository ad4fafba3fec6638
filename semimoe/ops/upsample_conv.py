"""Nearest x2 upsample followed by a 3x3 convolution (the U-Net decoder's
``up_conv``), computed on the low-resolution input: ``upsample_conv2d``.

After a nearest x2 upsample, output row ``2i + a`` of a 3x3, padding-1
convolution reads upsampled rows ``2i + a - 1 .. 2i + a + 1``, i.e. the two
low-resolution rows ``i - 1 + a`` and ``i + a``, with the kernel rows {0}
and {1, 2} summed for ``a = 0`` and {0, 1} and {2} for ``a = 1``; columns
likewise. So each output parity ("phase") (a, b) is a 2x2 convolution of the
input with summed taps, and the four run as one 2x2 convolution with four
times the output channels (padding 1: phase (a, b) of output pixel (i, j) is
that convolution's output at (i + a, j + b)), then interleaved. That is 16
instead of 36 multiply-adds per input pixel and channel pair, and the
upsampled copy is never made. Same function (equal up to float rounding),
same gradients; it is a composition of PyTorch ops, differentiable by
autograd.

Backends, first that can run wins (``SEMIMOE_BACKEND`` forces one):
  phases     CPU tensors (measured faster with oneDNN; the GPU libraries
             have not been measured, so CUDA keeps the reference)
  reference  ``F.interpolate(x, scale_factor=2)`` then ``F.conv2d``
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import Backend, select

# Kernel taps that land on the first and second low-resolution row (column)
# for output parity 0 and 1.
PHASE_TAPS = {0: ((0,), (1, 2)), 1: ((0, 1), (2,))}


def phase_weight(weight: Tensor) -> Tensor:
    """(Cout, Cin, 3, 3) -> (4 * Cout, Cin, 2, 2): phase g = 2a + b holds
    output channels ``g * Cout .. (g + 1) * Cout``. Differentiable."""
    kernels = []
    for a in (0, 1):
        rows = [weight[:, :, list(t)].sum(2) for t in PHASE_TAPS[a]]  # 2 x (Cout, Cin, 3)
        for b in (0, 1):
            kernels.append(torch.stack([torch.stack([r[:, :, list(t)].sum(2) for t in PHASE_TAPS[b]], -1)
                                        for r in rows], -2))
    return torch.cat(kernels)


def interleave_phases(y: Tensor, out_channels: int) -> Tensor:
    """(B, 4 * Cout, h + 1, w + 1) phase-convolution output -> (B, Cout, 2h, 2w),
    in the memory format of ``y`` (channels-last stays channels-last)."""
    B, _, h1, w1 = y.shape
    h, w, co = h1 - 1, w1 - 1, out_channels
    fmt = torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() \
        else torch.contiguous_format
    out = torch.empty((B, co, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=fmt)
    for a in (0, 1):
        for b in (0, 1):
            g = 2 * a + b
            out[:, :, a::2, b::2] = y[:, g * co:(g + 1) * co, a:a + h, b:b + w]
    return out


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor (B, Cin, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(weight, Tensor) or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError("weight must be a (Cout, Cin, 3, 3) tensor, got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has Cin={weight.shape[1]} but x has {x.shape[1]} channels")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def upsample_conv2d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Reference: nearest x2 upsample, then the 3x3, padding-1 convolution."""
    _check(x, weight, bias)
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


def _phases(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    y = F.conv2d(x, phase_weight(weight), None if bias is None else bias.repeat(4), padding=1)
    return interleave_phases(y, weight.shape[0])


BACKENDS = {
    "upsample_conv2d": (
        Backend("phases", lambda x, *a: None if x.device.type == "cpu" else f"{x.device.type} tensor "
                "(measured on CPU only)", _phases),
        Backend("reference", lambda *a: None, upsample_conv2d_ref),
    ),
}


def upsample_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias,
    padding=1)`` for a (Cout, Cin, 3, 3) ``weight``: x (B, Cin, H, W) ->
    (B, Cout, 2H, 2W). See the module docstring for the backends."""
    _check(x, weight, bias)
    return select("upsample_conv2d", BACKENDS["upsample_conv2d"], x).run(x, weight, bias)
