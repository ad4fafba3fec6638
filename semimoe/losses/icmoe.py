"""Building blocks of an IC-MoE-style segmenter: per-pixel voting of E
experts, the Switch-Transformer load-balancing loss, boundary-aware pixel
sampling and a semantic-guided (supervised) pixel contrastive loss.

The experts (typically E = 3: "basic" = a frozen pretrained network's
prediction, "semantic" = a head on its bottleneck features, "adaptive" = the
network with trainable adapters) each give per-pixel class probabilities;
they are fused by a per-pixel softmax vote over the experts.

Conventions:

* ``probs``: float (B, E, C, H, W), expert e's class probabilities
  (assumed to sum to 1 over C; not checked).
* Gate logits: float (B, 1, E, H, W), one logit per expert and pixel (the
  layout of :func:`semimoe.ops.gated_fusion.gated_fusion` with T = 1 task).
* Class maps (``target``, ``labels``): int64 (B, H, W); masks (``valid``,
  ``mask``, ``hard``): bool (B, H, W).
* Arithmetic in float32 (inputs of lower precision are upcast), float64
  when an input is float64.
* Bad inputs raise :class:`TypeError` (not a tensor, wrong dtype) or
  :class:`ValueError` (wrong shape or value), naming the argument.

Voting (:func:`vote_logits`, :func:`pixel_vote`)::

    g_e   = router_e + log(conf_e + eps) + w_cons * log(cons_e + eps)
    conf_e = max_c probs_e[c]            cons_e = probs_e[target]
    fused = sum_e softmax_e(g)[e] * probs_e

The confidence and consistency terms are computed on detached
probabilities: the gate learns only through the (optional) router logits.

Load balancing (:func:`load_balance_loss`; Fedus et al., "Switch
Transformers", 2021), over the N (valid) pixels with p = softmax_e(g)::

    f_e = (1/N) #{pixels with argmax_e g = e}      (no gradient)
    P_e = (1/N) sum_pixels p_e
    loss = E * sum_e f_e * P_e                     (1 if balanced, E if collapsed)

Contrastive (:func:`pixel_contrastive_loss`; supervised InfoNCE / SupCon,
Khosla et al., 2020) with detached class prototypes as extra keys; pixels are
drawn by :func:`sample_pixels`, optionally favouring the class-boundary band
of :func:`boundary_band`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.gated_fusion import gated_fusion

__all__ = [
    "vote_logits",
    "pixel_vote",
    "consensus",
    "confident_pseudo_labels",
    "load_balance_loss",
    "sample_pixels",
    "boundary_band",
    "pixel_contrastive_loss",
]


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------
def _check_tensor(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_float(t, name: str, dims: int, layout: str) -> None:
    _check_tensor(t, name)
    if t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {layout}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")


def _check_int_map(t, name: str, shape: Optional[Tuple[int, ...]] = None, device=None) -> None:
    """Integer (not bool) class map of shape ``shape`` (3-D (B, H, W) when None)."""
    _check_tensor(t, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer (int64) class map, got {t.dtype}")
    if shape is None and t.dim() != 3:
        raise ValueError(f"{name} must be 3-D (B, H, W), got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape (B, H, W)={tuple(shape)}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {t.device}")


def _check_mask(t, name: str, shape: Tuple[int, ...], device) -> None:
    _check_tensor(t, name)
    if t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool mask, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape (B, H, W)={tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on device {device}, got {t.device}")


def _check_number(x, name: str, lo: float, lo_open: bool = False, hi: Optional[float] = None) -> float:
    """A finite real number in [lo, hi] ((lo, hi] when ``lo_open``)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    bad = not math.isfinite(x) or x < lo or (lo_open and x == lo) or (hi is not None and x > hi)
    if bad:
        rng = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"
        raise ValueError(f"{name} must be a finite number in {rng}, got {x!r}")
    return x


