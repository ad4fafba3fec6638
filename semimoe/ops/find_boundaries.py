"""Boundaries of label maps: scikit-image ``find_boundaries`` modes and the Semi-MoE ring.

Op: ``torch.ops.semimoe.find_boundaries(labels, mode, connectivity, radius, background)``.
Backends: CUDA kernel, C++ kernel, reference (pure PyTorch, any device).
"""
from __future__ import annotations

import torch

from .._backend import Backend, cpu_ext, cuda_ext, num_threads, select
from ._common import (DTYPE_CODE, EDT_RING, as_batch, binary_u8, check_choice, check_image_batch,
                      cpu_available, cuda_available, cuda_device_of, cuda_workspace,
                      why_not_cpu, why_not_cuda)
from .distance_transform import _check_radius, _ring_r2, ring_ref

MODES = ("thick", "inner", "outer", "ring")
_MODE_CODE = {"thick": 0, "inner": 1, "outer": 2}


def _dtype_max(dtype: torch.dtype) -> int:
    # scikit-image converts bool label maps to uint8 before using iinfo().max.
    return 255 if dtype == torch.bool else int(torch.iinfo(dtype).max)


def _kernel_labels(l3: torch.Tensor, background: int):
    """(labels for the kernel, dtype code, max_label) preserving skimage semantics.

    ``max_label`` is the maximum of the caller's dtype (it stands in for the
    background in ``outer`` mode, exactly as scikit-image does).
    """
    max_label = _dtype_max(l3.dtype)
    if l3.dtype == torch.bool:
        l3 = l3.view(torch.uint8)
    info = torch.iinfo(l3.dtype)
    # Other integer dtypes (and backgrounds outside the dtype) are widened first.
    widen = l3.dtype not in DTYPE_CODE or not (info.min <= background <= info.max)
    if widen:
        if l3.dtype == getattr(torch, "uint64", None):
            # torch has no max() for uint64 on CPU; values >= 2^63 read as negative int64.
            # 2^63 - 1 stands in for the background in "outer" mode, as 2^64 - 1 does in
            # scikit-image, so labels must stay below it for identical results.
            as_i64 = l3.contiguous().view(torch.int64)
            if bool(((as_i64 < 0) | (as_i64 == 2 ** 63 - 1)).any()):
                raise ValueError("labels: uint64 label values must be below 2^63 - 1")
            max_label = 2 ** 63 - 1
            l3 = as_i64
        else:
            l3 = l3.to(torch.int64)
    return l3.contiguous(), DTYPE_CODE[l3.dtype], min(max_label, 2 ** 63 - 1)


# ------------------------------------------------------------------ reference
def _neighbours(l3: torch.Tensor, connectivity: int):
    """Neighbour label maps (replicate padding == ignoring out-of-image pixels)."""
    B, H, W = l3.shape
    ys = torch.arange(H, device=l3.device)
    xs = torch.arange(W, device=l3.device)
    offs = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            if (abs(dy) + abs(dx) <= connectivity)]
    for dy, dx in offs:
        yi = (ys + dy).clamp(0, H - 1)
        xi = (xs + dx).clamp(0, W - 1)
        yield l3[:, yi][:, :, xi]


def find_boundaries_ref(labels: torch.Tensor, mode: str = "thick", connectivity: int = 1,
                        radius: float = 2, background: int = 0) -> torch.Tensor:
    """Reference of :func:`find_boundaries` in plain PyTorch (integer math, any device)."""
    check_image_batch(labels, "labels")
    check_choice(mode, "mode", MODES)
    if mode == "ring":
        return ring_ref((labels != background), radius)
    l3 = as_batch(labels)
    if l3.dtype == torch.bool:
        l3 = l3.to(torch.uint8)
    # uint64 -> int64 bit-for-bit: labels are below 2^63 (checked by the kernel path).
    l3 = l3.view(torch.int64) if l3.dtype == getattr(torch, "uint64", None) else l3.to(torch.int64)
    if l3.numel() == 0:
        out = torch.zeros(l3.shape, dtype=torch.bool, device=labels.device)
        return out if labels.dim() == 3 else out[0]
    nb = torch.stack(list(_neighbours(l3, connectivity)))
    thick = nb.amax(0) != nb.amin(0)
    if mode == "thick":
        out = thick
    elif mode == "inner":
        out = thick & (l3 != background)
    else:
        # uint64 maxima do not fit int64: the kernel uses 2^63 - 1 (labels must stay below it).
        max_label = min(_dtype_max(labels.dtype), 2 ** 63 - 1)
        is_bg = l3 == background
        inv = torch.where(is_bg, torch.full_like(l3, max_label), l3)
        nb8 = torch.stack(list(_neighbours(l3, 2)))
        nb8_inv = torch.stack(list(_neighbours(inv, 2)))
        adjacent = (nb8.amax(0) != nb8_inv.amin(0)) & ~is_bg
        out = thick & (is_bg | adjacent)
    return out if labels.dim() == 3 else out[0]


