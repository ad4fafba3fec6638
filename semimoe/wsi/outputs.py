"""Writers for the results of whole-slide inference.

Output formats
--------------
* **Pyramidal TIFF** (:func:`write_pyramid_tiff`): uint8, one or three
  samples per pixel, tiled (``tile`` x ``tile``), compressed (zlib/deflate by
  default). Full resolution first, then each level half the previous one
  (2x2 mean, rounded half up; an odd last row or column is averaged with
  itself), until both sides are <= ``min_size``. Every level is a top-level
  page (not a SubIFD; pages after the first are marked reduced-resolution)
  with ``ResolutionUnit`` centimetre and ``X/YResolution = 1e4 / mpp_level``
  pixels per cm, ``mpp_level = mpp * 2**level``: OpenSlide (generic tiled
  TIFF) and QuPath open it and report ``openslide.mpp-x/y = mpp``. BigTIFF
  when the raw levels add up to more than 2 GiB.
* **GeoJSON** (:func:`gland_feature`, :class:`GeoJSONWriter`): a
  ``FeatureCollection`` that QuPath 0.4/0.5 imports (File > Import objects):
  one ``Feature`` per gland, ``id`` a UUID, geometry a ``Polygon`` or
  ``MultiPolygon`` in level-0 pixel coordinates traced along pixel edges
  (its area equals the pixel count exactly), RFC 7946 orientation (exterior
  rings have a positive shoelace area in (x, y) -- counter-clockwise with y
  up, clockwise as seen on a y-down image -- holes the opposite), rings
  closed; ``properties``: ``objectType``, ``classification`` (name, colour)
  and flat ``measurements``.
* **Overlay thumbnails** (:func:`overlay_thumbnail`): uint8 RGB arrays.

Every file is written to a temporary name in the target folder and renamed
into place (:func:`semimoe.utils.atomic_write`), so a crash leaves no torn
output; :func:`semimoe.utils.remove_stale_temp_files` cleans up after a kill.

Memory bound: :func:`write_pyramid_tiff` holds one strip of ``tile`` rows
of the level being written, its half-size copy, and the encoder's pending
tiles and compressed bytes (capped at one strip): about twice ``tile * width
* channels`` bytes (measured: 7.7 MB peak of traced allocations for a
12000 x 12000 raster, ~21 MB for 40000 x 40000), independent of the height.
Lower levels are built strip by strip into temporary raw files next to the
output (1/4, 1/16, ... of the raster's size on disk), read back a strip at
a time, and deleted at the end.
:class:`GeoJSONWriter` holds one feature at a time.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from ..utils import atomic_write, jsonable

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["GeoJSONWriter", "gland_feature", "overlay_thumbnail", "write_pyramid_tiff"]

PathLike = str | os.PathLike
ReadRows = Callable[[int, int], np.ndarray]
TISSUE_COLOUR = (40, 90, 255)


# ----------------------------------------------------------------------------- pyramid TIFF

def write_pyramid_tiff(path: PathLike, read_rows: ReadRows, shape: tuple[int, int], mpp: float, *,
                       tile: int = 256, min_size: int = 512, compression: str | None = "zlib",
                       channels: int = 1, description: str | None = None) -> Path:
    """Write a tiled, compressed, pyramidal TIFF from a raster read in strips.

    Args:
        path: output file (``.tif``); replaced atomically.
        read_rows: ``read_rows(y0, y1)`` -> uint8 ``(y1 - y0, W)`` or
            ``(y1 - y0, W, channels)``: rows ``y0:y1`` of the full-resolution
            raster. Called once per strip of ``tile`` rows, top to bottom.
        shape: ``(H, W)`` of the full-resolution raster.
        mpp: µm per pixel of the full-resolution raster.
        tile: tile side in pixels, a multiple of 16 (TIFF).
        min_size: the last level is the first with both sides <= ``min_size``.
        compression: any name tifffile accepts and has a codec for
            (``"zlib"`` always works; ``None`` for none).
        channels: 1 (greyscale, MinIsBlack) or 3 (RGB).
        description: ImageDescription of the first page (none if None).

    Returns ``path``. Memory: about two strips of ``tile`` rows (module docstring).
    """
    H, W = int(shape[0]), int(shape[1])
    if H < 1 or W < 1 or tile < 16 or tile % 16 or channels not in (1, 3) or not mpp > 0 or min_size < 1:
        raise ValueError(f"write_pyramid_tiff: need shape >= 1, tile a multiple of 16, channels 1 or 3, "
                         f"mpp > 0, min_size >= 1; got shape={shape}, tile={tile}, channels={channels}, "
                         f"mpp={mpp}, min_size={min_size}")
    path = Path(path)
    sizes = _level_sizes(H, W, min_size)
    temps = [path.with_name(f".{path.name}.level{k}.tmp{os.getpid()}") for k in range(1, len(sizes))]
    opts = {"tile": tile, "channels": channels, "mpp": float(mpp), "compression": compression,
            "description": description}
    try:
        return atomic_write(path, lambda f: _write_levels(f, read_rows, sizes, temps, **opts))
    finally:
        for t in temps:
            t.unlink(missing_ok=True)


def _level_sizes(H: int, W: int, min_size: int) -> list[tuple[int, int]]:
    sizes = [(H, W)]
    while max(sizes[-1]) > min_size:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def _write_levels(f: IO, read_rows: ReadRows, sizes: list[tuple[int, int]], temps: list[Path], *, tile: int,
                  channels: int, mpp: float, compression: str | None, description: str | None) -> None:
    """Level k is read from ``read_rows`` (k = 0) or the raw file ``temps[k-1]``;
    while it is written, level k+1 is appended to ``temps[k]``."""
    import tifffile

    bigtiff = sum(h * w for h, w in sizes) * channels > 2 ** 31
    with tifffile.TiffWriter(f, bigtiff=bigtiff) as tif:
        for k, (h, w) in enumerate(sizes):
            with contextlib.ExitStack() as stack:
                src = read_rows if k == 0 else _raw_rows(stack.enter_context(open(temps[k - 1], "rb")), w, channels)
                down = stack.enter_context(open(temps[k], "wb")) if k < len(temps) else None
                res = 1e4 / (mpp * 2 ** k)  # pixels per cm
                tif.write(_tiles(src, h, w, tile, channels, down), shape=(h, w, channels) if channels > 1 else (h, w),
                          dtype=np.uint8, tile=(tile, tile), photometric="rgb" if channels == 3 else "minisblack",
                          planarconfig="contig" if channels > 1 else None, compression=compression,
                          resolution=(res, res), resolutionunit="CENTIMETER", subfiletype=1 if k else 0,
                          description=description if k == 0 else None, metadata=None, software="semimoe",
                          buffersize=tile * w * channels)  # caps the encoder's pending tiles at one strip


def _raw_rows(f: IO, w: int, channels: int) -> ReadRows:
    def read(y0: int, y1: int) -> np.ndarray:
        f.seek(y0 * w * channels)
        return np.fromfile(f, np.uint8, (y1 - y0) * w * channels).reshape(y1 - y0, w, channels)
    return read


def _tiles(read_rows: ReadRows, h: int, w: int, tile: int, channels: int, down: IO | None) -> Iterator[np.ndarray]:
    """Tiles of a level in TIFF order (row of tiles by row of tiles); the half-size
    rows of each strip are written to ``down`` before its tiles are yielded
    (tifffile stops pulling after the last tile)."""
    for y0 in range(0, h, tile):
        y1 = min(y0 + tile, h)
        strip = _checked(read_rows(y0, y1), (y1 - y0, w, channels))
        if down is not None:
            _half(strip).tofile(down)
        for x0 in range(0, w, tile):
            t = strip[:, x0:x0 + tile]
            if y0 == x0 == 0:
                t = t.copy()  # tifffile keeps the first item (peek_iterator) until the page is done
            yield t if channels > 1 else t[..., 0]
        del strip, t  # before the next strip is read: one strip in memory, not two


def _checked(rows: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim == 2:
        rows = rows[..., None]
    if rows.shape != shape or rows.dtype != np.uint8:
        raise ValueError(f"read_rows returned {rows.dtype} {rows.shape}; expected uint8 {shape} "
                         f"(or {shape[:2]} for one channel)")
    return rows


def _half(a: np.ndarray) -> np.ndarray:
    """2x2 mean of uint8 (h, w, c), rounded half up; an odd last row/column is
    paired with itself. uint8 (ceil(h/2), ceil(w/2), c)."""
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    s = a[0::2, 0::2].astype(np.uint16)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


# ----------------------------------------------------------------------------- gland polygons

# Boundary edges run between pixel corners, gland on their left in (x = col, y = row):
# codes E, S, W, N as (drow, dcol); the left turn of code d is (d + 1) % 4.
_STEPS = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])
_CUT = 1.0 - math.sqrt(0.5)  # length a corner cut saves: two half edges -> one half diagonal


def gland_feature(mask: np.ndarray, prob: np.ndarray, origin: tuple[float, float],
                  to_level0: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], mpp: float, *,
                  name: str = "Gland", color: Sequence[int] = (0, 170, 0), object_type: str = "detection",
                  feature_id: str | None = None) -> dict | None:
    """One gland as a QuPath-importable GeoJSON Feature (None for an empty mask).

    Args:
        mask: bool (h, w): one gland instance (may have holes or, rarely,
            several pieces -> MultiPolygon).
        prob: uint8 (h, w) (p * 255) or float (h, w) in [0, 1]: gland probability.
        origin: (row, col) of ``mask[0, 0]`` on the canvas.
        to_level0: ``(rows, cols) -> (xs, ys)``, float64 (n,) arrays: canvas
            coordinates (pixel corners: pixel (r, c) spans [r, r+1) x [c, c+1))
            to level-0 slide coordinates.
        mpp: canvas µm per pixel.

    The outline follows pixel edges (a gland is 4-connected: pixels touching
    only at a corner are separate pieces), so the polygon area is exactly the
    pixel count. Coordinates are rounded to 1e-3 px. Measurements:
    ``Area µm^2`` (pixel count * mpp^2); ``Perimeter µm``: length of the
    traced outline with every corner cut (the polygon through the midpoints
    of the pixel edges: the staircase length would overestimate a round
    outline by 4/pi); ``Solidity``: area / area of the convex hull of the
    pixel corners; ``Mean probability`` in [0, 1].
    """
    mask = np.asarray(mask, bool)
    area = int(np.count_nonzero(mask))
    if area == 0:
        return None
    rings, perimeter = _trace(mask)
    polygons = _group(rings)
    geometry = _geometry(polygons, origin, to_level0)
    p = np.asarray(prob)[mask].astype(np.float64)
    mean_p = float(p.mean() / (255.0 if np.issubdtype(np.asarray(prob).dtype, np.integer) else 1.0))
    measurements = {"Area µm^2": area * float(mpp) ** 2, "Perimeter µm": perimeter * float(mpp),
                    "Solidity": area / _hull_area(np.concatenate([poly[0] for poly in polygons])),
                    "Mean probability": mean_p}
    return {"type": "Feature", "id": str(feature_id) if feature_id is not None else str(uuid.uuid4()),
            "geometry": geometry,
            "properties": {"objectType": object_type,
                           "classification": {"name": name, "color": [int(c) for c in color]},
                           "measurements": measurements}}


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit boundary edges of a bool (h, w) mask: start corners int (n, 2) (row, col)
    and direction codes (n,), gland on the left of each edge."""
    m = np.pad(mask, 1)
    i, j = np.nonzero(m[1:] != m[:-1])  # horizontal edge on corner row i+1 above pixel (i+1, j)
    i += 1
    east = m[i, j]  # gland below: walk east
    hs = np.stack([i, np.where(east, j, j + 1)], 1)
    i2, j2 = np.nonzero(m[:, 1:] != m[:, :-1])  # vertical edge on corner column j2+1
    j2 += 1
    south = m[i2, j2 - 1]  # gland to the west: walk south
    vs = np.stack([np.where(south, i2, i2 + 1), j2], 1)
    start = np.concatenate([hs, vs]) - 1
    return start, np.concatenate([np.where(east, 0, 2), np.where(south, 1, 3)])


