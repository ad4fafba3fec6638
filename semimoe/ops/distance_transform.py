"""Exact Euclidean distance transform and the Semi-MoE signed distance field.

Ops (``torch.ops.semimoe.*``):
  distance_transform(mask)                                  -> float32 EDT
  signed_distance(mask, normalize, zero_boundary)           -> float32 SDF
  sdf_targets(mask, normalize, zero_boundary, radius)       -> (SDF, ring)

All three share one column pass and one row pass per image in the compiled
kernels (see csrc/ops/cpu/row_envelope.h and csrc/ops/common/edt_line.h).
Backends, in order: CUDA kernel (CUDA tensors), C++ kernel (CPU tensors),
reference (SciPy, any device; slow, warns once when used as a fallback).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

from .._backend import Backend, cpu_ext, cuda_ext, num_threads, select
from ._common import (DTYPE_CODE, EDT_DISTANCE, EDT_SIGNED, as_batch, binary_u8, check_choice,
                      check_image_batch, cpu_available, cuda_available, cuda_device_of,
                      cuda_workspace, why_not_cpu, why_not_cuda)

NORMALIZE = ("image", "none")
_NORM_CODE = {"none": 0, "image": 1}


def _ring_r2(radius: float) -> int:
    # A background pixel at squared distance d2 (an integer) is in disk(radius)
    # iff d2 <= radius², i.e. d2 <= floor(radius²). Squared distances stay below
    # 2^41 (sides < 2^20), so clamping at 2^62 changes nothing but keeps int64.
    return min(int(math.floor(float(radius) ** 2 + 1e-9)), 1 << 62)


def _check_radius(radius) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"radius must be a number, got {type(radius).__name__}")
    if not (radius >= 0) or math.isinf(radius):
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")


def _check_sdf_args(mask, normalize, zero_boundary, *radius) -> None:
    """The argument checks of signed_distance, sdf_targets and int64_targets
    (the last two pass their ``radius`` too)."""
    check_image_batch(mask, "mask")
    check_choice(normalize, "normalize", NORMALIZE)
    for r in radius:
        _check_radius(r)
    if not isinstance(zero_boundary, bool):
        raise TypeError(f"zero_boundary must be a bool, got {type(zero_boundary).__name__}")


# ------------------------------------------------------------------ reference
def _edt_scipy(m: np.ndarray) -> np.ndarray:
    """float64 EDT of one image; +inf when there is no zero pixel."""
    from scipy import ndimage

    if m.size == 0:
        return np.zeros(m.shape, np.float64)
    if m.all():
        return np.full(m.shape, np.inf)
    return ndimage.distance_transform_edt(m)


def _inner_boundary_np(fg: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-connected background neighbour inside the image."""
    nb_bg = np.zeros_like(fg)
    nb_bg[1:, :] |= ~fg[:-1, :]
    nb_bg[:-1, :] |= ~fg[1:, :]
    nb_bg[:, 1:] |= ~fg[:, :-1]
    nb_bg[:, :-1] |= ~fg[:, 1:]
    return fg & nb_bg


