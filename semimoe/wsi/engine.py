"""Streaming tiled inference over a canvas with bounded memory.

grid -> reader threads -> runner -> merger, as :func:`semimoe.inference.sliding_window`
does for an image in memory, but:

* the canvas is cut into **stripes** of at most ``max_band_width`` columns
  (one stripe when it is narrower). A stripe runs every tile that touches
  the columns it owns, so tiles on a stripe's edge run twice and every owned
  pixel gets all of its tiles; the merger's band is then at most
  ``(C + 2) x tile x (max_band_width + 2 tile)`` floats whatever the slide size;
* **reader threads** read and resample tiles (:meth:`Canvas.read`) and
  normalise them while the model runs on the previous batch;
* tiles without tissue are **never read**: they count as certain background
  (probabilities 1, 0, 0), so the blend next to them is what a model that
  saw empty glass would give;
* finished rows leave the merger through its ``sink`` into a
  :class:`~semimoe.wsi.raster.DiskRaster` (gland and boundary probability,
  uint8), and the progress (stripe, rows done) is saved every few seconds:
  an interrupted slide **resumes** at the first tile row that touches an
  unfinished row (:class:`ResumeState`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..inference.grid import Job
from ..inference.merger import BandMerger, blend_weights
from ..inference.runner import TileRunner
from ..utils import atomic_write_json
from .plan import Canvas
from .raster import DiskRaster

__all__ = ["Stripe", "stripes", "ResumeState", "StreamStats", "stream_canvas"]


@dataclasses.dataclass(frozen=True)
class Stripe:
    """Columns [x0, x1) of the canvas a stripe owns, and its tile columns (indices into xs)."""

    x0: int
    x1: int
    cols: Tuple[int, ...]


def stripes(xs: Sequence[int], width: int, tile: int, max_width: int) -> List[Stripe]:
    """Cut the canvas's ``width`` columns into stripes of at most ``max_width``
    owned columns; each stripe lists every tile column that touches them."""
    n = max(1, -(-width // max(int(max_width), tile)))
    cuts = [round(k * width / n) for k in range(n + 1)]
    return [Stripe(a, b, tuple(c for c, x in enumerate(xs) if x < b and x + tile > a))
            for a, b in zip(cuts[:-1], cuts[1:])]


class _StripeGrid:
    """The part of the tile grid one stripe runs, in the stripe's own columns (what BandMerger reads)."""

    def __init__(self, height: int, ys: Sequence[int], xs: Sequence[int], tile: int):
        self.ys, self.xs, self.tile = list(ys), list(xs), (tile, tile)
        width = self.xs[-1] + tile
        self.shape = (height, width)
        self.padded = (self.ys[-1] + tile, width)


