"""Fused gating and fusion of K expert feature maps, forward and backward.

    out[b, t, c, p] = sum_k  w[b, t, k, (p)] * f[b, k, c, p],
    w[b, t, :, (p)] = softmax_k(g[b, t, :, (p)])

f: features (B, K, C, H, W); g: gate logits, per image (B, T, K) or per pixel
(B, T, K, H, W); out: (B, T, C, H, W). Pixels are flattened, p = h * W + w.

Tiling scheme
-------------
* The (H, W) axes of every tensor must be viewable as one strided pixel axis
  (true for contiguous and channels-last tensors and for most slices; the
  launchers copy otherwise). Every other axis may have any stride, including
  0 (expanded grad_out). Pixel strides of 1 are specialised by Triton, so the
  contiguous case gets vectorised, coalesced loads along p.
* Forward, grid (cdiv(P, BLOCK_P), cdiv(C, BLOCK_C), B). A program loads the
  [BLOCK_K, BLOCK_C, BLOCK_P] tile of all K experts once (BLOCK_K =
  next_pow2(K), padded rows masked), then loops over the T tasks: recompute the
  softmax of the task's logits ([BLOCK_K, 1] per image, [BLOCK_K, BLOCK_P] per
  pixel), reduce over K in registers, store one [BLOCK_C, BLOCK_P] output
  tile. Each feature element is read from DRAM once and each output written
  once; per-pixel logits are re-read by the cdiv(C, BLOCK_C) channel programs
  of a pixel block (L2 hits, and T*K*4 bytes per pixel against K*C*2).
* Backward, grid (cdiv(P, BLOCK_P), B). A program owns every channel of its
  pixel block so that s[t, k, p] = sum_c grad_out[t, c, p] * f[k, c, p] is
  complete without atomics. It loops over channel chunks of BLOCK_C: load the
  features tile once, then for each task load the grad_out tile once,
  accumulate grad_f[k, c, p] += w[t, k, p] * grad_out[t, c, p] (stored once,
  after the task loop) and add the chunk's s into a [BLOCK_T, BLOCK_K,
  BLOCK_P] fp32 register accumulator (a select on t, since T is a runtime
  loop). Afterwards grad_g = w * (s - sum_k w * s) (softmax Jacobian, softmax
  recomputed from the logits, never stored): stored directly for per-pixel
  gates; for per-image gates summed over the program's pixels into slot
  pid_p of a (B, T, K, cdiv(P, BLOCK_P)) fp32 buffer that the launcher sums
  (the Jacobian is linear in s, so summing Jacobian-applied partials is exact;
  deterministic, no atomics).
* Accumulation in fp32 everywhere; outputs rounded once to their dtype.
  Offsets are int64 (program ids and tile indices widened before multiplying
  strides), so tensors beyond 2**31 elements are addressed correctly.

Limits: K experts and T tasks are held in registers padded to powers of two;
the launchers accept K, T <= MAX_EXPERTS, MAX_TASKS (Semi-MoE uses K = T = 3)
and size the blocks from a per-thread register budget (forward tile
BLOCK_K * BLOCK_C * BLOCK_P; backward 2 * BLOCK_K * BLOCK_C * BLOCK_P +
BLOCK_T * BLOCK_K * BLOCK_P), so large K or T mean narrow tiles and lower
bandwidth. On CUDA, BLOCK_C/BLOCK_P/num_warps are autotuned per (T, K, C, P,
granularity, dtypes); the backward's BLOCK_P is derived from T and K and not
tuned, because the per-image partial buffer is sized by it. CPU tensors (the
interpreter) and explicit block sizes use the first fitting configuration.
Only Triton features present in triton 3.6 are used.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ..gated_fusion import check_inputs

MAX_EXPERTS = 32
MAX_TASKS = 32

# Register budget, in fp32 tile elements per thread, used to size the blocks
# for any K and T: configurations above it are never generated.
_FWD_ELEMS_PER_THREAD = 64
_BWD_ELEMS_PER_THREAD = 96
_FWD_CANDIDATES = [  # (BLOCK_P, BLOCK_C, num_warps), preferred first
    (256, 8, 4), (512, 4, 4), (128, 16, 4), (256, 16, 8), (512, 8, 8), (1024, 4, 8), (128, 8, 4),
    (256, 4, 4), (128, 4, 4), (128, 2, 4), (64, 2, 4), (64, 1, 4), (32, 1, 4), (16, 1, 4),
]
_BWD_CANDIDATES = [(4, 4), (2, 4), (8, 8), (4, 8), (8, 4), (1, 4), (1, 8)]  # (BLOCK_C, num_warps)


def _fwd_fits(block_k: int, block_p: int, block_c: int, warps: int) -> bool:
    return block_k * block_c * block_p <= _FWD_ELEMS_PER_THREAD * 32 * warps


def _bwd_block_p(block_t: int, block_k: int) -> int:
    """Pixels per backward program: keeps the [BLOCK_T, BLOCK_K, BLOCK_P] accumulator at <= 4096."""
    return max(16, min(256, 4096 // (block_t * block_k)))


def _bwd_fits(block_t: int, block_k: int, block_p: int, block_c: int, warps: int) -> bool:
    elems = 2 * block_k * block_c * block_p + block_t * block_k * block_p + block_c * block_p
    return elems <= _BWD_ELEMS_PER_THREAD * 32 * warps


def _fwd_configs(block_k: int) -> list:
    fits = [c for c in _FWD_CANDIDATES if _fwd_fits(block_k, *c)][:6] or [_FWD_CANDIDATES[-1]]
    return [triton.Config({"BLOCK_P": bp, "BLOCK_C": bc}, num_warps=w) for bp, bc, w in fits]


def _bwd_configs(block_t: int, block_k: int) -> list:
    bp = _bwd_block_p(block_t, block_k)
    fits = [c for c in _BWD_CANDIDATES if _bwd_fits(block_t, block_k, bp, *c)] or [_BWD_CANDIDATES[-1]]
    return [triton.Config({"BLOCK_C": bc}, num_warps=w) for bc, w in fits]


@triton.jit
def _softmax_weights(
    g_ptr,  # pointer to the logits of one (b, t): g[b, t, 0, (0)]
    offs_k,  # [BLOCK_K] int64 expert indices
    offs_p,  # [BLOCK_P] int64 pixel indices (used only if SPATIAL)
    mask_k,  # [BLOCK_K] k < K
    mask_p,  # [BLOCK_P] p < P
    stride_gk,  # logits stride along K
    stride_gp,  # logits stride along pixels (per-pixel gates)
    SPATIAL: tl.constexpr,  # per-pixel gates: result [BLOCK_K, BLOCK_P], else [BLOCK_K, 1]
):
    if SPATIAL:
        ptrs = g_ptr + offs_k[:, None] * stride_gk + offs_p[None, :] * stride_gp
        x = tl.load(ptrs, mask=mask_k[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
        x = tl.where(mask_k[:, None], x, float("-inf"))
    else:
        x = tl.load(g_ptr + offs_k * stride_gk, mask=mask_k, other=0.0).to(tl.float32)
        x = tl.where(mask_k, x, float("-inf"))
        x = x[:, None]
    m = tl.max(x, axis=0)
    e = tl.exp(x - m[None, :])  # padded experts: exp(-inf) = 0
    return e / tl.sum(e, axis=0)[None, :]


@triton.jit
def _gated_fusion_fwd_kernel(
    F,  # features (B, K, C, P), any strides
    G,  # gate logits (B, T, K) or (B, T, K, P)
    OUT,  # output (B, T, C, P)
    T,  # number of tasks (gates)
    K,  # number of experts
    C,  # channels
    P,  # pixels, H * W
    stride_fb, stride_fk, stride_fc, stride_fp,  # features strides (elements)
    stride_gb, stride_gt, stride_gk, stride_gp,  # gate logits strides (stride_gp unused per image)
    stride_ob, stride_ot, stride_oc, stride_op,  # output strides
    SPATIAL: tl.constexpr,  # True: per-pixel gates (B, T, K, P); False: per-image (B, T, K)
    BLOCK_K: tl.constexpr,  # next_pow2(K): all experts in one tile
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # pixels per program
):
    pid_p = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)

    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    mask_k = offs_k < K
    mask_c = offs_c < C
    mask_p = offs_p < P

    f_ptrs = (F + pid_b * stride_fb + offs_k[:, None, None] * stride_fk
              + offs_c[None, :, None] * stride_fc + offs_p[None, None, :] * stride_fp)
    mask_f = mask_k[:, None, None] & mask_c[None, :, None] & mask_p[None, None, :]
    f = tl.load(f_ptrs, mask=mask_f, other=0.0).to(tl.float32)  # read once

    o_ptrs = OUT + pid_b * stride_ob + offs_c[:, None] * stride_oc + offs_p[None, :] * stride_op
    mask_o = mask_c[:, None] & mask_p[None, :]
    g_ptr = G + pid_b * stride_gb
    for t in range(T):
        w = _softmax_weights(g_ptr, offs_k, offs_p, mask_k, mask_p, stride_gk, stride_gp, SPATIAL)
        out = tl.sum(w[:, None, :] * f, axis=0)  # [BLOCK_C, BLOCK_P]
        tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=mask_o)
        # advance pointers instead of multiplying t (64-bit pointer arithmetic)
        g_ptr += stride_gt
        o_ptrs += stride_ot


@triton.jit
def _gated_fusion_bwd_kernel(
    F,  # features (B, K, C, P), any strides
    G,  # gate logits (B, T, K) or (B, T, K, P)
    DO,  # grad of the output (B, T, C, P), any strides (0 allowed)
    DF,  # grad of the features (B, K, C, P), written
    DG,  # per pixel: grad of the logits (B, T, K, P); per image: fp32 partials (B, T, K, n_pixel_blocks)
    T,  # number of tasks
    K,  # number of experts
    C,  # channels
    P,  # pixels, H * W
    stride_fb, stride_fk, stride_fc, stride_fp,  # features strides
    stride_gb, stride_gt, stride_gk, stride_gp,  # gate logits strides (stride_gp unused per image)
    stride_dob, stride_dot, stride_doc, stride_dop,  # grad_out strides
    stride_dfb, stride_dfk, stride_dfc, stride_dfp,  # grad_features strides
    stride_dgb, stride_dgt, stride_dgk, stride_dgp,  # DG strides (per image: stride_dgp is the slot stride)
    SPATIAL: tl.constexpr,  # per-pixel gates
    BLOCK_T: tl.constexpr,  # next_pow2(T): rows of the s accumulator
    BLOCK_K: tl.constexpr,  # next_pow2(K)
    BLOCK_C: tl.constexpr,  # channels per chunk (the program loops over all C)
    BLOCK_P: tl.constexpr,  # pixels per program
):
    pid_p = tl.program_id(0).to(tl.int64)
    pid_b = tl.program_id(1).to(tl.int64)

    offs_t = tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    arange_c = tl.arange(0, BLOCK_C).to(tl.int64)
    mask_k = offs_k < K
    mask_p = offs_p < P

    f_base = F + pid_b * stride_fb + offs_k[:, None, None] * stride_fk + offs_p[None, None, :] * stride_fp
    df_base = DF + pid_b * stride_dfb + offs_k[:, None, None] * stride_dfk + offs_p[None, None, :] * stride_dfp
    do_base = DO + pid_b * stride_dob + offs_p[None, :] * stride_dop
    g_base = G + pid_b * stride_gb

    # s[t, k, p] = sum_c grad_out[t, c, p] * f[k, c, p], complete after the chunk loop
    s_acc = tl.zeros([BLOCK_T, BLOCK_K, BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + arange_c
        mask_c = offs_c < C
        mask_f = mask_k[:, None, None] & mask_c[None, :, None] & mask_p[None, None, :]
        mask_do = mask_c[:, None] & mask_p[None, :]
        f = tl.load(f_base + offs_c[None, :, None] * stride_fc, mask=mask_f, other=0.0).to(tl.float32)
        df = tl.zeros([BLOCK_K, BLOCK_C, BLOCK_P], dtype=tl.float32)
        g_ptr = g_base
        do_ptrs = do_base + offs_c[:, None] * stride_doc
        for t in range(T):
            w = _softmax_weights(g_ptr, offs_k, offs_p, mask_k, mask_p, stride_gk, stride_gp, SPATIAL)
            do = tl.load(do_ptrs, mask=mask_do, other=0.0).to(tl.float32)  # [BLOCK_C, BLOCK_P]
            df += w[:, None, :] * do[None, :, :]
            s = tl.sum(do[None, :, :] * f, axis=1)  # [BLOCK_K, BLOCK_P]
            s_acc = tl.where(offs_t[:, None, None] == t, s_acc + s[None, :, :], s_acc)
            g_ptr += stride_gt
            do_ptrs += stride_dot
        tl.store(df_base + offs_c[None, :, None] * stride_dfc, df.to(DF.dtype.element_ty), mask=mask_f)

    # softmax Jacobian: grad_g = w * (s - sum_k w * s)
    g_ptr = g_base
    dg_ptr = DG + pid_b * stride_dgb
    for t in range(T):
        w = _softmax_weights(g_ptr, offs_k, offs_p, mask_k, mask_p, stride_gk, stride_gp, SPATIAL)
        s = tl.sum(tl.where(offs_t[:, None, None] == t, s_acc, 0.0), axis=0)  # [BLOCK_K, BLOCK_P]
        if SPATIAL:
            ws = tl.sum(w * s, axis=0)  # [BLOCK_P]
            dg = w * (s - ws[None, :])
            tl.store(dg_ptr + offs_k[:, None] * stride_dgk + offs_p[None, :] * stride_dgp,
                     dg.to(DG.dtype.element_ty), mask=mask_k[:, None] & mask_p[None, :])
        else:
            s_img = tl.sum(s, axis=1)  # [BLOCK_K]; masked pixels contributed 0
            w_img = tl.sum(w, axis=1)  # [BLOCK_K]; w is [BLOCK_K, 1]
            dg = w_img * (s_img - tl.sum(w_img * s_img, axis=0))
            tl.store(dg_ptr + offs_k * stride_dgk + pid_p * stride_dgp, dg, mask=mask_k)
        g_ptr += stride_gt
        dg_ptr += stride_dgt


@functools.lru_cache(maxsize=None)
def _fwd_tuner(block_k: int):
    return triton.autotune(configs=_fwd_configs(block_k), key=["T", "K", "C", "P", "SPATIAL"])(
        _gated_fusion_fwd_kernel)


@functools.lru_cache(maxsize=None)
def _bwd_tuner(block_t: int, block_k: int):
    # BLOCK_P is not tuned: the per-image partial buffer is sized by it (see header)
    return triton.autotune(configs=_bwd_configs(block_t, block_k), key=["T", "K", "C", "P", "SPATIAL"])(
        _gated_fusion_bwd_kernel)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., P): a view whenever H and W can be merged, else a copy."""
    return x.flatten(-2)