def _successors(start: np.ndarray, d: np.ndarray, ncols: int) -> np.ndarray:
    """Next edge of every edge; where two leave a corner (diagonal pixels) the
    left turn, which keeps corner-touching pixels apart."""
    key = start[:, 0] * ncols + start[:, 1]
    end = start + _STEPS[d]
    order = np.argsort(key, kind="stable")
    sk = key[order]
    ek = end[:, 0] * ncols + end[:, 1]
    lo, hi = np.searchsorted(sk, ek, "left"), np.searchsorted(sk, ek, "right")
    a, b = order[lo], order[np.minimum(lo + 1, len(order) - 1)]
    return np.where((hi - lo == 2) & (d[a] != (d + 1) % 4), b, a)


def _trace(mask: np.ndarray) -> tuple[list[np.ndarray], float]:
    """Simple closed rings (corner vertices only, int (n, 2) (row, col), not repeated
    at the end) of the mask's outline, and its corner-cut length in pixels."""
    start, d = _boundary_edges(mask)
    nxt = _successors(start, d, mask.shape[1] + 1).tolist()
    seen = bytearray(len(nxt))
    rings: list[np.ndarray] = []
    perimeter = 0.0
    for e0 in range(len(nxt)):
        if seen[e0]:
            continue
        cycle, e = [], e0
        while not seen[e]:
            seen[e] = 1
            cycle.append(e)
            e = nxt[e]
        dc = d[cycle]
        turn = dc != np.roll(dc, 1)
        perimeter += len(cycle) - _CUT * int(turn.sum())
        rings += _split(start[cycle][turn])
    return rings, perimeter