class ResumeState:
    """The resumable state of one slide's inference: ``stripe`` (index) and
    ``rows`` (canvas rows of it on disk), with a ``key`` naming the settings
    it belongs to; saved atomically."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key
        self.stripe, self.rows, self.done = 0, 0, False
        self._saved = time.monotonic()
        if self.path.exists():
            try:
                st = json.loads(self.path.read_text())
            except (OSError, ValueError):
                st = {}
            if st.get("key") == key:
                self.stripe, self.rows, self.done = int(st["stripe"]), int(st["rows"]), bool(st["done"])

    def reset(self) -> None:
        self.stripe, self.rows, self.done = 0, 0, False

    @property
    def resumed(self) -> bool:
        return self.done or self.stripe > 0 or self.rows > 0

    def save(self, raster: DiskRaster, force: bool = False, every: float = 10.0) -> None:
        now = time.monotonic()
        if force or now - self._saved >= every:
            raster.sync()  # the rows are on disk before the state says so
            atomic_write_json(self.path, {"key": self.key, "stripe": self.stripe, "rows": self.rows,
                                          "done": self.done})
            self._saved = now


@dataclasses.dataclass
class StreamStats:
    tiles_total: int = 0
    tiles_run: int = 0
    tiles_skipped: int = 0
    tiles_resumed: int = 0
    tiles_repeated: int = 0    # run a second time at a stripe's edge
    seconds: float = 0.0


def _prefetch(jobs: Sequence[Job], read: Callable[[Job], np.ndarray], active: Callable[[Job], bool],
              pool: ThreadPoolExecutor, window: int) -> Iterator[Tuple[Job, Optional[np.ndarray]]]:
    """(job, tile or None for skipped) in job order, reads running ``window`` jobs ahead."""
    q: deque = deque()
    it = iter(jobs)
    while True:
        while len(q) < window:
            j = next(it, None)
            if j is None:
                break
            q.append((j, pool.submit(read, j) if active(j) else None))
        if not q:
            return
        j, fut = q.popleft()
        yield j, (fut.result() if fut is not None else None)


class _Batcher:
    """Collects tiles into a batch buffer; runs the model when full; hands
    every job, run or skipped, to the merger in order."""

    def __init__(self, runner: TileRunner, merger: BandMerger, tile: int, device, stats: StreamStats):
        self.runner, self.merger, self.stats = runner, merger, stats
        self.buf = torch.empty(runner.per_step, tile, tile, 3, dtype=torch.float32)
        self.device = torch.device(device)
        self.pending: List[Tuple[Job, Optional[int]]] = []
        self.k = 0
        bg = torch.zeros(1, 3, tile, tile, dtype=torch.float32, device=self.device)
        bg[:, 0] = 1.0  # a skipped tile: certain background
        self.bg = bg

    def add(self, job: Job, tile: Optional[np.ndarray]) -> None:
        if tile is None:
            self.pending.append((job, None))
            self.stats.tiles_skipped += 1
            return
        self.buf[self.k].copy_(torch.from_numpy(tile))
        self.pending.append((job, self.k))
        self.k += 1
        if self.k == self.runner.per_step:
            self.flush()

    def flush(self) -> None:
        y = None
        if self.k:
            x = self.buf[:self.k].to(self.device).permute(0, 3, 1, 2)
            y = self.runner(x)
            if y.shape[1] != 3:
                raise ValueError(f"the model returned {y.shape[1]} channels; expected 3 (background, gland, "
                                 "boundary)")
            self.stats.tiles_run += self.k
        for job, i in self.pending:
            self.merger.aggregate([job], self.bg if i is None else y[i:i + 1].float())
        self.pending.clear()
        self.k = 0


def _normaliser(mean: Sequence[float], std: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    scale = (1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)
    shift = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)
    return lambda tile: tile.astype(np.float32) * scale + shift


def stream_canvas(canvas: Canvas, runtime, raster: DiskRaster, progress: ResumeState, *, ys: Sequence[int],
                  xs: Sequence[int], tile: int, active: Callable[[int, int], bool], mean, std,
                  batch: int = 8, workers: int = 2, max_band_width: int = 16384, sigma_scale: float = 0.125,
                  tta: Optional[str] = None, on_tiles: Optional[Callable[[int], None]] = None,
                  region: Optional[Callable[[int, int, int, int], np.ndarray]] = None) -> StreamStats:
    """Run ``runtime`` over the tiles (``ys`` x ``xs``, ``tile`` canvas pixels)
    of ``canvas``; gland and boundary probabilities go to planes 0 and 1 of
    ``raster``. ``active(r, c)``: whether tile (r, c) holds tissue;
    ``region(y0, y1, x0, x1)``: bool map of the canvas pixels where
    predictions are kept (tissue); elsewhere they are set to 0."""
    stats = StreamStats(tiles_total=len(ys) * len(xs))
    t0 = time.perf_counter()
    device = torch.device(getattr(runtime, "device", None) or "cpu")
    runner = TileRunner(runtime, batch, tta)
    weights = blend_weights((tile, tile), "gaussian", sigma_scale, device)
    norm = _normaliser(mean, std)
    H = canvas.shape[0]
    parts = stripes(xs, canvas.shape[1], tile, max_band_width)
    with torch.inference_mode(), ThreadPoolExecutor(max(1, workers)) as pool:
        for si, st in enumerate(parts):
            if si < progress.stripe or progress.done:
                stats.tiles_resumed += len(ys) * len(st.cols)
                continue
            done_rows = progress.rows if si == progress.stripe else 0
            r0 = next((r for r, y in enumerate(ys) if y + tile > done_rows), len(ys))
            stats.tiles_resumed += r0 * len(st.cols)
            sx0 = xs[st.cols[0]]
            grid = _StripeGrid(H, ys, [xs[c] - sx0 for c in st.cols], tile)

            def sink(n: int, y0: int, rows: Tensor, st=st, sx0=sx0, floor=done_rows) -> None:
                skip = max(0, floor - y0)  # rows already on disk (a resumed stripe)
                if skip >= rows.shape[1]:
                    return
                q = (rows[1:3, skip:, st.x0 - sx0:st.x1 - sx0].clamp(0, 1) * 255.0).round_().to(torch.uint8)
                q = q.cpu().numpy()
                if region is not None:
                    q *= region(y0 + skip, y0 + rows.shape[1], st.x0, st.x1)
                raster.write(0, y0 + skip, st.x0, q[0])
                raster.write(1, y0 + skip, st.x0, q[1])
                progress.stripe, progress.rows = si, y0 + rows.shape[1]
                progress.save(raster)

            merger = BandMerger(grid, 1, 3, weights, torch.float32, device, runner.per_step, sink=sink)
            batcher = _Batcher(runner, merger, tile, device, stats)
            jobs = [Job(0, r, j) for r in range(r0, len(ys)) for j in range(len(st.cols))]

            def read(job: Job, st=st) -> np.ndarray:
                return norm(canvas.read(ys[job.r], xs[st.cols[job.c]], tile, tile))

            def is_active(job: Job, st=st) -> bool:
                return active(job.r, st.cols[job.c])

            edge = {j for j, c in enumerate(st.cols) if si > 0 and c in parts[si - 1].cols}
            for job, t in _prefetch(jobs, read, is_active, pool, window=3 * runner.per_step):
                batcher.add(job, t)
                stats.tiles_repeated += int(t is not None and job.c in edge)
                if on_tiles is not None:
                    on_tiles(1)
            batcher.flush()
            merger.finalize()
            progress.stripe, progress.rows = si + 1, 0
            progress.save(raster, force=True)
    progress.done = True
    progress.save(raster, force=True)
    stats.seconds = time.perf_counter() - t0
    return stats
