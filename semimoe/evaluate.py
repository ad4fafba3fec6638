"""``python -m semimoe.evaluate``: gland segmentation metrics and overlays.

Two reporting protocols:

``ours`` (default)
    Fixed threshold on the gate's foreground probability, metrics at each
    test image's native resolution. Images of the real datasets are resized to
    the training side first (``dataset.input_size``; the model saw that scale
    during training) and the probability map is upsampled back bilinearly.
    Sizes that are not a multiple of the model's ``2**(depth-1)`` are padded
    (reflect) and cropped back. Instances are the connected components of the
    prediction (8-connected), optionally split with the boundary head
    (:func:`semimoe.metrics.split_instances`). Reported: pixel Dice/IoU pooled
    over the set (TP/FP/FN summed) and per-image mean, GlaS object F1 (counts
    summed over images), object Dice and object Hausdorff (per-image mean;
    Hausdorff is ``inf`` for an image where exactly one of prediction and
    ground truth is empty, so ``object_hausdorff_defined_mean`` and the count
    of such images are reported as well).

``reference``
    The released code's reporting, kept to reproduce its numbers and clearly
    labelled optimistic: every image (and mask, nearest) resized to 256x256,
    pixel Dice/IoU pooled over the set, the threshold swept over
    ``0.00, 0.02, ..., 0.88`` (foreground if ``p > t``) and the one with the
    best pooled IoU reported -- i.e. the threshold is selected on the evaluated
    set itself.

:func:`write_overlays` writes PNGs: image | ground-truth outlines (green) |
predicted instance outlines (one colour per instance), and the per-expert gate
weights (bar chart for per-image gates, the K weight maps as RGB for spatial
gates).

The model follows docs/CONTRACTS.md: ``model(x)`` returns an object with
``seg`` (B,2,H,W) logits, ``bnd`` (B,2,H,W) logits and ``gates``
((B,T,K) or (B,T,K,H,W)).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import DataLoader

from .data.augment import resize_image, resize_mask
from .metrics import label_components, object_dice, object_f1, object_hausdorff, split_instances

__all__ = [
    "evaluate",
    "write_overlays",
    "predict",
    "Prediction",
    "size_multiple",
    "format_table",
    "REFERENCE_LABEL",
    "OURS_LABEL",
    "REFERENCE_THRESHOLDS",
    "main",
]

REFERENCE_LABEL = "reference (selects threshold on the evaluated set: optimistic)"
OURS_LABEL = "ours (fixed threshold, native resolution)"
REFERENCE_SIZE = 256
# np.arange(0, 0.9, 0.02) of the released code, as exact decimals
REFERENCE_THRESHOLDS = tuple(round(0.02 * i, 2) for i in range(45))
TASKS = ("seg", "sdf", "bnd")
EXPERT_COLOURS = ((214, 56, 56), (46, 160, 67), (52, 94, 222))


# ----------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------
class Prediction(NamedTuple):
    """fg: float32 (B, H, W) foreground probability (softmax of ``seg``).
    bnd: float32 (B, H, W) boundary probability, or None if not asked for.
    gates: (B, T, K) or (B, T, K, H, W) float32 gate weights, or None."""

    fg: torch.Tensor
    bnd: Optional[torch.Tensor]
    gates: Optional[torch.Tensor]


def size_multiple(model) -> int:
    """The multiple the model needs H and W to be: ``model.size_multiple`` /
    ``model.multiple`` if set, else ``2**(depth-1)`` from its config
    (``cfg``/``config``/``model_config``), else 32."""
    for attr in ("size_multiple", "multiple"):
        v = getattr(model, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    for attr in ("cfg", "config", "model_config"):
        depth = getattr(getattr(model, attr, None), "depth", None)
        if isinstance(depth, int) and depth > 0:
            return 2 ** (depth - 1)
    return 32


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    ph = (-H) % multiple
    pw = (-W) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if (ph < H and pw < W) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


@torch.no_grad()
def predict(model, x: torch.Tensor, multiple: Optional[int] = None, input_size=None,
            want_bnd: bool = False, want_gates: bool = False, amp: bool = False) -> Prediction:
    """Run ``model`` on a normalised batch and bring the outputs back to its size.

    Args:
        model: a Semi-MoE model (eval mode is the caller's business).
        x: float (B, 3, H, W) on the model's device.
        multiple: pad H, W up to a multiple of this (reflect); None: :func:`size_multiple`.
        input_size: None (run at H x W) or an int / (h, w): resize the input
            to that size first (bilinear, antialiased) and upsample the
            probabilities back to H x W (bilinear).
        want_bnd, want_gates: also return the boundary probability / gates.
        amp: autocast to bfloat16 on CUDA.
    """
    H, W = x.shape[-2:]
    m = size_multiple(model) if multiple is None else int(multiple)
    xin = x
    if input_size is not None:
        s = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        xin = resize_image(x, s, antialias=True)
    h, w = xin.shape[-2:]
    xin = _pad_to(xin, m)
    if amp and x.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(xin)
    else:
        out = model(xin)
    fg = torch.softmax(out.seg[..., :h, :w].float(), dim=1)[:, 1]
    bnd = None
    if want_bnd:
        b = getattr(out, "bnd", None)
        if b is None:
            raise ValueError("split_boundary needs the model's boundary head output (.bnd)")
        bnd = torch.softmax(b[..., :h, :w].float(), dim=1)[:, 1]
    gates = None
    if want_gates:
        g = getattr(out, "gates", None)
        if g is not None:
            gates = g.float()
            if gates.dim() == 5:
                gates = gates[..., :h, :w]
    if (h, w) != (H, W):
        fg = F.interpolate(fg[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        if bnd is not None:
            bnd = F.interpolate(bnd[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        if gates is not None and gates.dim() == 5:
            B, T, K = gates.shape[:3]
            gates = F.interpolate(gates.reshape(B, T * K, h, w), size=(H, W), mode="bilinear",
                                  align_corners=False).reshape(B, T, K, H, W)
    return Prediction(fg, bnd, gates)


def _batches(dataset, batch_size: int, num_workers: int):
    """Consecutive items grouped into lists of at most ``batch_size`` same-size images."""
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)
    buf: list = []
    for item in loader:
        if buf and (len(buf) == batch_size or item["image"].shape != buf[0]["image"].shape):
            yield buf
            buf = []
        buf.append(item)
    if buf:
        yield buf


class _EvalMode:
    """``model.eval()`` for the block, the previous mode restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = bool(getattr(self.model, "training", False))
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _resolve_input_size(dataset, input_size):
    if isinstance(input_size, str):
        if input_size != "auto":
            raise ValueError(f"input_size must be None, an int or 'auto', got {input_size!r}")
        return getattr(dataset, "input_size", None)
    return input_size


# ----------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------
def _instances(pred: np.ndarray, bnd: Optional[np.ndarray], min_size: int) -> np.ndarray:
    if bnd is not None:
        return split_instances(pred, bnd, min_size=min_size)
    return label_components(pred, min_size=min_size)


def _image_stats(name: str, pred: np.ndarray, bnd: Optional[np.ndarray], gt: np.ndarray,
                 min_size: int, hausdorff: bool = True) -> dict:
    lab = _instances(pred, bnd, min_size)
    p = lab > 0
    g = gt > 0
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    f1 = object_f1(lab, gt)
    return {
        "name": name,
        "tp": tp, "fp": fp, "fn": fn,
        "dice": 1.0 if 2 * tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
        "obj_tp": int(f1["tp"]), "obj_fp": int(f1["fp"]), "obj_fn": int(f1["fn"]),
        "object_f1": float(f1["f1"]),
        "object_dice": float(object_dice(lab, gt)),
        "object_hausdorff": float(object_hausdorff(lab, gt)) if hausdorff else float("nan"),
        "n_pred": int(lab.max(initial=0)),
        "n_gt": int(len(np.unique(gt[gt > 0]))),
    }


def _aggregate(stats: List[dict], hausdorff: bool = True) -> Dict[str, float]:
    tp = sum(s["tp"] for s in stats)
    fp = sum(s["fp"] for s in stats)
    fn = sum(s["fn"] for s in stats)
    otp = sum(s["obj_tp"] for s in stats)
    ofp = sum(s["obj_fp"] for s in stats)
    ofn = sum(s["obj_fn"] for s in stats)
    out = {
        "dice_pooled": 1.0 if 2 * tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn),
        "iou_pooled": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
        "dice_mean": float(np.mean([s["dice"] for s in stats])),
        "iou_mean": float(np.mean([s["iou"] for s in stats])),
        "object_f1": 1.0 if 2 * otp + ofp + ofn == 0 else 2.0 * otp / (2 * otp + ofp + ofn),
        "object_precision": 1.0 if otp + ofp == 0 else otp / (otp + ofp),
        "object_recall": 1.0 if otp + ofn == 0 else otp / (otp + ofn),
        "object_dice": float(np.mean([s["object_dice"] for s in stats])),
    }
    if hausdorff:
        hd = np.array([s["object_hausdorff"] for s in stats], np.float64)
        finite = np.isfinite(hd)
        out["object_hausdorff"] = float(hd.mean())
        out["object_hausdorff_defined_mean"] = float(hd[finite].mean()) if finite.any() else float("nan")
        out["object_hausdorff_undefined"] = int((~finite).sum())
    return out