def _split(ring: np.ndarray) -> list[np.ndarray]:
    """Cut a closed walk at repeated corners (a ring touching itself at a corner)
    into simple rings."""
    keys = [tuple(v) for v in ring.tolist()]
    if len(set(keys)) == len(keys):
        return [ring]
    out, stack, at = [], [], {}
    for k, v in enumerate(keys):
        if v in at:
            i = at[v]
            out.append(ring[stack[i:]])
            for j in stack[i + 1:]:
                del at[keys[j]]
            del stack[i + 1:]
        else:
            at[v] = len(stack)
            stack.append(k)
    return out + [ring[stack]]


def _signed_area(x: np.ndarray, y: np.ndarray) -> float:
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _inside(pt: np.ndarray, ring: np.ndarray) -> bool:
    """Even-odd test of point (row, col) against a ring; the point is never on it."""
    r0, r1 = ring, np.roll(ring, -1, 0)
    cross = (r0[:, 0] > pt[0]) != (r1[:, 0] > pt[0])
    r0, r1 = r0[cross].astype(np.float64), r1[cross].astype(np.float64)
    col = r0[:, 1] + (pt[0] - r0[:, 0]) * (r1[:, 1] - r0[:, 1]) / (r1[:, 0] - r0[:, 0])
    return bool(np.count_nonzero(pt[1] < col) % 2)


