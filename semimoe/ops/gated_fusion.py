"""Fused gating and fusion of expert feature maps: ``semimoe::gated_fusion``.

Semi-MoE fuses the K experts' last feature maps once per task t with a
softmax gate over the experts:

    out[b, t] = sum_k softmax_k(gate_logits[b, t])[k] * features[b, k]

The gate is one weight per expert and image (the paper's gating network) or
one per pixel (semimoe's spatial gating). The reference concatenates, then
multiplies and sums, moving ~12-15x the minimum bytes; the Triton backend
reads each feature once and writes each output once, forward and backward.

Backends, first that can run wins (``SEMIMOE_BACKEND`` forces one):
  triton     CUDA tensors, fp32/bf16/fp16 features, triton importable
  torch      any device: batched matmuls / fused multiply-adds, fp32
             accumulation (float64 when given float64): the CPU path
  reference  the plain reference math, only when forced
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

from .._backend import Backend, select, warn_once

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------ checks
def check_inputs(features, gate_logits, grad_out=None) -> None:
    """The op's input validator, used by every backend (and the Triton launchers).

    Raises TypeError / ValueError naming the argument and what was expected.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if not isinstance(gate_logits, Tensor):
        raise TypeError(f"gate_logits must be a torch.Tensor, got {type(gate_logits).__name__}")
    if features.dim() != 5:
        raise ValueError(f"features must be 5-D (B, K, C, H, W), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"features must have a floating-point dtype, got {features.dtype}")
    if gate_logits.dim() not in (3, 5):
        raise ValueError("gate_logits must be 3-D (B, T, K) (one gate per image) or 5-D (B, T, K, H, W) "
                         f"(one per pixel), got shape {tuple(gate_logits.shape)}")
    if not gate_logits.is_floating_point():
        raise TypeError(f"gate_logits must have a floating-point dtype, got {gate_logits.dtype}")
    if gate_logits.device != features.device:
        raise ValueError(f"gate_logits must be on the same device as features ({features.device}), "
                         f"got {gate_logits.device}")
    B, K, C, H, W = features.shape
    if K < 1:
        raise ValueError(f"features must hold at least one expert (K >= 1), got shape {tuple(features.shape)}")
    if gate_logits.shape[0] != B:
        raise ValueError(f"gate_logits must have batch size B={B} like features, got shape "
                         f"{tuple(gate_logits.shape)}")
    if gate_logits.shape[2] != K:
        raise ValueError(f"gate_logits must have K={K} expert logits along dim 2 (features has K={K}), "
                         f"got shape {tuple(gate_logits.shape)}")
    if gate_logits.dim() == 5 and tuple(gate_logits.shape[3:]) != (H, W):
        raise ValueError(f"gate_logits (per pixel) must have spatial size (H, W)=({H}, {W}) like features, "
                         f"got shape {tuple(gate_logits.shape)}")
    if grad_out is None:
        return
    expected = (B, gate_logits.shape[1], C, H, W)
    if not isinstance(grad_out, Tensor) or tuple(grad_out.shape) != expected:
        got = tuple(grad_out.shape) if isinstance(grad_out, Tensor) else type(grad_out).__name__
        raise ValueError(f"grad_out must have shape (B, T, C, H, W)={expected}, got {got}")
    if not grad_out.is_floating_point():
        raise TypeError(f"grad_out must have a floating-point dtype, got {grad_out.dtype}")
    if grad_out.device != features.device:
        raise ValueError(f"grad_out must be on the same device as features ({features.device}), "
                         f"got {grad_out.device}")


def _acc_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# --------------------------------------------------------------- reference
def gated_fusion_ref(features: Tensor, gate_logits: Tensor) -> Tensor:
    """Reference: softmax over experts, broadcast multiply, sum (plain PyTorch).

    Same contract as :func:`gated_fusion`; computed in fp32 (float64 when an
    input is float64), returned in ``features.dtype``. Differentiable through
    autograd. Materialises a (B, T, K, C, H, W) product.
    """
    check_inputs(features, gate_logits)
    acc = _acc_dtype(features, gate_logits)
    w = torch.softmax(gate_logits.to(acc), dim=2)
    if w.dim() == 3:
        w = w[..., None, None]
    out = (w.unsqueeze(3) * features.to(acc).unsqueeze(1)).sum(dim=2)
    return out.to(features.dtype)


def _reference_bwd(grad_out: Tensor, features: Tensor, gate_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Explicit reference gradients (the backend ``reference``)."""
    acc = _acc_dtype(features, gate_logits, grad_out)
    spatial = gate_logits.dim() == 5
    w = torch.softmax(gate_logits.to(acc), dim=2)
    if not spatial:
        w = w[..., None, None]
    w = w.unsqueeze(3)  # (B, T, K, 1, H|1, W|1)
    go = grad_out.to(acc).unsqueeze(2)  # (B, T, 1, C, H, W)
    grad_f = (w * go).sum(dim=1)
    s = (go * features.to(acc).unsqueeze(1)).sum(dim=3, keepdim=True)  # (B, T, K, 1, H, W)
    if not spatial:
        s = s.sum(dim=(-2, -1), keepdim=True)
    grad_g = (w * (s - (w * s).sum(dim=2, keepdim=True))).squeeze(3)
    if not spatial:
        grad_g = grad_g.flatten(2)
    return (grad_f.to(features.dtype).contiguous(), grad_g.to(gate_logits.dtype).contiguous())


# ------------------------------------------------------------- torch path
def _torch_fwd(features: Tensor, gate_logits: Tensor) -> Tensor:
    B, K, C, H, W = features.shape
    T, P = gate_logits.shape[1], H * W
    acc = _acc_dtype(features, gate_logits)
    w = torch.softmax(gate_logits.to(acc), dim=2)
    if gate_logits.dim() == 3:
        # one (T, K) @ (K, C*P) matmul per image: features read once
        out = torch.bmm(w, features.to(acc).reshape(B, K, C * P))
    else:
        f = features.to(acc).reshape(B, K, C, P)
        w = w.reshape(B, T, K, 1, P)
        out = torch.empty((B, T, C, P), dtype=acc, device=features.device)
        torch.mul(w[:, :, 0], f[:, None, 0], out=out)
        for k in range(1, K):
            out.addcmul_(w[:, :, k], f[:, None, k])
    return out.reshape(B, T, C, H, W).to(features.dtype).contiguous()


def _torch_bwd(grad_out: Tensor, features: Tensor, gate_logits: Tensor) -> tuple[Tensor, Tensor]:
    B, K, C, H, W = features.shape
    T, P = gate_logits.shape[1], H * W
    acc = _acc_dtype(features, gate_logits, grad_out)
    w = torch.softmax(gate_logits.to(acc), dim=2)
    go = grad_out.to(acc).reshape(B, T, C * P)
    f = features.to(acc).reshape(B, K, C * P)
    if gate_logits.dim() == 3:
        grad_f = torch.bmm(w.transpose(1, 2), go)  # (B, K, C*P)
        s = torch.bmm(go, f.transpose(1, 2))  # (B, T, K)
    else:
        w4 = w.reshape(B, T, K, 1, P)
        go4, f4 = go.view(B, T, C, P), f.view(B, K, C, P)
        grad_f = torch.empty((B, K, C, P), dtype=acc, device=features.device)
        for k in range(K):
            torch.mul(w4[:, 0, k], go4[:, 0], out=grad_f[:, k])
            for t in range(1, T):
                grad_f[:, k].addcmul_(w4[:, t, k], go4[:, t])
        # s[b, t, k, p] = sum_c go[b, t, c, p] f[b, k, c, p]: one fused
        # multiply-add per channel keeps the temporaries at (B, T, K, P)
        s = torch.zeros((B, T, K, P), dtype=acc, device=features.device)
        for c in range(C):
            s.addcmul_(go4[:, :, None, c], f4[:, None, :, c])
        s = s.reshape(w.shape)
    grad_g = w * (s - (w * s).sum(dim=2, keepdim=True))  # softmax Jacobian
    return (grad_f.reshape(features.shape).to(features.dtype).contiguous(),
            grad_g.to(gate_logits.dtype).contiguous())


# ------------------------------------------------------------ triton path
@functools.lru_cache(maxsize=None)
def _triton_module():
    """(module, None) or (None, reason)."""
    try:
        from .triton import gated_fusion as mod
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken triton install
        return None, f"triton not importable ({type(exc).__name__}: {exc})"
    return mod, None


def _triton_available() -> Optional[str]:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return _triton_module()[1]


def _triton_why_not(features: Tensor, gate_logits: Tensor, grad_out: Optional[Tensor] = None) -> Optional[str]:
    if features.device.type != "cuda":
        return f"tensors on {features.device.type}, needs cuda"
    err = _triton_module()[1]
    if err:
        return err
    if features.dtype not in _TRITON_DTYPES:
        return f"features dtype {features.dtype} (supports float32, bfloat16, float16)"
    if gate_logits.dtype not in (torch.float32, features.dtype):
        return f"gate_logits dtype {gate_logits.dtype} (must be float32 or features' {features.dtype})"
    if grad_out is not None and grad_out.dtype not in _TRITON_DTYPES:
        return f"grad_out dtype {grad_out.dtype} (supports float32, bfloat16, float16)"
    mod = _triton_module()[0]
    if features.shape[1] > mod.MAX_EXPERTS or gate_logits.shape[1] > mod.MAX_TASKS:
        return f"K={features.shape[1]} or T={gate_logits.shape[1]} above {mod.MAX_EXPERTS}/{mod.MAX_TASKS}"
    return None


def _triton_fwd(features: Tensor, gate_logits: Tensor) -> Tensor:
    return _triton_module()[0].triton_gated_fusion_fwd(features, gate_logits)


def _triton_bwd(grad_out: Tensor, features: Tensor, gate_logits: Tensor) -> tuple[Tensor, Tensor]:
    return _triton_module()[0].triton_gated_fusion_bwd(grad_out, features, gate_logits)


BACKENDS = {
    "gated_fusion": [
        Backend("triton", _triton_why_not, _triton_fwd, available=_triton_available),
        Backend("torch", lambda *a: None, _torch_fwd),
        # only reachable through SEMIMOE_BACKEND=reference
        Backend("reference", lambda *a: None, gated_fusion_ref, fast=False),
    ]
}
_BWD_BACKENDS = [
    Backend("triton", lambda go, f, g: _triton_why_not(f, g, go), _triton_bwd, available=_triton_available),
    Backend("torch", lambda *a: None, _torch_bwd),
    Backend("reference", lambda *a: None, _reference_bwd, fast=False),
]


def _select(op: str, backends, call_args: tuple, features: Tensor, gate_logits: Tensor) -> Backend:
    b = select(op, backends, *call_args)
    if b.name == "torch" and features.device.type == "cuda" and not os.environ.get("SEMIMOE_BACKEND"):
        why = _triton_why_not(features, gate_logits)
        warn_once(op, f"triton backend cannot run this call ({why}); using the PyTorch path")
    return b


# ---------------------------------------------------------------- the ops
@torch.library.custom_op("semimoe::gated_fusion", mutates_args=())
def _gated_fusion_op(features: Tensor, gate_logits: Tensor) -> Tensor:
    check_inputs(features, gate_logits)
    b = _select("gated_fusion", BACKENDS["gated_fusion"], (features, gate_logits), features, gate_logits)
    return b.run(features, gate_logits)


@_gated_fusion_op.register_fake
def _gated_fusion_fake(features: Tensor, gate_logits: Tensor) -> Tensor:
    check_inputs(features, gate_logits)
    B, K, C, H, W = features.shape
    return features.new_empty((B, gate_logits.shape[1], C, H, W))


@torch.library.custom_op("semimoe::gated_fusion_backward", mutates_args=())
def _gated_fusion_backward_op(grad_out: Tensor, features: Tensor, gate_logits: Tensor) -> tuple[Tensor, Tensor]:
    check_inputs(features, gate_logits, grad_out)
    b = _select("gated_fusion", _BWD_BACKENDS, (grad_out, features, gate_logits), features, gate_logits)
    return b.run(grad_out, features, gate_logits)


@_gated_fusion_backward_op.register_fake
def _gated_fusion_backward_fake(grad_out: Tensor, features: Tensor, gate_logits: Tensor) -> tuple[Tensor, Tensor]:
    check_inputs(features, gate_logits, grad_out)
    return features.new_empty(features.shape), gate_logits.new_empty(gate_logits.shape)


def _setup_context(ctx, inputs, output) -> None:
    features, gate_logits = inputs
    ctx.save_for_backward(features, gate_logits)


def _backward(ctx, grad_out: Tensor):
    features, gate_logits = ctx.saved_tensors
    grad_f, grad_g = torch.ops.semimoe.gated_fusion_backward(grad_out, features, gate_logits)
    return (grad_f if ctx.needs_input_grad[0] else None,
            grad_g if ctx.needs_input_grad[1] else None)


_gated_fusion_op.register_autograd(_backward, setup_context=_setup_context)


def gated_fusion(features: Tensor, gate_logits: Tensor) -> Tensor:
    """Fuse K expert feature maps with a softmax gate per task (and pixel).

    ``out[b, t] = sum_k softmax_k(gate_logits[b, t])[k] * features[b, k]``,
    the softmax taken over the experts inside the kernel.

    Args:
        features: (B, K, C, H, W) floating point (float32, bfloat16, float16;
            float64 runs on the PyTorch path): the K experts' feature maps.
        gate_logits: (B, T, K) -- one logit per task, expert and image (the
            Semi-MoE gate) -- or (B, T, K, H, W) -- one per pixel (spatial
            gating). float32 or the dtype of ``features`` (any floating dtype
            on the PyTorch path). Same device as ``features``.

    Returns:
        (B, T, C, H, W) tensor in ``features.dtype``, contiguous; accumulated
        in float32 (float64 when an input is float64).

    Differentiable in both inputs: the backward (``semimoe::gated_fusion_backward``)
    recomputes the softmax and returns gradients in the inputs' dtypes
    (double backward is not supported).
    CUDA tensors run the Triton kernels, CPU tensors a PyTorch path (see the
    module docstring); ``SEMIMOE_BACKEND=torch|triton|reference`` forces one.

    Raises:
        TypeError: an input is not a tensor or not floating point.
        ValueError: wrong number of dimensions, B/K/(H, W) that do not match,
            or inputs on different devices.
    """
    check_inputs(features, gate_logits)
    return torch.ops.semimoe.gated_fusion(features, gate_logits)


__all__ = ["gated_fusion", "gated_fusion_ref", "BACKENDS"]