def _sweep(hist_pos: torch.Tensor, hist_neg: torch.Tensor) -> List[Dict[str, float]]:
    """Pooled Dice/IoU at each reference threshold from histograms of
    ``#(thresholds < p)`` over foreground / background pixels."""
    pos = hist_pos.double().cpu()
    neg = hist_neg.double().cpu()
    # predicted foreground at threshold k  <=>  #(thresholds < p) >= k + 1
    tp_k = pos.flip(0).cumsum(0).flip(0)[1:]
    fp_k = neg.flip(0).cumsum(0).flip(0)[1:]
    total = float(pos.sum())
    out = []
    for k, t in enumerate(REFERENCE_THRESHOLDS):
        tp, fp = float(tp_k[k]), float(fp_k[k])
        fn = total - tp
        out.append({"threshold": t,
                    "dice": 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
                    "iou": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)})
    return out


def evaluate(model, dataset, device, protocol: str = "ours", threshold: float = 0.5,
             split_boundary: bool = False, batch_size: int = 4, *, min_size: int = 0,
             input_size: Union[None, int, str] = "auto", multiple: Optional[int] = None,
             per_image: bool = False, num_workers: int = 0, threads: Optional[int] = None,
             amp: bool = False, hausdorff: bool = True) -> Dict:
    """Evaluate a model on a dataset of ``{"image", "mask", "name"}`` items.

    Args:
        model: Semi-MoE model (docs/CONTRACTS.md); put in eval mode for the
            call and restored to its previous mode after.
        dataset: items with ``image`` float32 (3, H, W) normalised and ``mask``
            int (H, W) instance labels; sizes may differ between items.
        device: where the model runs.
        protocol: ``"ours"`` or ``"reference"`` (module doc).
        threshold: foreground if ``p_fg > threshold`` (0.5 = argmax).
        split_boundary: split touching glands with the boundary head
            (``bnd`` probability > 0.5); ``"ours"`` only.
        batch_size: images per forward pass (consecutive same-size images).
        min_size: predicted instances smaller than this (pixels) are removed.
        input_size: ``"auto"`` (``dataset.input_size``), None (native) or a
            side: the model sees the image resized to it (``"ours"`` only).
        multiple: size multiple the model needs (None: :func:`size_multiple`).
        per_image: include ``"per_image"``: a list of per-image dicts.
        num_workers: DataLoader workers for reading the dataset.
        threads: CPU threads for the per-image object metrics (they overlap
            with the model's forward passes); None: ``min(4, cpu_count)``.
        amp: bfloat16 autocast on CUDA.
        hausdorff: compute the object Hausdorff distance. It dominates the
            cost for noisy predictions (thousands of speckles: seconds per
            image), so a training loop validating often may turn it off; the
            ``object_hausdorff*`` keys are then absent.

    Returns:
        dict. ``"ours"``: protocol, n_images, threshold, split_boundary,
        min_size, input_size, dice_pooled, iou_pooled, dice_mean, iou_mean,
        object_f1, object_precision, object_recall, object_dice,
        object_hausdorff, object_hausdorff_defined_mean,
        object_hausdorff_undefined, seconds, images_per_second.
        ``"reference"``: protocol (:data:`REFERENCE_LABEL`), n_images, size,
        threshold (the selected one), dice_pooled, iou_pooled (at it),
        fixed_threshold, dice_pooled_fixed, iou_pooled_fixed (at ``threshold``),
        sweep (list of {threshold, dice, iou}), seconds, images_per_second.
    """
    if protocol not in ("ours", "reference"):
        raise ValueError(f"protocol must be 'ours' or 'reference', got {protocol!r}")
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    in_size = _resolve_input_size(dataset, input_size)
    t0 = time.perf_counter()
    with _EvalMode(model), torch.no_grad():
        if protocol == "reference":
            res = _evaluate_reference(model, dataset, device, threshold, batch_size, multiple,
                                      num_workers, amp)
        else:
            res = _evaluate_ours(model, dataset, device, threshold, split_boundary, batch_size,
                                 min_size, in_size, multiple, per_image, num_workers, threads, amp,
                                 hausdorff)
    dt = time.perf_counter() - t0
    res["seconds"] = dt
    res["images_per_second"] = res["n_images"] / dt if dt > 0 else float("inf")
    return res


