"""Gland instances of a whole slide, each counted once across tile and block seams.

The probability raster on disk is cut into square **blocks**; each block is
post-processed in a **view** that adds a margin of ``margin`` canvas pixels
on every side, with the same rule as every other prediction path
(:func:`semimoe.inference.predictor.instances`). A gland is **owned** by the
block that holds its first pixel in raster order (its anchor), and only the
owner emits it. A gland whose connected mask component lies inside the view
is segmented exactly as in a whole-slide pass (the rule is local to a
component), so every gland no larger than the margin is emitted once and
whole, however many tile or block seams it crosses. A gland whose component
touches the view's edge (larger than the margin) is emitted by its owner as
seen in the view and counted in ``Instances.cut``.

Memory: one view, ``(block + 2 margin)^2`` pixels, a few bytes each.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..inference.predictor import instances as segment_instances
from .raster import DiskRaster

__all__ = ["InstanceConfig", "Instances", "iter_glands"]


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    threshold: float = 0.5
    boundary_threshold: float = 0.5
    split: bool = True
    min_size: int = 0          # canvas pixels
    block: int = 2048
    margin: int = 768


@dataclasses.dataclass
class Instances:
    count: int = 0
    cut: int = 0               # glands larger than the view's margin, emitted as seen
    area_px: int = 0


def _level(t: float) -> int:
    """uint8 level above which a quantised probability exceeds ``t`` (p > t <=> round(255 p) > 255 t)."""
    return int(np.floor(255.0 * t))


def _anchors(inst: np.ndarray, n: int) -> np.ndarray:
    """Flat index of the first pixel (raster order) of labels 1..n."""
    flat = inst.ravel()
    nz = np.flatnonzero(flat)
    labels, first = np.unique(flat[nz], return_index=True)
    out = np.full(n + 1, -1, np.int64)
    out[labels] = nz[first]
    return out


def _edge_components(comp: np.ndarray, open_sides: Tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Component labels that touch a view side inside the canvas (top, bottom, left, right)."""
    edges = [comp[0], comp[-1], comp[:, 0], comp[:, -1]]
    touching = [e for e, is_open in zip(edges, open_sides) if is_open]
    return np.unique(np.concatenate(touching)) if touching else np.zeros(0, comp.dtype)


def iter_glands(raster: DiskRaster, cfg: InstanceConfig, stats: Instances,
                on_block: Optional[Callable[[], None]] = None
                ) -> Iterator[Tuple[np.ndarray, np.ndarray, Tuple[int, int]]]:
    """Yield ``(mask crop bool, probability crop uint8, (row, col) of the crop)``
    for every gland of the canvas, once each (see the module doc)."""
    H, W = raster.shape
    B, M = int(cfg.block), int(cfg.margin)
    thr, bthr = _level(cfg.threshold), _level(cfg.boundary_threshold)
    for by in range(0, H, B):
        for bx in range(0, W, B):
            vy0, vy1 = max(by - M, 0), min(by + B + M, H)
            vx0, vx1 = max(bx - M, 0), min(bx + B + M, W)
            prob = raster.read(0, vy0, vy1, vx0, vx1)
            mask = prob > thr
            if mask.any():
                bnd = raster.read(1, vy0, vy1, vx0, vx1) > bthr
                yield from _block_glands(prob, mask, bnd, (vy0, vx0), (by, bx), cfg, stats,
                                         (vy0 > 0, vy1 < H, vx0 > 0, vx1 < W))
            if on_block is not None:
                on_block()


def _block_glands(prob, mask, bnd, view0, block0, cfg, stats, open_sides):
    mask, inst = segment_instances(mask, bnd, cfg.split, cfg.min_size)
    n = int(inst.max(initial=0))
    if n == 0:
        return
    comp, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    cut = set(_edge_components(comp, open_sides).tolist()) - {0}
    anchors = _anchors(inst, n)
    vy0, vx0 = view0
    by, bx = block0
    B = cfg.block
    Wv = inst.shape[1]
    slices: Dict[int, tuple] = dict(enumerate(ndimage.find_objects(inst), start=1))
    for lab in range(1, n + 1):
        a = anchors[lab]
        if a < 0 or slices[lab] is None:
            continue
        ay, ax = divmod(int(a), Wv)
        if not (by <= vy0 + ay < by + B and bx <= vx0 + ax < bx + B):
            continue  # another block owns it
        sl = slices[lab]
        crop = inst[sl] == lab
        stats.count += 1
        stats.area_px += int(crop.sum())
        if int(comp[ay, ax]) in cut:
            stats.cut += 1
        yield crop, prob[sl], (vy0 + sl[0].start, vx0 + sl[1].start)
