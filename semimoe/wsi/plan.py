"""Where a slide is read and at what scale: the canvas and its tiles.

The **canvas** is the slide's region of interest (``Slide.bounds``) at the
model's training scale (``InputSpec.mpp``). It is read from the pyramid level
nearest above that scale (:meth:`Slide.best_level`) and resampled with the
taps of :func:`semimoe.data.scale.axis_taps` -- the filter of
:func:`~semimoe.data.scale.resample_image`, which built the training images
and serves every other prediction path -- evaluated tile by tile at global
positions, so a tile's pixels equal those of the whole level resampled at
once (up to float rounding).

Canvas pixel (r, c) (corner convention: it spans [r, r+1) x [c, c+1)) sits
at level-0 position ``x = (lx + c * sx) * d``, ``y = (ly + r * sy) * d``
(:meth:`Canvas.to_level0`), where (lx, ly) is the region's corner in level
pixels, (sx, sy) level pixels per canvas pixel and d the level's downsample.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

import numpy as np

from ..data.scale import apply_taps, axis_taps, resampled_shape
from ..inference.grid import tile_starts
from .reader import Slide

__all__ = ["Canvas", "make_canvas", "tile_grid"]


@dataclasses.dataclass(frozen=True)
class Canvas:
    """The region of interest of ``slide`` at ``mpp`` µm/px; see the module doc."""

    slide: Slide
    mpp: float
    level: int
    origin: Tuple[int, int]      # (lx, ly): the region's corner in level pixels
    extent: Tuple[int, int]      # (lw, lh): its size in level pixels
    shape: Tuple[int, int]       # (H, W) canvas pixels

    @property
    def scale(self) -> Tuple[float, float]:
        """(sy, sx): level pixels per canvas pixel."""
        return self.extent[1] / self.shape[0], self.extent[0] / self.shape[1]

    def to_level0(self, rows, cols) -> Tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of canvas positions (rows, cols), corner convention."""
        d = self.slide.level_downsamples[self.level]
        sy, sx = self.scale
        xs = (self.origin[0] + np.asarray(cols, np.float64) * sx) * d
        ys = (self.origin[1] + np.asarray(rows, np.float64) * sy) * d
        return xs, ys

    def taps(self, start: int, length: int, axis: int) -> Tuple[np.ndarray, np.ndarray]:
        """Source taps (level indices, weights) of canvas rows (axis 0) or columns (axis 1)."""
        lw, lh = self.slide.level_dimensions[self.level]
        if axis == 0:
            return axis_taps(start, length, self.extent[1], self.shape[0], self.origin[1], lh)
        return axis_taps(start, length, self.extent[0], self.shape[1], self.origin[0], lw)

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) of canvas rows y0.. and columns x0.. (white beyond the slide)."""
        rows, cols = self.taps(y0, h, 0), self.taps(x0, w, 1)
        ly0, ly1 = int(rows[0].min()), int(rows[0].max()) + 1
        lx0, lx1 = int(cols[0].min()), int(cols[0].max()) + 1
        window = self.slide.read(self.level, lx0, ly0, lx1 - lx0, ly1 - ly0)
        return apply_taps(window, ly0, lx0, rows, cols)

    def describe(self) -> dict:
        return {"level": self.level, "level_mpp": self.slide.level_mpp(self.level), "canvas_mpp": self.mpp,
                "canvas_shape": list(self.shape), "level_origin": list(self.origin),
                "level_extent": list(self.extent)}


def make_canvas(slide: Slide, mpp: float, level: Optional[int] = None) -> Canvas:
    """The canvas of ``slide`` at ``mpp`` µm/px, read from ``level`` (default: the best level)."""
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number, got {mpp!r}")
    lvl = slide.best_level(mpp) if level is None else int(level)
    d = slide.level_downsamples[lvl]
    bx, by, bw, bh = slide.bounds
    lx0, ly0 = int(math.floor(bx / d)), int(math.floor(by / d))
    lx1, ly1 = int(math.ceil((bx + bw) / d)), int(math.ceil((by + bh) / d))
    lw, lh = max(lx1 - lx0, 1), max(ly1 - ly0, 1)
    shape = resampled_shape((lh, lw), slide.level_mpp(lvl) / mpp)
    return Canvas(slide, float(mpp), lvl, (lx0, ly0), (lw, lh), shape)


def tile_grid(shape: Tuple[int, int], tile: int, overlap: float, align: int) -> Tuple[List[int], List[int]]:
    """Tile starts (ys, xs) over a canvas of ``shape``: the grid of
    :func:`semimoe.inference.grid.tile_starts` (MONAI's with ``align=1``)."""
    ys, _ = tile_starts(shape[0], tile, overlap, align)
    xs, _ = tile_starts(shape[1], tile, overlap, align)
    return ys, xs