def _evaluate_ours(model, dataset, device, threshold, split_boundary, batch_size, min_size,
                   in_size, multiple, per_image, num_workers, threads, amp, hausdorff) -> Dict:
    n_threads = threads if threads is not None else max(1, min(4, os.cpu_count() or 1))
    futures = []
    with ThreadPoolExecutor(n_threads) as pool:
        for batch in _batches(dataset, batch_size, num_workers):
            x = torch.stack([b["image"] for b in batch]).to(device, non_blocking=True)
            pr = predict(model, x, multiple, in_size, want_bnd=split_boundary, amp=amp)
            fg = (pr.fg > threshold).cpu().numpy()
            bnd = (pr.bnd > 0.5).cpu().numpy() if split_boundary else None
            for i, b in enumerate(batch):
                if "mask" not in b:
                    raise ValueError(f"evaluate: item {b.get('name', '?')!r} has no mask")
                gt = b["mask"].numpy() if torch.is_tensor(b["mask"]) else np.asarray(b["mask"])
                if gt.shape != fg[i].shape:
                    raise ValueError(f"evaluate: mask of {b.get('name', '?')!r} is {gt.shape}, "
                                     f"image is {fg[i].shape}")
                futures.append(pool.submit(_image_stats, str(b.get("name", len(futures))), fg[i],
                                           None if bnd is None else bnd[i], gt, min_size, hausdorff))
        stats = [f.result() for f in futures]
    res = {"protocol": OURS_LABEL, "n_images": len(stats), "threshold": float(threshold),
           "split_boundary": bool(split_boundary), "min_size": int(min_size),
           "input_size": in_size}
    res.update(_aggregate(stats, hausdorff))
    if per_image:
        keys = ["name", "dice", "iou", "object_f1", "object_dice"]
        keys += ["object_hausdorff"] if hausdorff else []
        res["per_image"] = [{k: s[k] for k in keys + ["n_pred", "n_gt"]} for s in stats]
    return res