def distance_transform_ref(mask: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`distance_transform` (SciPy per image, float64 then float32)."""
    check_image_batch(mask, "mask")
    m3 = as_batch(mask).detach().cpu().numpy() != 0
    out = np.stack([_edt_scipy(m) for m in m3]) if len(m3) else np.zeros(m3.shape)
    out = torch.from_numpy(out.astype(np.float32)).to(mask.device)
    return out if mask.dim() == 3 else out[0]


def _sdf_np(fg: np.ndarray, normalize: str, zero_boundary: bool) -> np.ndarray:
    inside = _edt_scipy(fg)
    outside = _edt_scipy(~fg)
    has_fg, has_bg = fg.any(), (~fg).any()
    if normalize == "image":
        if has_fg and has_bg:
            sdf = np.where(fg, inside / inside.max(), -outside / outside.max())
        else:
            sdf = np.where(fg, 1.0, -1.0)
    else:
        sdf = np.where(fg, inside, -outside)
    if zero_boundary:
        sdf[_inner_boundary_np(fg)] = 0.0
    return sdf


def signed_distance_ref(mask: torch.Tensor, normalize: str = "image",
                        zero_boundary: bool = True) -> torch.Tensor:
    """Reference of :func:`signed_distance` (two SciPy EDTs per image, float64)."""
    check_image_batch(mask, "mask")
    check_choice(normalize, "normalize", NORMALIZE)
    m3 = as_batch(mask).detach().cpu().numpy() != 0
    out = np.stack([_sdf_np(m, normalize, zero_boundary) for m in m3]) if len(m3) else \
        np.zeros(m3.shape)
    out = torch.from_numpy(out.astype(np.float32)).to(mask.device)
    return out if mask.dim() == 3 else out[0]


def ring_ref(mask: torch.Tensor, radius: float = 2) -> torch.Tensor:
    """Reference ring target: ``dilation(mask > 0, disk(radius)) & ~(mask > 0)``.

    Pure PyTorch (a float64 convolution with the disk), any device.
    """
    check_image_batch(mask, "mask")
    _check_radius(radius)
    fg = as_batch(mask) != 0
    r = int(math.floor(radius))
    ax = torch.arange(-r, r + 1, dtype=torch.float64, device=mask.device)
    disk = ((ax[:, None] ** 2 + ax[None, :] ** 2) <= float(radius) ** 2).to(torch.float64)
    if fg.numel() == 0:
        out = torch.zeros_like(fg)
    else:
        hit = torch.nn.functional.conv2d(fg[:, None].to(torch.float64), disk[None, None],
                                         padding=r)[:, 0] > 0.5
        out = hit & ~fg
    return out if mask.dim() == 3 else out[0]


# --------------------------------------------------------------- kernels
def _dt_cpu(m3: torch.Tensor) -> torch.Tensor:
    B, H, W = m3.shape
    m = binary_u8(m3)
    out = torch.empty((B, H, W), dtype=torch.float32)
    cpu_ext().distance_transform(m.data_ptr(), out.data_ptr(), B, H, W, num_threads(B * H * W))
    return out


def _dt_cuda(m3: torch.Tensor) -> torch.Tensor:
    B, H, W = m3.shape
    m = binary_u8(m3)
    out = torch.empty((B, H, W), dtype=torch.float32, device=m3.device)
    with cuda_device_of(m3) as stream:
        ws = cuda_workspace(EDT_DISTANCE, B, H, W, m3.device)
        cuda_ext().distance_transform(m.data_ptr(), out.data_ptr(), B, H, W, ws.data_ptr(),
                                      ws.numel(), stream)
    return out


def _sdf_cpu(m3, normalize, zero_boundary, radius):
    B, H, W = m3.shape
    m = binary_u8(m3)
    sdf = torch.empty((B, H, W), dtype=torch.float32)
    ring = torch.empty((B, H, W), dtype=torch.bool) if radius is not None else None
    cpu_ext().signed_distance(m.data_ptr(), sdf.data_ptr(), 0 if ring is None else ring.data_ptr(),
                              B, H, W, _NORM_CODE[normalize], zero_boundary,
                              _ring_r2(radius or 0), num_threads(B * H * W))
    return sdf, ring


def _sdf_cuda(m3, normalize, zero_boundary, radius):
    B, H, W = m3.shape
    m = binary_u8(m3)
    sdf = torch.empty((B, H, W), dtype=torch.float32, device=m3.device)
    ring = (torch.empty((B, H, W), dtype=torch.bool, device=m3.device)
            if radius is not None else None)
    with cuda_device_of(m3) as stream:
        ws = cuda_workspace(EDT_SIGNED, B, H, W, m3.device)
        cuda_ext().signed_distance(m.data_ptr(), sdf.data_ptr(),
                                   0 if ring is None else ring.data_ptr(), B, H, W,
                                   _NORM_CODE[normalize], zero_boundary, _ring_r2(radius or 0),
                                   ws.data_ptr(), ws.numel(), stream)
    return sdf, ring


def _sdf_reference(m3, normalize, zero_boundary, radius):
    sdf = signed_distance_ref(m3, normalize, zero_boundary)
    ring = ring_ref(m3, radius) if radius is not None else None
    return sdf, ring


BACKENDS = {
    "distance_transform": [
        Backend("cuda", why_not_cuda, _dt_cuda, available=cuda_available),
        Backend("cpu", why_not_cpu, _dt_cpu, available=cpu_available),
        Backend("reference", lambda *a: None, distance_transform_ref, fast=False),
    ],
    "signed_distance": [
        Backend("cuda", why_not_cuda, _sdf_cuda, available=cuda_available),
        Backend("cpu", why_not_cpu, _sdf_cpu, available=cpu_available),
        Backend("reference", lambda *a: None, _sdf_reference, fast=False),
    ],
}


# ------------------------------------------------------------- custom ops
@torch.library.custom_op("semimoe::distance_transform", mutates_args=())
def _distance_transform_op(mask: torch.Tensor) -> torch.Tensor:
    check_image_batch(mask, "mask")
    m3 = as_batch(mask)
    out = select("distance_transform", BACKENDS["distance_transform"], m3).run(m3)
    return out if mask.dim() == 3 else out[0]


@_distance_transform_op.register_fake
def _(mask):
    check_image_batch(mask, "mask")
    return mask.new_empty(mask.shape, dtype=torch.float32)


def _sdf_dispatch(mask, normalize, zero_boundary, radius):
    check_image_batch(mask, "mask")
    check_choice(normalize, "normalize", NORMALIZE)
    m3 = as_batch(mask)
    sdf, ring = select("signed_distance", BACKENDS["signed_distance"], m3).run(
        m3, normalize, zero_boundary, radius)
    if mask.dim() == 2:
        sdf = sdf[0]
        ring = ring[0] if ring is not None else None
    return sdf, ring


@torch.library.custom_op("semimoe::signed_distance", mutates_args=())
def _signed_distance_op(mask: torch.Tensor, normalize: str, zero_boundary: bool) -> torch.Tensor:
    return _sdf_dispatch(mask, normalize, zero_boundary, None)[0]


@_signed_distance_op.register_fake
def _(mask, normalize, zero_boundary):
    check_image_batch(mask, "mask")
    return mask.new_empty(mask.shape, dtype=torch.float32)


@torch.library.custom_op("semimoe::sdf_targets", mutates_args=())
def _sdf_targets_op(mask: torch.Tensor, normalize: str, zero_boundary: bool,
                    radius: float) -> Tuple[torch.Tensor, torch.Tensor]:
    _check_radius(radius)
    return _sdf_dispatch(mask, normalize, zero_boundary, radius)


@_sdf_targets_op.register_fake
def _(mask, normalize, zero_boundary, radius):
    check_image_batch(mask, "mask")
    return (mask.new_empty(mask.shape, dtype=torch.float32),
            mask.new_empty(mask.shape, dtype=torch.bool))


# ---------------------------------------------------------------- public API
def distance_transform(mask: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance of each foreground pixel to the nearest background pixel.

    Same semantics as ``scipy.ndimage.distance_transform_edt(mask)`` (isotropic
    unit spacing): foreground is ``mask != 0``, background pixels get 0, and
    out-of-image pixels are not background.

    Args:
        mask: (H, W) or (B, H, W) tensor of any integer or bool dtype, any
            strides, on CPU or CUDA. Images are independent.

    Returns:
        float32 tensor of ``mask``'s shape and device. An image with no
        background pixel has no finite distance: it is filled with ``+inf``
        (SciPy returns meaningless values there).
    """
    check_image_batch(mask, "mask")
    return torch.ops.semimoe.distance_transform(mask)


def signed_distance(mask: torch.Tensor, normalize: str = "image",
                    zero_boundary: bool = True) -> torch.Tensor:
    """Semi-MoE signed distance field: positive inside the foreground.

    With ``inside`` = EDT of the foreground and ``outside`` = EDT of the
    background (``mask != 0`` is foreground)::

        normalize="image": sdf = inside / max(inside) - outside / max(outside)  (per image)
        normalize="none":  sdf = inside - outside                               (pixels)

    and, with ``zero_boundary``, pixels of the inner boundary (foreground
    pixels with a 4-connected background neighbour) are set to 0.

    Images with a single class have no finite distances and are defined as:
    all foreground -> ``+1`` everywhere (``+inf`` with ``normalize="none"``),
    all background -> ``-1`` everywhere (``-inf`` with ``normalize="none"``).

    Args:
        mask: (H, W) or (B, H, W) integer/bool tensor, CPU or CUDA, any strides.
        normalize: ``"image"`` (range [-1, 1], as the Semi-MoE reference) or ``"none"``.
        zero_boundary: set the inner boundary to 0 (the reference does).

    Returns:
        float32 tensor of ``mask``'s shape and device.
    """
    _check_sdf_args(mask, normalize, zero_boundary)
    return torch.ops.semimoe.signed_distance(mask, normalize, zero_boundary)


def sdf_targets(mask: torch.Tensor, radius: float = 2, normalize: str = "image",
                zero_boundary: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Signed distance field and ring boundary target from one kernel pass.

    Returns ``(signed_distance(mask, normalize, zero_boundary),
    find_boundaries(mask, mode="ring", radius=radius))`` -- float32 and bool
    tensors of ``mask``'s shape -- at the cost of one distance transform.
    """
    _check_sdf_args(mask, normalize, zero_boundary, radius)
    return torch.ops.semimoe.sdf_targets(mask, normalize, zero_boundary, float(radius))


def int64_targets(mask: torch.Tensor, radius: float = 2, normalize: str = "image",
                  zero_boundary: bool = True
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``((mask != 0).long(), sdf, ring.long())`` with ``(sdf, ring) = sdf_targets(...)``.

    The training-target form of :func:`sdf_targets`. On CPU one kernel call
    reads the label map as it is and writes all three tensors (no conversion
    passes in PyTorch, whose threads spin-wait on busy machines); elsewhere it
    is :func:`sdf_targets` followed by the conversions.
    """
    _check_sdf_args(mask, normalize, zero_boundary, radius)
    m3 = as_batch(mask)
    fused = mask.dtype in DTYPE_CODE or mask.dtype == torch.bool
    if fused and select("signed_distance", BACKENDS["signed_distance"], m3).name == "cpu":
        m3 = m3.contiguous()
        code = 0 if m3.dtype == torch.bool else DTYPE_CODE[m3.dtype]
        B, H, W = m3.shape
        seg = torch.empty((B, H, W), dtype=torch.int64)
        sdf = torch.empty((B, H, W), dtype=torch.float32)
        ring = torch.empty((B, H, W), dtype=torch.int64)
        cpu_ext().targets(m3.data_ptr(), code, seg.data_ptr(), sdf.data_ptr(), ring.data_ptr(),
                          B, H, W, _NORM_CODE[normalize], zero_boundary, _ring_r2(radius),
                          num_threads(B * H * W))
        out = (seg, sdf, ring)
        return out if mask.dim() == 3 else tuple(t[0] for t in out)
    sdf, ring = torch.ops.semimoe.sdf_targets(mask, normalize, zero_boundary, float(radius))
    return (mask != 0).long(), sdf, ring.long()
