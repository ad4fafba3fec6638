"""The tile grid: where tiles sit on an image, and how their pixels are read.

Per axis, tile starts are ``0, s, 2s, ...`` with the stride
``s = tile * (1 - overlap)`` rounded down to a multiple of ``align``, and a
last tile that ends at the image border (rounded up to a multiple of
``align``). With ``align=1`` this is exactly MONAI's
``sliding_window_inference`` grid. With ``align`` = the model's downsampling
factor (its ``size_multiple``) every tile sits on the model's pooling grid,
so that a pixel whose receptive field lies inside a tile gets *exactly* the
value of a full-image forward pass.

Where the grid runs past the bottom/right border (alignment) or the image is
smaller than a tile, the missing pixels are filled by ``pad_mode``
(``"reflect"``, ``"replicate"``, or ``"constant"`` = 0 after normalisation,
i.e. the dataset mean colour). Only border tiles are gathered through an
index map; nothing full-size is padded.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["tile_starts", "pad_index", "TileGrid", "TileReader", "PAD_MODES"]

PAD_MODES = ("reflect", "replicate", "constant")


def tile_starts(size: int, tile: int, overlap: float, align: int = 1) -> Tuple[List[int], int]:
    """Tile start positions along one axis and the padded extent they cover.

    Returns ``(starts, padded)``: ``starts`` increasing multiples of ``align``
    (the first is 0), every pixel in ``[0, size)`` covered, consecutive tiles
    overlapping by at least ``overlap * tile`` (minus alignment), and
    ``padded = starts[-1] + tile >= size``. With ``align=1`` and
    ``size >= tile`` this equals MONAI's ``dense_patch_slices`` grid.
    """
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    stride = int(tile * (1.0 - overlap)) // align * align
    stride = max(stride, align)
    if size <= tile:
        return [0], tile
    last = -(-(size - tile) // align) * align
    starts = list(range(0, last, stride)) + [last]
    return starts, last + tile


def pad_index(n_pad: int, size: int, mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """Source index of positions ``0..n_pad-1`` of an axis of length ``size``
    padded at the end, and the validity mask (False where ``constant`` fills).

    ``reflect`` mirrors about the last pixel without repeating it, as often as
    needed (``a b c d c b a b ...``); ``replicate`` repeats the last pixel.
    """
    i = np.arange(n_pad)
    valid = i < size
    if mode == "reflect" and size > 1:
        period = 2 * size - 2
        j = i % period
        src = np.where(j < size, j, period - j)
    else:  # replicate, constant (value replaced afterwards), reflect of a 1-pixel axis
        src = np.minimum(i, size - 1)
    return src, valid


class TileGrid:
    """Tile positions over an (H, W) image.

    Attributes: ``shape`` (H, W), ``tile`` (th, tw), ``ys``/``xs`` (tile
    starts per axis), ``padded`` (Hp, Wp) = the extent the tiles cover,
    ``pad_mode``; ``row_src``/``col_src`` (int64 tensors on ``device``) map
    padded positions to image pixels.
    """

    def __init__(self, shape: Tuple[int, int], tile: Tuple[int, int], overlap: float, align: int = 1,
                 pad_mode: str = "reflect", device=None):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.tile = (int(tile[0]), int(tile[1]))
        self.pad_mode = pad_mode
        H, W = self.shape
        th, tw = self.tile
        self.ys, Hp = tile_starts(H, th, overlap, align)
        self.xs, Wp = tile_starts(W, tw, overlap, align)
        self.padded = (Hp, Wp)
        ry, self._vy = pad_index(Hp, H, pad_mode)
        rx, self._vx = pad_index(Wp, W, pad_mode)
        self.row_src = torch.from_numpy(ry).to(device)
        self.col_src = torch.from_numpy(rx).to(device)

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def positions(self) -> List[Tuple[int, int]]:
        """(row, column) indices of every tile, row by row."""
        return [(r, c) for r in range(len(self.ys)) for c in range(len(self.xs))]

    def origin(self, r: int, c: int) -> Tuple[int, int]:
        return self.ys[r], self.xs[c]

    def inside(self, r: int, c: int) -> bool:
        """Whether tile (r, c) lies entirely inside the image (no padding)."""
        y0, x0 = self.origin(r, c)
        return y0 + self.tile[0] <= self.shape[0] and x0 + self.tile[1] <= self.shape[1]

    def valid_extent(self, r: int, c: int) -> Tuple[int, int]:
        """Rows and columns of tile (r, c) that hold image pixels (the rest is padding)."""
        y0, x0 = self.origin(r, c)
        th, tw = self.tile
        return int(self._vy[y0:y0 + th].sum()), int(self._vx[x0:x0 + tw].sum())


class Job(NamedTuple):
    """One tile of one image: image index ``n`` and grid position (``r``, ``c``)."""

    n: int
    r: int
    c: int


class TileReader:
    """Copies tiles of N same-size images into a channels-last float32 batch
    buffer and normalises them in one pass.

    ``images``: uint8 (H, W, C) tensors (normalised as ``(x / 255 - mean) /
    std``) or float (C, H, W) tensors (used as they are, or normalised as
    ``(x - mean) / std`` when ``mean`` and ``std`` are given), on the device.
    ``read(jobs)`` returns the (len(jobs), C, th, tw) batch as a view of the
    buffer (channels-last strides), valid until the next call.
    """

    def __init__(self, images: Sequence[Tensor], hwc: bool, grid: TileGrid, capacity: int,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        self.images, self.hwc, self.grid = list(images), hwc, grid
        im0 = self.images[0]
        device = im0.device
        C = im0.shape[2] if hwc else im0.shape[0]
        th, tw = grid.tile
        self.buf = torch.empty(capacity, th, tw, C, dtype=torch.float32, device=device)
        self.scale_row = self.shift_row = None
        if mean is not None and std is not None:
            mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(-1)
            std_t = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(-1)
            if mean_t.numel() != C or std_t.numel() != C:
                raise ValueError(f"mean/std must have {C} values")
            scale, shift = 1.0 / std_t, -mean_t / std_t
            if hwc:
                scale = scale / 255.0
            # one fused multiply-add over rows of tw * C values (a per-channel
            # broadcast over a last dim of 3 does not vectorise)
            self.scale_row, self.shift_row = scale.repeat(tw), shift.repeat(tw)
        elif hwc:
            raise ValueError("uint8 images need mean and std (normalisation of the model's input)")

    def read(self, jobs: Sequence[Job]) -> Tensor:
        g = self.grid
        th, tw = g.tile
        for i, (n, r, c) in enumerate(jobs):
            y0, x0 = g.origin(r, c)
            img = self.images[n]
            inside = g.inside(r, c)
            if self.hwc:
                src = img[y0:y0 + th, x0:x0 + tw] if inside else \
                    img.index_select(0, g.row_src[y0:y0 + th]).index_select(1, g.col_src[x0:x0 + tw])
                self.buf[i].copy_(src)
            else:
                src = img[:, y0:y0 + th, x0:x0 + tw] if inside else \
                    img.index_select(1, g.row_src[y0:y0 + th]).index_select(2, g.col_src[x0:x0 + tw])
                self.buf[i].copy_(src.permute(1, 2, 0))
        nb = len(jobs)
        xb = self.buf[:nb]
        if self.scale_row is not None:
            rows = xb.view(nb * th, -1)
            torch.addcmul(self.shift_row, rows, self.scale_row, out=rows)
        if g.pad_mode == "constant":
            for i, (n, r, c) in enumerate(jobs):
                if not g.inside(r, c):
                    vh, vw = g.valid_extent(r, c)
                    xb[i, vh:] = 0
                    xb[i, :, vw:] = 0
        return xb.permute(0, 3, 1, 2)