def _evaluate_reference(model, dataset, device, threshold, batch_size, multiple, num_workers,
                        amp) -> Dict:
    S = (REFERENCE_SIZE, REFERENCE_SIZE)
    thr = torch.tensor(REFERENCE_THRESHOLDS, dtype=torch.float64, device=device)
    nb = len(REFERENCE_THRESHOLDS) + 1
    hist_pos = torch.zeros(nb, dtype=torch.int64, device=device)
    hist_neg = torch.zeros(nb, dtype=torch.int64, device=device)
    fixed = torch.zeros(3, dtype=torch.int64, device=device)
    n = 0
    for batch in _batches(dataset, batch_size, num_workers):
        for b in batch:
            if "mask" not in b:
                raise ValueError(f"evaluate: item {b.get('name', '?')!r} has no mask")
        # resize before batching: images of different native sizes share a batch
        x = torch.stack([resize_image(b["image"], S, antialias=True) for b in batch]).to(device)
        gt = torch.stack([resize_mask(torch.as_tensor(b["mask"]), S) for b in batch]).to(device) > 0
        p = predict(model, x, multiple, None, amp=amp).fg
        idx = torch.bucketize(p.double(), thr)  # #(thresholds < p)
        hist_pos += torch.bincount(idx[gt], minlength=nb)
        hist_neg += torch.bincount(idx[~gt], minlength=nb)
        pf = p > threshold
        fixed += torch.stack([(pf & gt).sum(), (pf & ~gt).sum(), (~pf & gt).sum()])
        n += len(batch)
    sweep = _sweep(hist_pos, hist_neg)
    best = max(range(len(sweep)), key=lambda k: (sweep[k]["iou"], -k))  # first max, as argmax
    tp, fp, fn = (int(v) for v in fixed.cpu())
    return {
        "protocol": REFERENCE_LABEL,
        "n_images": n,
        "size": REFERENCE_SIZE,
        "threshold": sweep[best]["threshold"],
        "dice_pooled": sweep[best]["dice"],
        "iou_pooled": sweep[best]["iou"],
        "fixed_threshold": float(threshold),
        "dice_pooled_fixed": 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
        "iou_pooled_fixed": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
        "sweep": sweep,
    }