def _check(features: torch.Tensor, gate_logits: torch.Tensor, grad_out: Optional[torch.Tensor] = None) -> bool:
    """The op's input validator (one per op), plus this backend's K/T limit. Returns "per pixel?"."""
    check_inputs(features, gate_logits, grad_out)
    K, T = features.shape[1], gate_logits.shape[1]
    if K > MAX_EXPERTS or T > MAX_TASKS:
        raise ValueError(f"triton gated_fusion supports K <= {MAX_EXPERTS} experts and T <= {MAX_TASKS} tasks, "
                         f"got K={K}, T={T}")
    return gate_logits.dim() == 5


def _use_fixed(x: torch.Tensor, block_c, block_p) -> bool:
    return x.device.type != "cuda" or block_c is not None or block_p is not None


def _device_ctx(x: torch.Tensor):
    if x.device.type == "cuda":
        return torch.cuda.device(x.device)
    import contextlib

    return contextlib.nullcontext()


def triton_gated_fusion_fwd(
    features: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    block_c: Optional[int] = None,
    block_p: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> torch.Tensor:
    """Forward of the fused gating: returns out (B, T, C, H, W) in ``features.dtype``.

    features (B, K, C, H, W) fp32/bf16/fp16; gate_logits (B, T, K) or
    (B, T, K, H, W), any float dtype. On CUDA the block sizes are autotuned
    unless given; CPU tensors (``TRITON_INTERPRET=1``) use a fixed config.
    """
    spatial = _check(features, gate_logits)
    B, K, C, H, W = features.shape
    T = gate_logits.shape[1]
    P = H * W
    out = torch.empty((B, T, C, H, W), dtype=features.dtype, device=features.device)
    if out.numel() == 0:
        return out
    f, o = _pixels(features), _pixels(out)
    g = _pixels(gate_logits) if spatial else gate_logits
    gstrides = (*g.stride()[:3], g.stride(3) if spatial else 0)
    args = (f, g, o, T, K, C, P, *f.stride(), *gstrides, *o.stride())
    block_k = triton.next_power_of_2(K)
    with _device_ctx(features):
        if _use_fixed(features, block_c, block_p):
            cfg = _fwd_configs(block_k)[0]
            bc = block_c or cfg.kwargs["BLOCK_C"]
            bp = block_p or cfg.kwargs["BLOCK_P"]
            grid = (triton.cdiv(P, bp), triton.cdiv(C, bc), B)
            _gated_fusion_fwd_kernel[grid](*args, SPATIAL=spatial, BLOCK_K=block_k, BLOCK_C=bc, BLOCK_P=bp,
                                           num_warps=num_warps or cfg.num_warps)
        else:
            def grid(meta):
                return (triton.cdiv(P, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]), B)

            _fwd_tuner(block_k)[grid](*args, SPATIAL=spatial, BLOCK_K=block_k)
    return out