def _group(rings: list[np.ndarray]) -> list[list[np.ndarray]]:
    """[[exterior, hole, ...], ...]: exteriors have a positive area in (x = col, y = row);
    each hole goes to the smallest exterior around it."""
    areas = [_signed_area(r[:, 1], r[:, 0]) for r in rings]
    shells = sorted((i for i, a in enumerate(areas) if a > 0), key=lambda i: areas[i])
    polys = {i: [rings[i]] for i in shells}
    for i, a in enumerate(areas):
        if a < 0:
            pt = (rings[i][0] + rings[i][1]) / 2.0  # mid-edge: on no other ring
            owner = next((s for s in shells if _inside(pt, rings[s])), shells[-1])
            polys[owner].append(rings[i])
    return [polys[i] for i in sorted(shells, key=lambda i: -areas[i])]


def _geometry(polygons: list[list[np.ndarray]], origin: tuple[float, float],
              to_level0: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> dict:
    coords = []
    for poly in polygons:
        rings = []
        for k, ring in enumerate(poly):
            xs, ys = to_level0(ring[:, 0] + float(origin[0]), ring[:, 1] + float(origin[1]))
            xy = np.stack([np.asarray(xs, np.float64), np.asarray(ys, np.float64)], 1)
            if (_signed_area(xy[:, 0], xy[:, 1]) > 0) != (k == 0):  # the transform may mirror
                xy = xy[::-1]
            rings.append(np.round(np.concatenate([xy, xy[:1]]), 3).tolist())
        coords.append(rings)
    if len(coords) == 1:
        return {"type": "Polygon", "coordinates": coords[0]}
    return {"type": "MultiPolygon", "coordinates": coords}


def _hull_area(points: np.ndarray) -> float:
    from scipy.spatial import ConvexHull

    return float(ConvexHull(np.unique(points, axis=0).astype(np.float64)).volume)


# ----------------------------------------------------------------------------- GeoJSON file

class GeoJSONWriter:
    """Stream GeoJSON features into a ``FeatureCollection`` file.

    ``with GeoJSONWriter(path) as w: w.add(feature)``. Features go to a
    temporary file next to ``path`` as they are added (one in memory at a
    time); the file is renamed onto ``path`` when the block ends without an
    exception, and deleted otherwise. ``count``: features written.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.count = 0
        self._f: IO | None = None

    def __enter__(self) -> Self:
        self._f = open(self.tmp, "w", encoding="utf-8")
        self._f.write('{"type": "FeatureCollection", "features": [')
        return self

    def add(self, feature: dict) -> None:
        """Append one feature (made JSON-safe with :func:`semimoe.utils.jsonable`)."""
        if self._f is None:
            raise RuntimeError("GeoJSONWriter.add outside its 'with' block")
        self._f.write(("\n" if self.count == 0 else ",\n") + json.dumps(jsonable(feature)))
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        f, self._f = self._f, None
        try:
            if exc_type is None:
                f.write("\n]}\n")
                f.flush()
                os.fsync(f.fileno())
                f.close()
                os.replace(self.tmp, self.path)
        finally:
            f.close()
            self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- thumbnail

def overlay_thumbnail(thumb: np.ndarray, prob: np.ndarray, tissue: np.ndarray | None = None, *,
                      threshold: float = 0.5) -> np.ndarray:
    """A slide thumbnail with the predicted glands drawn on it.

    Args:
        thumb: uint8 (h, w, 3).
        prob: uint8 (h, w) (p * 255) or float (h, w) in [0, 1]: gland probability.
        tissue: bool (h, w) tissue mask, outlined in blue; None: not drawn.
        threshold: glands are ``p > threshold`` (as :func:`semimoe.inference.postprocess`).

    Returns uint8 (h, w, 3): glands tinted green with yellow outlines
    (:func:`semimoe.visualize.tint`, one outline per connected gland region).
    """
    from scipy import ndimage

    from ..visualize import outline, tint

    thumb, prob = np.asarray(thumb), np.asarray(prob)
    if thumb.ndim != 3 or thumb.shape[2] != 3 or prob.shape != thumb.shape[:2]:
        raise ValueError(f"overlay_thumbnail: thumb must be (h, w, 3) and prob (h, w); got {thumb.shape}, {prob.shape}")
    p = prob.astype(np.float32) / 255.0 if np.issubdtype(prob.dtype, np.integer) else prob
    mask = p > threshold
    out = tint(thumb.astype(np.uint8), mask, ndimage.label(mask)[0])
    if tissue is not None:
        out[outline(np.asarray(tissue, bool).astype(np.int32), thick=max(mask.shape) > 400)] = TISSUE_COLOUR
    return out