# ----------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------
def _palette(n: int) -> np.ndarray:
    """n distinct bright colours (golden-angle hues), uint8 (n, 3)."""
    h = (np.arange(n) * 0.618033988749895) % 1.0
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    v, s = 1.0, 0.85
    p_, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [v, q, p_, p_, t, v]),
        np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [t, v, v, q, p_, p_]),
        np.select([i == 0, i == 1, i == 2, i == 3, i == 4, i == 5], [p_, p_, t, v, v, q]),
    ], axis=1)
    return (table * 255).round().astype(np.uint8)


def _outline(labels: np.ndarray, thick: bool) -> np.ndarray:
    from .ops import find_boundaries

    t = torch.from_numpy(np.ascontiguousarray(labels.astype(np.int32)))
    b = find_boundaries(t, mode="inner")
    if thick:
        b = F.max_pool2d(b[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        b &= t > 0
    return b.numpy()


def _to_rgb(x: torch.Tensor, mean, std) -> np.ndarray:
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    else:
        lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-6)
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _hcat(panels: Sequence[np.ndarray], sep: int = 4) -> np.ndarray:
    H = max(p.shape[0] for p in panels)
    parts = []
    for k, p in enumerate(panels):
        if p.shape[0] < H:
            p = np.concatenate([p, np.full((H - p.shape[0],) + p.shape[1:], 255, np.uint8)], 0)
        if k:
            parts.append(np.full((H, sep, 3), 255, np.uint8))
        parts.append(p)
    return np.concatenate(parts, axis=1)


def _font():
    try:
        return ImageFont.load_default()
    except Exception:  # pragma: no cover - very old Pillow
        return None


def _gate_bars(g: np.ndarray) -> Image.Image:
    """Bar chart of per-image gate weights g (T, K): one group per task gate,
    one bar per expert (colours: seg red, sdf green, bnd blue)."""
    T, K = g.shape
    bar_w, gap, left, right, top, plot_h, bottom = 22, 20, 34, 12, 30, 120, 20
    width = left + T * K * bar_w + (T - 1) * gap + right
    height = top + plot_h + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = _font()
    x_axis = left - 4
    d.line([(x_axis, top), (x_axis, top + plot_h)], fill=(0, 0, 0))
    d.line([(x_axis, top + plot_h), (width - right + 4, top + plot_h)], fill=(0, 0, 0))
    for v in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - v)
        d.line([(x_axis - 3, y), (x_axis, y)], fill=(0, 0, 0))
        d.text((2, y - 5), f"{v:.1f}", fill=(0, 0, 0), font=font)
    for t in range(T):
        x0 = left + t * (K * bar_w + gap)
        for k in range(K):
            v = float(np.clip(g[t, k], 0.0, 1.0))
            y = top + plot_h * (1 - v)
            d.rectangle([x0 + k * bar_w + 2, y, x0 + (k + 1) * bar_w - 2, top + plot_h],
                        fill=EXPERT_COLOURS[k % 3])
        label = f"{TASKS[t] if t < len(TASKS) else t} gate"
        d.text((x0, top + plot_h + 4), label, fill=(0, 0, 0), font=font)
    # legend: expert colours
    x = left
    for k in range(K):
        d.rectangle([x, 6, x + 10, 16], fill=EXPERT_COLOURS[k % 3])
        name = TASKS[k] if k < len(TASKS) else str(k)
        d.text((x + 14, 5), name, fill=(0, 0, 0), font=font)
        x += 20 + 7 * len(name)
    d.text((x, 5), "experts", fill=(0, 0, 0), font=font)
    return img