def triton_gated_fusion_bwd(
    grad_out: torch.Tensor,
    features: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    block_c: Optional[int] = None,
    block_p: Optional[int] = None,
    num_warps: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of the fused gating in one pass.

    grad_out (B, T, C, H, W) any float dtype and strides. Returns
    (grad_features (B, K, C, H, W) in ``features.dtype``, grad_gate_logits
    shaped and typed like ``gate_logits``). The softmax is recomputed from the
    logits.
    """
    spatial = _check(features, gate_logits, grad_out)
    B, K, C, H, W = features.shape
    T = gate_logits.shape[1]
    P = H * W
    grad_f = torch.empty((B, K, C, H, W), dtype=features.dtype, device=features.device)
    if grad_f.numel() == 0 or T == 0:
        grad_f.zero_()
        return grad_f, torch.zeros(gate_logits.shape, dtype=gate_logits.dtype, device=gate_logits.device)
    block_t, block_k = triton.next_power_of_2(T), triton.next_power_of_2(K)
    bp = block_p or _bwd_block_p(block_t, block_k)
    n_pblk = triton.cdiv(P, bp)
    if spatial:
        grad_g = torch.empty(gate_logits.shape, dtype=gate_logits.dtype, device=gate_logits.device)
        dg = _pixels(grad_g)
    else:
        # every slot is written: one per (b, t, k, pixel block)
        dg = torch.empty((B, T, K, n_pblk), dtype=torch.float32, device=gate_logits.device)
    f, go, df = _pixels(features), _pixels(grad_out), _pixels(grad_f)
    g = _pixels(gate_logits) if spatial else gate_logits
    gstrides = (*g.stride()[:3], g.stride(3) if spatial else 0)
    args = (f, g, go, df, dg, T, K, C, P, *f.stride(), *gstrides, *go.stride(), *df.stride(), *dg.stride())
    meta = dict(SPATIAL=spatial, BLOCK_T=block_t, BLOCK_K=block_k, BLOCK_P=bp)
    grid = (n_pblk, B)
    with _device_ctx(features):
        if _use_fixed(features, block_c, block_p):
            cfg = _bwd_configs(block_t, block_k)[0]
            _gated_fusion_bwd_kernel[grid](*args, **meta, BLOCK_C=block_c or cfg.kwargs["BLOCK_C"],
                                           num_warps=num_warps or cfg.num_warps)
        else:
            _bwd_tuner(block_t, block_k)[grid](*args, **meta)
    if not spatial:
        grad_g = dg.sum(dim=-1).to(gate_logits.dtype)
    return grad_f, grad_g