def _check_int(x, name: str, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {x}")
    return x


def _acc_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_probs(probs) -> None:
    _check_float(probs, "probs", 5, "(B, E, C, H, W)")
    if probs.shape[1] < 1 or probs.shape[2] < 1:
        raise ValueError(f"probs must hold at least one expert and one class, got shape {tuple(probs.shape)}")


# ----------------------------------------------------------------------------
# Voting
# ----------------------------------------------------------------------------
def vote_logits(probs: Tensor, router_logits: Optional[Tensor] = None, target: Optional[Tensor] = None,
                valid: Optional[Tensor] = None, consistency_weight: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Per-pixel gate logits of the expert vote.

    ``g_e = router_e + log(conf_e + eps) + consistency_weight * log(cons_e + eps)``

    * ``router_e``: ``router_logits[:, e]`` (a learned router) or 0;
    * ``conf_e = max_c probs[:, e, c]``: the expert's confidence;
    * ``cons_e = probs[:, e, target]``: the expert's agreement with the
      target class (only when ``target`` is given; else the term is omitted).
      Where ``valid`` is False the consistency term is 0 (pixels with no
      label or pseudo-label); the target there is ignored and may hold any
      value (e.g. an ignore index).

    The confidence and consistency terms are computed on **detached**
    probabilities: the output carries a gradient only into
    ``router_logits`` (and has none at all without a router).

    Args:
        probs: float (B, E, C, H, W) class probabilities of the E experts.
        router_logits: optional float (B, E, H, W) router logits; gradients
            flow into it.
        target: optional int64 (B, H, W) class map in [0, C) (at the valid
            pixels).
        valid: optional bool (B, H, W); requires ``target``.
        consistency_weight: finite weight >= 0 of the consistency term.
        eps: finite > 0, added inside the logarithms.

    Returns:
        (B, 1, E, H, W) gate logits, float32 (float64 when ``probs`` or
        ``router_logits`` is float64), ready for :func:`pixel_vote`.
    """
    _check_probs(probs)
    B, E, C, H, W = probs.shape
    if router_logits is not None:
        _check_float(router_logits, "router_logits", 4, "(B, E, H, W)")
        if tuple(router_logits.shape) != (B, E, H, W):
            raise ValueError(f"router_logits must have shape (B, E, H, W)={(B, E, H, W)}, "
                             f"got {tuple(router_logits.shape)}")
        if router_logits.device != probs.device:
            raise ValueError(f"router_logits must be on device {probs.device}, got {router_logits.device}")
    if target is not None:
        _check_int_map(target, "target", (B, H, W), probs.device)
    if valid is not None:
        if target is None:
            raise ValueError("valid requires target (it masks the consistency term), got target=None")
        _check_mask(valid, "valid", (B, H, W), probs.device)
    consistency_weight = _check_number(consistency_weight, "consistency_weight", 0.0)
    eps = _check_number(eps, "eps", 0.0, lo_open=True)

    acc = _acc_dtype(probs, router_logits)
    p = probs.detach().to(acc)
    g = torch.log(p.amax(dim=2) + eps)  # (B, E, H, W)
    if target is not None:
        t = target.long()
        if valid is not None:
            t = torch.where(valid, t, torch.zeros_like(t))
        checked = t if valid is None else t[valid]
        if checked.numel() and (bool((checked < 0).any()) or bool((checked >= C).any())):
            raise ValueError(f"target must hold class indices in [0, C={C}) at the valid pixels, "
                             f"got values in [{int(checked.min())}, {int(checked.max())}]")
        cons = p.gather(2, t[:, None, None].expand(B, E, 1, H, W)).squeeze(2)
        term = consistency_weight * torch.log(cons + eps)
        if valid is not None:
            term = torch.where(valid[:, None], term, torch.zeros_like(term))
        g = g + term
    if router_logits is not None:
        g = g + router_logits.to(acc)
    return g.unsqueeze(1)


def pixel_vote(probs: Tensor, gate_logits: Tensor, fuse=None) -> Tensor:
    """Fuse the experts' probabilities with a per-pixel softmax vote.

    ``fused[b, :, h, w] = sum_e softmax_e(gate_logits[b, 0, :, h, w])[e] * probs[b, e, :, h, w]``

    Runs :func:`semimoe.ops.gated_fusion.gated_fusion` (features = ``probs``,
    one task), so it uses the fused Triton kernels on CUDA and a PyTorch path
    on the CPU; differentiable in both inputs.

    Args:
        probs: float (B, E, C, H, W) class probabilities of the E experts.
        gate_logits: float (B, 1, E, H, W) (e.g. from :func:`vote_logits`)
            or (B, E, H, W); same device as ``probs``.
        fuse: the fusion function (default :func:`~semimoe.ops.gated_fusion.gated_fusion`;
            :func:`~semimoe.ops.gated_fusion.gated_fusion_ref` for ONNX / AOTInductor export).

    Returns:
        (B, C, H, W) fused probabilities in ``probs.dtype`` (a convex
        combination of the experts': sums to 1 over C when theirs do).
    """
    _check_probs(probs)
    _check_tensor(gate_logits, "gate_logits")
    B, E, C, H, W = probs.shape
    if gate_logits.dim() == 4:
        gate_logits = gate_logits.unsqueeze(1)
    if tuple(gate_logits.shape) != (B, 1, E, H, W):
        raise ValueError(f"gate_logits must have shape (B, 1, E, H, W)={(B, 1, E, H, W)} or (B, E, H, W), "
                         f"got {tuple(gate_logits.shape)}")
    if not gate_logits.is_floating_point():
        raise TypeError(f"gate_logits must have a floating-point dtype, got {gate_logits.dtype}")
    if gate_logits.device != probs.device:
        raise ValueError(f"gate_logits must be on device {probs.device}, got {gate_logits.device}")
    return (fuse or gated_fusion)(probs, gate_logits).squeeze(1)


def consensus(probs: Tensor) -> Tuple[Tensor, Tensor]:
    """Unweighted consensus of the experts.

    Args:
        probs: float (B, E, C, H, W) class probabilities of the E experts.

    Returns:
        ``(mean, labels)``: ``mean`` (B, C, H, W) = ``(1/E) sum_e probs_e``
        (in ``probs.dtype``, not detached) and ``labels`` (B, H, W) int64 =
        its argmax over C (ties to the lowest class), the consistency target
        of :func:`vote_logits` on unlabeled pixels.
    """
    _check_probs(probs)
    mean = probs.mean(dim=1)
    return mean, mean.detach().argmax(dim=1)


def confident_pseudo_labels(fused: Tensor, threshold: float) -> Tuple[Tensor, Tensor]:
    """Pseudo-labels of the confident pixels of a probability map.

    Args:
        fused: float (B, C, H, W) class probabilities (e.g. :func:`pixel_vote`).
        threshold: confidence threshold in [0, 1].

    Returns:
        ``(labels, valid)``: int64 (B, H, W) argmax over C (ties to the lowest
        class) and bool (B, H, W) ``max_c fused >= threshold``. No gradient.
    """
    _check_float(fused, "fused", 4, "(B, C, H, W)")
    if fused.shape[1] < 1:
        raise ValueError(f"fused must hold at least one class, got shape {tuple(fused.shape)}")
    threshold = _check_number(threshold, "threshold", 0.0, hi=1.0)
    conf, labels = fused.detach().max(dim=1)
    return labels, conf >= threshold


# ----------------------------------------------------------------------------
# Load balancing
# ----------------------------------------------------------------------------
def load_balance_loss(gate_logits: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Switch-Transformer load-balancing loss over pixels.

    With ``p = softmax_e(gate_logits)`` and the N pixels (those where
    ``mask`` is True, all when None)::

        f_e  = (1/N) #{pixels whose argmax expert is e}   (ties: lowest e; no gradient)
        P_e  = (1/N) sum_pixels p_e
        loss = E * sum_e f_e * P_e

    It is 1 for balanced routing (``f_e = 1/E`` or ``P_e = 1/E``) and E when
    every pixel goes to one expert with probability 1. The gradient flows
    through ``P_e`` only. With no pixel (empty mask) the loss is 0, still
    connected to ``gate_logits``.

    Args:
        gate_logits: float (B, 1, E, H, W) or (B, E, H, W) gate logits.
        mask: optional bool (B, H, W) restricting the pixels.

    Returns:
        Scalar, float32 (float64 when ``gate_logits`` is float64).
    """
    _check_tensor(gate_logits, "gate_logits")
    if gate_logits.dim() == 5:
        if gate_logits.shape[1] != 1:
            raise ValueError(f"gate_logits must have shape (B, 1, E, H, W) or (B, E, H, W), "
                             f"got {tuple(gate_logits.shape)}")
        g = gate_logits[:, 0]
    elif gate_logits.dim() == 4:
        g = gate_logits
    else:
        raise ValueError(f"gate_logits must be 5-D (B, 1, E, H, W) or 4-D (B, E, H, W), "
                         f"got shape {tuple(gate_logits.shape)}")
    if not g.is_floating_point():
        raise TypeError(f"gate_logits must have a floating-point dtype, got {g.dtype}")
    B, E, H, W = g.shape
    if E < 1:
        raise ValueError(f"gate_logits must hold at least one expert, got shape {tuple(gate_logits.shape)}")
    if mask is not None:
        _check_mask(mask, "mask", (B, H, W), g.device)

    acc = _acc_dtype(g)
    g = g.to(acc)
    p = torch.softmax(g, dim=1)  # (B, E, H, W)
    top = F.one_hot(g.detach().argmax(dim=1), E).to(acc)  # (B, H, W, E)
    if mask is None:
        n = float(B * H * W)
        P = p.sum(dim=(0, 2, 3))
        f = top.sum(dim=(0, 1, 2))
        return E * (f * P).sum() / max(n, 1.0) ** 2
    m = mask.to(acc)
    n = m.sum().clamp_min(1.0)
    P = (p * m[:, None]).sum(dim=(0, 2, 3)) / n
    f = (top * m[..., None]).sum(dim=(0, 1, 2)) / n
    return E * (f * P).sum()


# ----------------------------------------------------------------------------
# Pixel sampling
# ----------------------------------------------------------------------------
def boundary_band(labels: Tensor, width: int) -> Tensor:
    """Pixels within ``width`` pixels (Chebyshev distance) of another class.

    A pixel is in the band iff a class other than its own occurs in its
    (2 width + 1)^2 window (clipped at the image border). Computed by
    max-pooling the one-hot map of each class present (stride 1, padding
    ``width``) and counting the classes that reach the pixel.

    Args:
        labels: int64 (B, H, W) class map.
        width: int >= 0 (0: an empty band).

    Returns:
        bool (B, H, W).
    """
    _check_int_map(labels, "labels")
    width = _check_int(width, "width", 0)
    B, H, W = labels.shape
    if width == 0 or labels.numel() == 0:
        return torch.zeros((B, H, W), dtype=torch.bool, device=labels.device)
    classes, inverse = torch.unique(labels, return_inverse=True)
    if classes.numel() < 2:
        return torch.zeros((B, H, W), dtype=torch.bool, device=labels.device)
    onehot = F.one_hot(inverse.long(), classes.numel()).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    present = F.max_pool2d(onehot, kernel_size=2 * width + 1, stride=1, padding=width)
    return present.sum(dim=1) > 1.5


def sample_pixels(labels: Tensor, n_per_class: int, hard: Optional[Tensor] = None, hard_fraction: float = 0.5,
                  valid: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Class-balanced random pixel sample, optionally favouring hard pixels.

    For every class present among the valid pixels, in ascending class order,
    ``n_c = min(n_per_class, #valid pixels of c)`` distinct pixels of the
    class are drawn:

    * with ``hard``: ``k = floor(hard_fraction * n_per_class)`` of them from
      the hard pixels of c (all of them when fewer), the rest from its other
      pixels; a shortfall of either kind is filled from the other kind;
    * without: all from the class's pixels.

    Each draw is ``torch.randperm(..., generator=generator)`` (without
    replacement), hard pixels drawn before the others of a class, so the
    sample is reproducible from the generator's state. Within a class the
    hard pixels come first, each group in its random order. Every distinct
    value of ``labels`` at a valid pixel is a class: mark ignored pixels
    with ``valid = False``; they are never sampled.

    Args:
        labels: int64 (B, H, W) class map.
        n_per_class: int >= 1.
        hard: optional bool (B, H, W), e.g. :func:`boundary_band`.
        hard_fraction: in [0, 1].
        valid: optional bool (B, H, W).
        generator: optional ``torch.Generator``; the permutations are drawn
            on its device (``labels.device`` when None).

    Returns:
        int64 (S,) flat indices into the B*H*W pixels (``labels.flatten()``),
        on ``labels.device``, S = sum_c n_c.
    """
    _check_int_map(labels, "labels")
    n_per_class = _check_int(n_per_class, "n_per_class", 1)
    shape, device = tuple(labels.shape), labels.device
    if hard is not None:
        _check_mask(hard, "hard", shape, device)
    hard_fraction = _check_number(hard_fraction, "hard_fraction", 0.0, hi=1.0)
    if valid is not None:
        _check_mask(valid, "valid", shape, device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    perm_device = generator.device if generator is not None else device

    def draw(candidates: Tensor, k: int) -> Tensor:
        if k == 0:
            return candidates[:0]
        perm = torch.randperm(candidates.numel(), generator=generator, device=perm_device)[:k]
        return candidates[perm.to(device)]

    flat = labels.reshape(-1)
    keep = valid.reshape(-1) if valid is not None else torch.ones_like(flat, dtype=torch.bool)
    is_hard = hard.reshape(-1) if hard is not None else None
    quota = int(math.floor(hard_fraction * n_per_class + 1e-9))
    out = []
    for c in torch.unique(flat[keep]).tolist():
        in_class = keep & (flat == c)
        if is_hard is None:
            idx = torch.nonzero(in_class).squeeze(1)
            out.append(draw(idx, min(n_per_class, idx.numel())))
            continue
        idx_h = torch.nonzero(in_class & is_hard).squeeze(1)
        idx_e = torch.nonzero(in_class & ~is_hard).squeeze(1)
        n_c = min(n_per_class, idx_h.numel() + idx_e.numel())
        n_h = min(quota, idx_h.numel())
        n_e = min(n_c - n_h, idx_e.numel())
        n_h = n_c - n_e
        out.append(draw(idx_h, n_h))
        out.append(draw(idx_e, n_e))
    if not out:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(out)


# ----------------------------------------------------------------------------
# Contrastive loss
# ----------------------------------------------------------------------------
def pixel_contrastive_loss(embeddings: Tensor, labels: Tensor, temperature: float = 0.1,
                           prototypes: bool = True) -> Tensor:
    """Semantic-guided supervised pixel contrastive loss (SupCon + prototypes).

    The embeddings are L2-normalised: ``z_i = x_i / ||x_i||``. The keys of
    anchor i are the other sampled pixels ``z_j`` (j != i) and, when
    ``prototypes``, one prototype per class present,
    ``q_c = normalise(mean_{j: y_j = c} z_j)``, **detached**. With
    ``s_ia = z_i . k_a / temperature``, the positives
    ``P_i = {j != i: y_j = y_i}`` (plus ``q_{y_i}`` with prototypes) and the
    denominator over all keys a of i::

        loss_i = -(1/|P_i|) sum_{p in P_i} [s_ip - log sum_a exp(s_ia)]
        loss   = mean of loss_i over the anchors with |P_i| >= 1

    (log-sum-exp for stability). With prototypes every anchor has a positive
    (a class with one member: only its prototype). Without any positive the
    loss is 0, still connected to ``embeddings`` (zero gradient).

    Args:
        embeddings: float (N, D) pixel embeddings (e.g. gathered with
            :func:`sample_pixels`).
        labels: int64 (N,) classes, same device.
        temperature: finite > 0.
        prototypes: add the detached class prototypes as keys.

    Returns:
        Scalar, float32 (float64 when ``embeddings`` is float64).
    """
    _check_float(embeddings, "embeddings", 2, "(N, D)")
    _check_tensor(labels, "labels")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer (int64) class vector, got {labels.dtype}")
    N = embeddings.shape[0]
    if tuple(labels.shape) != (N,):
        raise ValueError(f"labels must have shape (N,)=({N},) like embeddings, got {tuple(labels.shape)}")
    if labels.device != embeddings.device:
        raise ValueError(f"labels must be on device {embeddings.device}, got {labels.device}")
    temperature = _check_number(temperature, "temperature", 0.0, lo_open=True)
    if not isinstance(prototypes, bool):
        raise TypeError(f"prototypes must be a bool, got {type(prototypes).__name__}")
    acc = _acc_dtype(embeddings)
    if N == 0 or (N < 2 and not prototypes):  # no key at all
        return embeddings.to(acc).sum() * 0.0

    z = F.normalize(embeddings.to(acc), dim=1)
    y = labels.long()
    eye = torch.eye(N, dtype=torch.bool, device=z.device)
    logits = (z @ z.t()) / temperature
    logits = logits.masked_fill(eye, float("-inf"))  # no self key
    pos = (y[:, None] == y[None, :]) & ~eye
    if prototypes:
        classes, inverse = torch.unique(y, return_inverse=True)
        member = F.one_hot(inverse, classes.numel()).to(acc)  # (N, K)
        with torch.no_grad():
            proto = F.normalize((member.t() @ z.detach()) / member.sum(dim=0)[:, None], dim=1)
        logits = torch.cat([logits, (z @ proto.t()) / temperature], dim=1)
        pos = torch.cat([pos, member.bool()], dim=1)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    n_pos = pos.sum(dim=1)
    per_anchor = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_pos.clamp_min(1).to(acc)
    has_pos = n_pos > 0
    total = torch.where(has_pos, per_anchor, torch.zeros_like(per_anchor)).sum()
    return total / has_pos.sum().clamp_min(1).to(acc)