def _gate_maps(g: np.ndarray) -> Image.Image:
    """Spatial gate weights g (T, K, H, W) as T RGB panels (R, G, B = weights of
    the seg, sdf, bnd experts), with a header naming each task gate."""
    T, K, H, W = g.shape
    panels = []
    for t in range(T):
        rgb = np.zeros((H, W, 3), np.float32)
        rgb[..., :min(K, 3)] = np.moveaxis(g[t, :3], 0, -1)
        panels.append((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    body = _hcat(panels)
    head = 16
    img = Image.new("RGB", (body.shape[1], body.shape[0] + head), "white")
    img.paste(Image.fromarray(body), (0, head))
    d = ImageDraw.Draw(img)
    font = _font()
    for t in range(T):
        label = f"{TASKS[t] if t < len(TASKS) else t} gate: R=seg G=sdf B=bnd expert"
        d.text((t * (W + 4) + 2, 2), label if W >= 7 * len(label) else f"{TASKS[t] if t < 3 else t}",
               fill=(0, 0, 0), font=font)
    return img


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "image"


def write_overlays(model, dataset, out_dir, device, n: int = 8, *, threshold: float = 0.5,
                   split_boundary: bool = False, min_size: int = 0,
                   input_size: Union[None, int, str] = "auto", multiple: Optional[int] = None,
                   amp: bool = False) -> List[str]:
    """PNG overlays of ``n`` images spread evenly over ``dataset``.

    For each image ``k`` (file prefix ``{k:03d}_{name}``):

    * ``..._overlay.png``: image | ground-truth outlines (green; omitted
      without a mask: image | prediction) | predicted instance outlines (one
      colour per instance).
    * ``..._gates.png`` (if the model returns gates): per-image gates as a bar
      chart, spatial gates as RGB weight maps per task.

    Returns the written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(dataset) == 0 or n <= 0:
        return []
    device = torch.device(device)
    in_size = _resolve_input_size(dataset, input_size)
    idx = sorted(set(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int).tolist()))
    mean = getattr(dataset, "mean", None)
    std = getattr(dataset, "std", None)
    paths: List[str] = []
    with _EvalMode(model), torch.no_grad():
        for k, i in enumerate(idx):
            item = dataset[i]
            x = item["image"]
            pr = predict(model, x[None].to(device), multiple, in_size, want_bnd=split_boundary,
                         want_gates=True, amp=amp)
            fg = (pr.fg[0] > threshold).cpu().numpy()
            bnd = (pr.bnd[0] > 0.5).cpu().numpy() if split_boundary else None
            lab = _instances(fg, bnd, min_size)
            img = _to_rgb(x, mean, std)
            thick = max(img.shape[:2]) > 400
            panels = [img]
            if "mask" in item:
                gt = np.asarray(item["mask"])
                g = img.copy()
                g[_outline(gt, thick)] = (0, 255, 0)
                panels.append(g)
            p = img.copy()
            ob = _outline(lab, thick)
            if ob.any():
                pal = _palette(int(lab.max()) + 1)
                p[ob] = pal[lab[ob]]
            panels.append(p)
            stem = f"{k:03d}_{_safe(str(item.get('name', i)))}"
            path = out / f"{stem}_overlay.png"
            Image.fromarray(_hcat(panels)).save(path)
            paths.append(str(path))
            if pr.gates is not None:
                g = pr.gates[0].cpu().numpy()
                gimg = _gate_bars(g) if g.ndim == 2 else _gate_maps(g)
                gpath = out / f"{stem}_gates.png"
                gimg.save(gpath)
                paths.append(str(gpath))
    return paths


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
def _load_model(path: str, device):
    """(model, meta) from a checkpoint via :func:`semimoe.models.load_checkpoint`."""
    try:
        from .models import load_checkpoint
    except ImportError as e:  # pragma: no cover - until the model package lands
        raise SystemExit(f"cannot load {path}: semimoe.models.load_checkpoint is not available ({e})")
    return load_checkpoint(path, map_location=device)


def _data_config_from_meta(meta: dict) -> dict:
    for key in ("data_config", "data"):
        v = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(v, dict):
            return v
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if isinstance(cfg, dict) and isinstance(cfg.get("data"), dict):
        return cfg["data"]
    return {}


def jsonable(x):
    """``x`` with numpy scalars as Python numbers and non-finite floats as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return jsonable(x.item())
    return x


def format_table(metrics: Dict, title: str = "") -> str:
    """Two-column text table of the scalar entries of ``metrics``."""
    rows = [(k, v) for k, v in metrics.items() if not isinstance(v, (list, dict))]
    w = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    for k, v in rows:
        if isinstance(v, float):
            s = f"{v:.4f}" if math.isfinite(v) else str(v)
        else:
            s = str(v)
        lines.append(f"  {k:<{w}}  {s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from .data.datasets import KINDS, build_datasets, build_test_dataset, config_from_dict

    p = argparse.ArgumentParser(prog="python -m semimoe.evaluate",
                                description="Evaluate a Semi-MoE checkpoint (metrics table, "
                                            "metrics.json, overlays).")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (e.g. run/best.pt)")
    p.add_argument("--data", choices=KINDS, default=None,
                   help="dataset kind (default: the checkpoint's, else synthetic)")
    p.add_argument("--root", default=None, help="dataset folder (glas/crag/folder)")
    p.add_argument("--split", default="test",
                   help="test | testA | testB (GlaS) | val (the run's validation split) | "
                        "a folder name (folder layout)")
    p.add_argument("--protocol", choices=("ours", "reference", "both"), default="ours")
    p.add_argument("--out", default=None,
                   help="output folder (default: <checkpoint dir>/eval_<data>_<split>)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--split-boundary", action="store_true",
                   help="split touching glands with the boundary head")
    p.add_argument("--min-size", type=int, default=0, help="drop predicted objects below this area (px)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--overlays", type=int, default=8, help="number of overlay images (0: none)")
    p.add_argument("--size", type=int, default=None, help="training side (default: the checkpoint's)")
    p.add_argument("--input-size", type=int, default=-1,
                   help="side the model sees (-1: the dataset's training side, 0: native)")
    p.add_argument("--synthetic-test", type=int, default=None, help="number of synthetic test images")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    args = p.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    model, meta = _load_model(args.checkpoint, device)
    model.to(device)
    meta = meta or {}
    d = dict(_data_config_from_meta(meta))
    if args.data is not None and args.data != d.get("kind"):
        d = {k: v for k, v in d.items() if k not in ("root", "mean", "std")}
        d["kind"] = args.data
    d.setdefault("kind", "synthetic")
    if args.root is not None:
        d["root"] = args.root
    if args.size is not None:
        d["size"] = args.size
    if args.synthetic_test is not None:
        d["synthetic_test"] = args.synthetic_test
    norm = meta.get("norm") if isinstance(meta, dict) else None
    if isinstance(norm, dict) and norm.get("mean") is not None and norm.get("std") is not None:
        d["mean"], d["std"] = tuple(norm["mean"]), tuple(norm["std"])
    d["augment"] = False
    cfg = config_from_dict(d)

    ckpt_dir = Path(args.checkpoint).resolve().parent
    if args.split == "val":
        run_dir = ckpt_dir if (ckpt_dir / "split.json").exists() else None
        if run_dir is None:
            warnings.warn(f"no split.json next to {args.checkpoint}: the validation split is "
                          f"recomputed from the seed ({cfg.seed})")
        dataset = build_datasets(cfg, run_dir)[2]
    else:
        dataset = build_test_dataset(cfg, args.split)
    in_size = "auto" if args.input_size < 0 else (args.input_size or None)
    out = Path(args.out) if args.out else ckpt_dir / f"eval_{cfg.kind}_{args.split}"
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    for proto in (("ours", "reference") if args.protocol == "both" else (args.protocol,)):
        r = evaluate(model, dataset, device, protocol=proto, threshold=args.threshold,
                     split_boundary=args.split_boundary and proto == "ours",
                     batch_size=args.batch_size, min_size=args.min_size, input_size=in_size,
                     per_image=proto == "ours", num_workers=args.workers, amp=args.amp)
        results[proto] = r
        print(format_table(r, f"{cfg.kind} {args.split}, {len(dataset)} images -- {r['protocol']}"))
        if proto == "ours":
            with open(out / "per_image.csv", "w", newline="") as f:
                rows = r.pop("per_image")
                wr = csv.DictWriter(f, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
    doc = {"checkpoint": str(args.checkpoint), "split": args.split,
           "data": dataclasses.asdict(cfg), "device": str(device)}
    doc.update(results[args.protocol] if args.protocol != "both" else results)
    with open(out / "metrics.json", "w") as f:
        json.dump(jsonable(doc), f, indent=1)
        f.write("\n")
    paths = []
    if args.overlays > 0:
        paths = write_overlays(model, dataset, out / "overlays", device, n=args.overlays,
                               threshold=args.threshold, split_boundary=args.split_boundary,
                               min_size=args.min_size, input_size=in_size, amp=args.amp)
    print(f"wrote {out / 'metrics.json'}" + (f" and {len(paths)} overlay PNGs in {out / 'overlays'}"
                                            if paths else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