# --------------------------------------------------------------- kernels
def _fb_cpu(l3, mode, connectivity, radius, background):
    B, H, W = l3.shape
    out = torch.empty((B, H, W), dtype=torch.bool)
    if mode == "ring":
        m = binary_u8(l3 != background)
        cpu_ext().ring(m.data_ptr(), out.data_ptr(), B, H, W, _ring_r2(radius), num_threads(B * H * W))
        return out
    lab, code, max_label = _kernel_labels(l3, background)
    cpu_ext().find_boundaries(lab.data_ptr(), code, out.data_ptr(), B, H, W, _MODE_CODE[mode],
                              connectivity, background, max_label, num_threads(B * H * W))
    return out


def _fb_cuda(l3, mode, connectivity, radius, background):
    B, H, W = l3.shape
    out = torch.empty((B, H, W), dtype=torch.bool, device=l3.device)
    with cuda_device_of(l3) as stream:
        if mode == "ring":
            m = binary_u8(l3 != background)
            ws = cuda_workspace(EDT_RING, B, H, W, l3.device)
            cuda_ext().ring(m.data_ptr(), out.data_ptr(), B, H, W, _ring_r2(radius),
                            ws.data_ptr(), ws.numel(), stream)
        else:
            lab, code, max_label = _kernel_labels(l3, background)
            cuda_ext().find_boundaries(lab.data_ptr(), code, out.data_ptr(), B, H, W,
                                       _MODE_CODE[mode], connectivity, background, max_label,
                                       stream)
    return out


BACKENDS = {
    "find_boundaries": [
        Backend("cuda", why_not_cuda, _fb_cuda, available=cuda_available),
        Backend("cpu", why_not_cpu, _fb_cpu, available=cpu_available),
        Backend("reference", lambda *a: None, find_boundaries_ref, fast=False),
    ],
}


def _check_args(labels, mode, connectivity, radius, background):
    check_image_batch(labels, "labels")
    check_choice(mode, "mode", MODES)
    if isinstance(connectivity, bool) or connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    _check_radius(radius)
    if isinstance(background, bool) or not isinstance(background, int):
        raise TypeError(f"background must be an int, got {type(background).__name__}")


@torch.library.custom_op("semimoe::find_boundaries", mutates_args=())
def _find_boundaries_op(labels: torch.Tensor, mode: str, connectivity: int, radius: float,
                        background: int) -> torch.Tensor:
    _check_args(labels, mode, connectivity, radius, background)
    l3 = as_batch(labels)
    out = select("find_boundaries", BACKENDS["find_boundaries"], l3).run(
        l3, mode, connectivity, radius, background)
    return out if labels.dim() == 3 else out[0]


@_find_boundaries_op.register_fake
def _(labels, mode, connectivity, radius, background):
    _check_args(labels, mode, connectivity, radius, background)
    return labels.new_empty(labels.shape, dtype=torch.bool)


def find_boundaries(labels: torch.Tensor, mode: str = "thick", connectivity: int = 1,
                    radius: float = 2, background: int = 0) -> torch.Tensor:
    """Boundaries of a label map, equal to ``skimage.segmentation.find_boundaries``.

    Args:
        labels: (H, W) or (B, H, W) label map (instance labels or a binary
            mask) of any integer or bool dtype, any strides, CPU or CUDA.
        mode: ``"thick"``, ``"inner"``, ``"outer"`` -- exactly scikit-image's
            modes, touching instances and image-border behaviour included
            (out-of-image pixels are ignored) -- or ``"ring"``: the Semi-MoE
            boundary target ``dilation(fg, disk(radius)) & ~fg`` with
            ``fg = labels != background`` (a ring just outside each object;
            touching instances are not separated in this mode).
        connectivity: 1 (4-neighbourhood) or 2 (8-neighbourhood), as
            scikit-image; unused by ``"ring"``.
        radius: disk radius of ``"ring"`` (pixels at Euclidean distance
            ``<= radius`` from the foreground), ignored by the other modes.
        background: the background label.

    Returns:
        bool tensor of ``labels``' shape and device.
    """
    _check_args(labels, mode, connectivity, radius, background)
    return torch.ops.semimoe.find_boundaries(labels, mode, int(connectivity), float(radius),
                                             int(background))
