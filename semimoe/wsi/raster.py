"""A raster on disk: channel-planar uint8 maps of the canvas, written and
read in row bands with ``pwrite`` / ``pread``.

Probabilities of a slide are quantised to uint8 (``round(255 p)``) and
stream to this file as the merger finishes rows; the instance pass, the
pyramid writer and the overlay read them back a band at a time. Nothing is
memory-mapped, so the process's resident memory never holds the raster
(file pages live in the kernel's page cache, which it can drop).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np

__all__ = ["DiskRaster"]


class DiskRaster:
    """``channels`` uint8 planes of ``shape`` (H, W) in one file at ``path``
    (created sparse when missing or of the wrong size; kept otherwise, so that
    an interrupted slide resumes on what was written)."""

    def __init__(self, path: Path, shape: Tuple[int, int], channels: int):
        self.path, self.shape, self.channels = Path(path), (int(shape[0]), int(shape[1])), int(channels)
        size = self.channels * self.shape[0] * self.shape[1]
        fresh = not self.path.exists() or self.path.stat().st_size != size
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fresh:
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, size)
        self.fresh = fresh

    def _offset(self, c: int, y: int, x: int) -> int:
        H, W = self.shape
        return (c * H + y) * W + x

    def write(self, c: int, y0: int, x0: int, rows: np.ndarray) -> None:
        """Write uint8 ``rows`` (r, w) of plane ``c`` at (y0, x0)."""
        rows = np.ascontiguousarray(rows, dtype=np.uint8)
        r, w = rows.shape
        if w == self.shape[1] and x0 == 0:
            os.pwrite(self._fd, rows.tobytes(), self._offset(c, y0, 0))
            return
        for i in range(r):
            os.pwrite(self._fd, rows[i].tobytes(), self._offset(c, y0 + i, x0))

    def read(self, c: int, y0: int, y1: int, x0: int = 0, x1: int = -1) -> np.ndarray:
        """uint8 (y1 - y0, x1 - x0) of plane ``c`` (x1 -1: to the right edge)."""
        W = self.shape[1]
        x1 = W if x1 < 0 else x1
        if x0 == 0 and x1 == W:
            buf = os.pread(self._fd, (y1 - y0) * W, self._offset(c, y0, 0))
            return np.frombuffer(buf, np.uint8).reshape(y1 - y0, W).copy()
        out = np.empty((y1 - y0, x1 - x0), np.uint8)
        for i in range(y1 - y0):
            out[i] = np.frombuffer(os.pread(self._fd, x1 - x0, self._offset(c, y0 + i, x0)), np.uint8)
        return out

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "DiskRaster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
