"""Nearest x2 upsample followed by a 3x3 convolution (the U-Net decoder's
``up_conv``), computed from the low-resolution input: ``upsample_conv2d``.

After a nearest x2 upsample, output row ``2i + a`` of a 3x3, padding-1
convolution reads upsampled rows ``2i + a - 1 .. 2i + a + 1``, i.e. only the
two low-resolution rows ``i - 1 + a`` and ``i + a``: kernel rows {0} and
{1, 2} summed for ``a = 0``, {0, 1} and {2} for ``a = 1``; columns likewise.
That is a transposed convolution with stride 2, padding 1 and a 4x4 kernel
whose tap ``k`` (per axis) sums the 3x3 taps ``T(k)``: T(0) = {2},
T(1) = {1, 2}, T(2) = {0, 1}, T(3) = {0} (output ``o`` receives input ``i``
through tap ``k = o + 1 - 2i``). 16 instead of 36 multiply-adds per input
pixel and channel pair, one standard op (oneDNN deconvolution, ONNX
``ConvTranspose``), and the upsampled copy is never made. Same function
(equal up to float rounding), same gradients (autograd through the kernel
sums).

Backends, first that can run wins (``SEMIMOE_BACKEND`` forces one):
  transposed  CPU tensors (measured faster with oneDNN; the GPU libraries
              have not been measured, so CUDA keeps the reference)
  reference   ``F.interpolate(x, scale_factor=2)`` then ``F.conv2d``
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._backend import Backend, select

# TAPS[k, d] = 1 when tap k of the 4x4 transposed kernel (per axis) sums 3x3 tap d.
_TAPS = ((0., 0., 1.), (0., 1., 1.), (1., 1., 0.), (1., 0., 0.))


def transposed_weight(weight: Tensor) -> Tensor:
    """(Cout, Cin, 3, 3) -> the (Cin, Cout, 4, 4) kernel of the equivalent
    stride-2, padding-1 transposed convolution. Differentiable."""
    m = torch.tensor(_TAPS, dtype=weight.dtype, device=weight.device)
    return torch.einsum("kd,le,oide->iokl", m, m, weight)


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
    return _reference(x, weight, bias)


def _reference(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


def _transposed(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    return F.conv_transpose2d(x, transposed_weight(weight), bias, stride=2, padding=1)


BACKENDS = {
    "upsample_conv2d": (
        Backend("transposed", lambda x, *a: None if x.device.type == "cpu" else f"{x.device.type} tensor "
                "(measured on CPU only)", _transposed),
        Backend("reference", lambda *a: None, _reference),
    ),
}


def upsample_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias,
    padding=1)`` for a (Cout, Cin, 3, 3) ``weight``: x (B, Cin, H, W) ->
    (B, Cout, 2H, 2W). See the module docstring for the backends."""
    _check(x, weight, bias)
    return select("upsample_conv2d", BACKENDS["upsample_conv2d"], x).run(x, weight, bias)
