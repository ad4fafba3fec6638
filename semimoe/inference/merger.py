"""Blending tile predictions into full-size outputs with bounded memory.

``"gaussian"`` weights are MONAI's importance map (per-axis
``exp(-x^2 / (2 (sigma_scale * tile)^2))``, outer product, floored at 1e-3);
``"constant"`` weights are ones. The output is ``sum_t w_t p_t / sum_t w_t``
over the tiles t covering each pixel.

:class:`BandMerger` keeps the weighted sums in a float32 band of ``tile``
rows (``(C + 1) x tile x W`` floats) and writes rows to the output
(``out_dtype``) as soon as no later tile can touch them: no full-size weight
map, count map or float64 buffer. Tiles must arrive image by image and row
by row (the order of :meth:`TileGrid.positions`); within a row in any order.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .grid import Job, TileGrid

__all__ = ["blend_weights", "BandMerger", "BLEND_MODES"]

BLEND_MODES = ("gaussian", "constant")


def _gauss1d(n: int, sigma_scale: float) -> Tensor:
    sigma = sigma_scale * n
    x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
    return torch.exp(-(x * x) / (2.0 * sigma * sigma))


@functools.lru_cache(maxsize=32)
def _blend_weights_cached(th: int, tw: int, blend: str, sigma_scale: float, device: str) -> Tensor:
    if blend == "constant":
        w = torch.ones(th, tw, dtype=torch.float32)
    else:
        w = (_gauss1d(th, sigma_scale)[:, None] * _gauss1d(tw, sigma_scale)[None, :]).float()
        # MONAI's floor: far tile corners keep a small weight (never 0).
        w = w.clamp_(min=max(float(w.min()), 1e-3))
    return w.to(device)


def blend_weights(tile: Union[int, Sequence[int]], blend: str = "gaussian", sigma_scale: float = 0.125,
                  device: Union[str, torch.device] = "cpu") -> Tensor:
    """Per-pixel blending weight of one tile: float32 (th, tw), cached.

    ``"gaussian"``: ``g(y) g(x)`` with ``g(u) = exp(-(u - (n-1)/2)^2 / (2 (sigma_scale n)^2))``,
    floored at 1e-3 (MONAI's ``compute_importance_map``); ``"constant"``: ones.
    The returned tensor is shared: do not modify it in place.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if min(th, tw) < 1:
        raise ValueError(f"tile must be positive, got {tile!r}")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    return _blend_weights_cached(th, tw, blend, float(sigma_scale), str(torch.device(device)))


class BandMerger:
    """Accumulate weighted tile predictions of ``n_images`` images on ``grid``.

    ``aggregate(jobs, preds)`` takes a batch of unweighted predictions
    (len(jobs), C, th, tw); ``finalize()`` returns the (n_images, C, H, W)
    output in ``out_dtype``. ``weights`` None means constant blending.

    ``sink``: instead of keeping the output, hand each finished band of rows
    to ``sink(n, y0, rows)`` (rows: (C, r, W) float32, valid during the
    call) and return None from ``finalize``: the memory then stays at the
    band whatever the image height (whole-slide inference). ``grid`` needs
    only ``shape``, ``tile``, ``padded``, ``ys`` and ``xs``.
    """

    def __init__(self, grid: TileGrid, n_images: int, channels: int, weights: Optional[Tensor],
                 out_dtype: torch.dtype, device, max_batch: int,
                 sink: Optional[Callable[[int, int, Tensor], None]] = None):
        self.grid, self.weights, self.out_dtype, self.sink = grid, weights, out_dtype, sink
        th, tw = grid.tile
        H, W = grid.shape
        Wp = grid.padded[1]
        self.out = None if sink is not None else torch.empty(n_images, channels, H, W, dtype=out_dtype,
                                                             device=device)
        self.band = torch.zeros(channels, th, Wp, dtype=torch.float32, device=device)
        self.den = torch.zeros(th, Wp, dtype=torch.float32, device=device)
        # The column pattern of the weights is the same for every tile row: its
        # sum over one row of tiles is added to the denominator once per row.
        w = weights if weights is not None else torch.ones(th, tw, dtype=torch.float32, device=device)
        self.row_den = torch.zeros(th, Wp, dtype=torch.float32, device=device)
        for x0 in grid.xs:
            self.row_den[:, x0:x0 + tw] += w
        # weighted tiles land in a contiguous NCHW buffer whatever the runtime's
        # output layout (channels-last, fp16): the band adds are plain row adds
        self.ybuf = torch.empty(max_batch, channels, th, tw, dtype=torch.float32, device=device)
        self.current: Tuple[int, int] = (-1, -1)  # (image, tile row) the band holds

    def _flush(self, n: int, y0: int, rows: int) -> None:
        H, W = self.grid.shape
        rows_out = min(rows, H - y0)
        if rows_out <= 0:
            return
        rows = self.band[:, :rows_out, :W] / self.den[:rows_out, :W]
        if self.sink is not None:
            self.sink(n, y0, rows)
        else:
            self.out[n, :, y0:y0 + rows_out] = rows.to(self.out_dtype)

    def _start_row(self, n: int, r: int) -> None:
        th = self.grid.tile[0]
        ys = self.grid.ys
        cur_n, cur_r = self.current
        if n != cur_n:
            if cur_n >= 0:
                self._flush(cur_n, ys[cur_r], th)
            self.band.zero_()
            self.den.zero_()
        else:
            d = ys[r] - ys[cur_r]
            self._flush(n, ys[cur_r], d)
            if d < th:
                self.band[:, :th - d] = self.band[:, d:].clone()
                self.den[:th - d] = self.den[d:].clone()
            self.band[:, th - d:] = 0
            self.den[th - d:] = 0
        self.den.add_(self.row_den)
        self.current = (n, r)

    def aggregate(self, jobs: Sequence[Job], preds: Tensor) -> None:
        nb = len(jobs)
        yw = self.ybuf[:nb]
        if self.weights is None:
            yw.copy_(preds)
        else:
            torch.mul(preds, self.weights, out=yw)  # never writes into the runtime's output
        tw = self.grid.tile[1]
        for i, (n, r, c) in enumerate(jobs):
            if (n, r) != self.current:
                self._start_row(n, r)
            x0 = self.grid.xs[c]
            self.band[:, :, x0:x0 + tw] += yw[i]

    def finalize(self) -> Optional[Tensor]:
        n, r = self.current
        if n >= 0:
            self._flush(n, self.grid.ys[r], self.grid.tile[0])
        return self.out
