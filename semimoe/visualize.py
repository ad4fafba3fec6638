"""Pictures of predictions: instance outlines, tinted overlays, comparison
panels and gate charts. Used by ``semimoe.evaluate`` (overlays of a
dataset) and ``semimoe.infer`` (one overlay per image).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .models import EXPERTS, TASKS

__all__ = ["palette", "outline", "tint", "compare_panels", "gate_bars", "gate_maps", "write_overlays"]

EXPERT_COLOURS = ((214, 56, 56), (46, 160, 67), (52, 94, 222))


def palette(n: int) -> np.ndarray:
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


def outline(labels: np.ndarray, thick: bool = False) -> np.ndarray:
    """Inner outline of every instance of a label map (pixels with a 4-neighbour of
    another label), 3 px wide with ``thick``: bool (H, W)."""
    from .ops import find_boundaries

    t = torch.from_numpy(np.ascontiguousarray(labels.astype(np.int32)))
    b = find_boundaries(t, mode="inner")
    if thick:
        b = F.max_pool2d(b[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        b &= t > 0
    return b.numpy()


def hcat(panels: Sequence[np.ndarray], sep: int = 4) -> np.ndarray:
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


def gate_bars(g: np.ndarray) -> Image.Image:
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
        name = EXPERTS[k] if k < len(EXPERTS) else str(k)
        d.text((x + 14, 5), name, fill=(0, 0, 0), font=font)
        x += 20 + 7 * len(name)
    d.text((x, 5), "experts", fill=(0, 0, 0), font=font)
    return img


def gate_maps(g: np.ndarray) -> Image.Image:
    """Spatial gate weights g (T, K, H, W) as T RGB panels (R, G, B = weights of
    the seg, sdf, bnd experts), with a header naming each task gate."""
    T, K, H, W = g.shape
    panels = []
    for t in range(T):
        rgb = np.zeros((H, W, 3), np.float32)
        rgb[..., :min(K, 3)] = np.moveaxis(g[t, :3], 0, -1)
        panels.append((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    body = hcat(panels)
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


def tint(image: np.ndarray, mask: np.ndarray, instances: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """uint8 (H, W, 3): glands tinted green, instance outlines yellow."""
    out = image.astype(np.float32)
    colour = np.array([0.0, 200.0, 0.0], np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colour
    out[outline(instances)] = (255.0, 230.0, 0.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _titled(panel: np.ndarray, title: str, head: int = 14) -> np.ndarray:
    img = Image.new("RGB", (panel.shape[1], panel.shape[0] + head), "white")
    img.paste(Image.fromarray(panel), (0, head))
    ImageDraw.Draw(img).text((2, 1), title, fill=(0, 0, 0), font=_font())
    return np.asarray(img)


def compare_panels(image: np.ndarray, pred_labels: np.ndarray, gt_labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Titled panels side by side: the image | ground-truth outlines (green;
    omitted without ``gt_labels``) | predicted instance outlines (one colour per
    instance). uint8 (H', W', 3)."""
    thick = max(image.shape[:2]) > 400
    panels = [_titled(image, "image")]
    if gt_labels is not None:
        g = image.copy()
        g[outline(gt_labels, thick)] = (0, 255, 0)
        panels.append(_titled(g, f"ground truth ({len(np.unique(gt_labels[gt_labels > 0]))} glands)"))
    p = image.copy()
    ob = outline(pred_labels, thick)
    if ob.any():
        pal = palette(int(pred_labels.max()) + 1)
        p[ob] = pal[pred_labels[ob]]
    panels.append(_titled(p, f"prediction ({len(np.unique(pred_labels[pred_labels > 0]))} glands)"))
    return hcat(panels)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "image"


def write_overlays(predictor, dataset, out_dir, n: int = 8, *, threshold: float = 0.5,
                   split_boundary: bool = False, min_size: int = 0, model=None) -> List[str]:
    """PNG overlays of ``n`` images spread evenly over ``dataset``.

    Args:
        predictor: the :class:`semimoe.inference.Predictor` whose output is shown.
        dataset: items with ``name``, ``image`` (uint8 (H, W, 3)) and ``mask``
            (an :class:`semimoe.data.ImageSet`), at ``dataset.mpp`` µm/px.
        model: the :class:`semimoe.models.SemiMoE` behind the predictor, for
            the gate pictures (None, or a model without gates such as the
            MIL segmenter: no gate pictures).

    For each image ``k`` (file prefix ``{k:03d}_{name}``):

    * ``..._overlay.png``: :func:`compare_panels` of the predicted instances.
    * ``..._gates.png`` (with ``model``): the gate weights of the model on
      the image at the model's scale: a bar chart for per-image gates, RGB
      weight maps per task for spatial gates.

    Returns the written paths.
    """
    from .inference import postprocess

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model is not None and getattr(getattr(model, "cfg", None), "arch", "semimoe") != "semimoe":
        model = None  # no gates to draw
    if len(dataset) == 0 or n <= 0:
        return []
    mpp = getattr(dataset, "mpp", None)
    idx = sorted(set(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int).tolist()))
    paths: List[str] = []
    for k, i in enumerate(idx):
        name, image, mask = dataset[i]
        image = np.asarray(image)
        prob = predictor.probabilities(image, mpp)
        _, lab = postprocess(prob, threshold, 0.5, split_boundary, min_size)
        stem = f"{k:03d}_{_safe(str(name))}"
        path = out / f"{stem}_overlay.png"
        Image.fromarray(compare_panels(image, lab, np.asarray(mask))).save(path)
        paths.append(str(path))
        if model is not None:
            g = _gates(model, predictor, image, mpp)
            gimg = gate_bars(g) if g.ndim == 2 else gate_maps(g)
            gpath = out / f"{stem}_gates.png"
            gimg.save(gpath)
            paths.append(str(gpath))
    return paths


def _gates(model, predictor, image: np.ndarray, mpp) -> np.ndarray:
    """(T, K) or (T, K, h, w) gate weights of ``model`` on ``image`` at the
    model's scale, through the same resampling, normalisation and padding as
    the predictor (one whole-image tile)."""
    from .data.scale import resample_image
    from .inference import sliding_window

    spec = predictor.spec
    small = resample_image(image, spec.factor(mpp))
    was = model.training
    model.eval()

    def gate_maps_of(x):  # the gates as per-pixel maps (b, T*K, h, w)
        g = model(x).gates.float()
        if g.dim() == 3:
            g = g[..., None, None].expand(*g.shape, *x.shape[-2:])
        return g.flatten(1, 2)

    gate_maps_of.size_multiple = model.size_multiple
    gate_maps_of.device = next(model.parameters()).device
    try:
        g = sliding_window(gate_maps_of, small, tile=None, mean=spec.mean, std=spec.std).cpu()
    finally:
        model.train(was)
    g = g.reshape(len(TASKS), len(EXPERTS), *g.shape[-2:])
    per_image = model.cfg.gate == "image"
    return (g[..., 0, 0] if per_image else g).numpy()
