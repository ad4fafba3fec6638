"""Input validation and device plumbing shared by the mask/label ops."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .._backend import cpu_ext, cuda_ext, extension_error

# Integer (and bool) dtypes accepted as masks / label maps.
INT_DTYPES = tuple(
    d for d in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                getattr(torch, "uint16", None), getattr(torch, "uint32", None),
                getattr(torch, "uint64", None))
    if d is not None
)
MAX_SIDE = 1 << 20


def check_image_batch(x, name: str) -> None:
    """Raise TypeError/ValueError unless ``x`` is an integer/bool (H, W) or (B, H, W) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INT_DTYPES:
        raise TypeError(
            f"{name} must have an integer or bool dtype, got {x.dtype}; "
            f"threshold float masks first (e.g. {name} > 0.5)")
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be 2-D (H, W) or 3-D (B, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] >= MAX_SIDE or x.shape[-2] >= MAX_SIDE:
        raise ValueError(f"{name}: image sides must be below 2^20, got {tuple(x.shape[-2:])}")


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def as_batch(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 3 else x.unsqueeze(0)


# Integer dtypes the CPU kernels read as they are (bool is read as uint8).
DTYPE_CODE = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4}


def binary_u8(mask3: torch.Tensor) -> torch.Tensor:
    """Dense uint8 (B, H, W) whose nonzero entries are the foreground.

    bool/uint8 contiguous masks are used as they are (no copy); the kernels
    test ``!= 0``, so uint8 masks need not be 0/1.
    """
    if mask3.dtype == torch.bool:
        mask3 = mask3.contiguous()
        return mask3.view(torch.uint8)
    if mask3.dtype == torch.uint8:
        return mask3.contiguous()
    return (mask3 != 0).contiguous().view(torch.uint8)


# ------------------------------------------------------------ backend tests
def why_not_cpu(x: torch.Tensor, *_) -> Optional[str]:
    if x.device.type != "cpu":
        return f"tensor on {x.device.type}"
    if cpu_ext() is None:
        return f"semimoe._C not built ({extension_error('_C')})"
    return None


def why_not_cuda(x: torch.Tensor, *_) -> Optional[str]:
    if x.device.type != "cuda":
        return f"tensor on {x.device.type}"
    if cuda_ext() is None:
        return f"semimoe._C_cuda not built ({extension_error('_C_cuda')})"
    return None


def cpu_available() -> Optional[str]:
    return None if cpu_ext() is not None else f"semimoe._C not built ({extension_error('_C')})"


def cuda_available() -> Optional[str]:
    if cuda_ext() is None:
        return f"semimoe._C_cuda not built ({extension_error('_C_cuda')})"
    if not torch.cuda.is_available():
        return "built, but torch sees no CUDA device"
    return None


# Workspace kinds of the CUDA distance-transform kernels (EdtKind in ops_cuda.h).
EDT_DISTANCE, EDT_SIGNED, EDT_RING = 0, 1, 2


def cuda_workspace(kind: int, B: int, H: int, W: int, device) -> torch.Tensor:
    """Scratch bytes for the CUDA distance-transform kernels, from PyTorch's
    caching allocator (stream-ordered, so calls stay capturable in CUDA graphs)."""
    nbytes = cuda_ext().edt_workspace_bytes(kind, B, H, W)
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)


@contextlib.contextmanager
def cuda_device_of(x: torch.Tensor):
    with torch.cuda.device(x.device):
        yield torch.cuda.current_stream(x.device).cuda_stream
