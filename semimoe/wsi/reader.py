"""The one slide reader: OpenSlide, then tifffile, then plain images.

:func:`open_slide` returns a :class:`Slide`: its pyramid levels, its pixel
size in µm and where that came from, its region of interest (``bounds``),
and ``read(level, x, y, w, h)``, which returns uint8 RGB pixels of one level
(alpha composited over white, the colour of an empty slide; pixels outside
the level are white).

Which reader opens a file:

1. **OpenSlide** (``openslide-python`` with the ``openslide-bin`` wheel):
   SVS, NDPI, MRXS, SCN, VMS, BIF, Philips TIFF and generic tiled TIFF.
   Honours ``openslide.bounds-x/y/width/height`` (MRXS and some others:
   only that rectangle holds scanned tissue).
2. **tifffile**: pyramidal or tiled TIFF and OME-TIFF that OpenSlide does not
   open (SubIFD pyramids, strip-organised pages). Tiles are decoded on
   demand; a small cache keeps the recently used ones.
3. **Plain images** (PNG, JPEG, ...): read whole through
   :func:`semimoe.data.io.read_image`.

Pixel size, first found wins: the slide's properties (``openslide.mpp-x``,
``-y``), the TIFF resolution tags (``XResolution`` with ``ResolutionUnit``
centimetre or inch; OME ``PhysicalSizeX``), then the ``mpp`` argument.
Values outside 0.05--100 µm/px (a TIFF's default 72 dpi is 352.8 µm/px)
are treated as absent. An ``mpp`` argument that disagrees with the
metadata by more than 1 % wins, and the user is told. Without any, a
:class:`~semimoe.errors.DataError` names the file and asks for ``--mpp``.
"""
from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from ..data.io import from_16bit, over_white
from ..errors import DataError

__all__ = ["Slide", "open_slide", "MPP_RANGE"]

PathLike = Union[str, os.PathLike]
MPP_RANGE = (0.05, 100.0)
#: OpenSlide's tile cache per slide: enough for the tiles a few rows of our tiles touch
OPENSLIDE_CACHE_BYTES = 64 << 20


def _plausible(mpp: Optional[float]) -> Optional[float]:
    if mpp is None or not math.isfinite(mpp) or not (MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        return None
    return float(mpp)


class Slide:
    """A slide (or image) open for reading; see the module doc.

    Attributes:
        path: the file.
        kind: ``"openslide"``, ``"tifffile"`` or ``"image"``.
        level_dimensions: (width, height) of each level, level 0 first.
        level_downsamples: level-0 pixels per level pixel, per level.
        mpp: µm per level-0 pixel; ``mpp_source`` says where it came from.
        bounds: (x, y, width, height) of the region of interest in level-0
            pixels (the whole slide when the file declares none).
    """

    kind = "?"

    def __init__(self, path: Path, dims: List[Tuple[int, int]], downs: List[float],
                 meta_mpp: Optional[float], meta_source: str, mpp: Optional[float],
                 bounds: Optional[Tuple[int, int, int, int]] = None):
        self.path = path
        self.level_dimensions = [(int(w), int(h)) for w, h in dims]
        self.level_downsamples = [float(d) for d in downs]
        self.mpp, self.mpp_source = self._choose_mpp(meta_mpp, meta_source, mpp)
        w0, h0 = self.level_dimensions[0]
        self.bounds = bounds if bounds is not None else (0, 0, w0, h0)

    def _choose_mpp(self, meta: Optional[float], source: str, given: Optional[float]) -> Tuple[float, str]:
        if given is not None:
            if not (math.isfinite(given) and given > 0):
                raise DataError(f"--mpp must be a positive number of µm per pixel, got {given!r}")
            if meta is not None and abs(given / meta - 1.0) > 0.01:
                warnings.warn(f"{self.path}: --mpp {given:g} overrides the {meta:g} µm/px of its {source}",
                              stacklevel=3)
            return float(given), "argument" if meta is None or abs(given / meta - 1.0) > 0.01 else source
        if meta is None:
            raise DataError(f"{self.path}: its pixel size is unknown (no µm/px in its properties or TIFF "
                            "resolution tags); give it with --mpp, e.g. --mpp 0.25 for a 40x scan")
        return meta, source

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level(self, target_mpp: float) -> int:
        """The coarsest level whose pixels are no larger than ``target_mpp``
        (the level nearest above the target resolution); level 0 when even
        level 0 is coarser."""
        ok = [i for i in range(self.level_count) if self.level_mpp(i) <= target_mpp * (1 + 1e-3)]
        return max(ok, key=lambda i: self.level_downsamples[i]) if ok else 0

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """uint8 RGB (h, w, 3) of ``level`` at level coordinates (x, y); white outside the level."""
        if not (0 <= level < self.level_count):
            raise ValueError(f"level must be in 0..{self.level_count - 1}, got {level}")
        out = np.full((h, w, 3), 255, np.uint8)
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._read(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.level_dimensions[0]
        return (f"{type(self).__name__}({str(self.path)!r}, {w}x{h}, {self.level_count} levels, "
                f"{self.mpp:.4g} µm/px from {self.mpp_source}, bounds {self.bounds})")


class OpenSlideSlide(Slide):
    kind = "openslide"

    def __init__(self, path: Path, mpp: Optional[float]):
        import openslide

        self._s = openslide.OpenSlide(str(path))
        if hasattr(openslide, "OpenSlideCache"):  # the default cache (1 GiB) would grow with the slide
            self._s.set_cache(openslide.OpenSlideCache(OPENSLIDE_CACHE_BYTES))
        p = self._s.properties
        meta = None
        try:
            mx, my = float(p.get("openslide.mpp-x", "nan")), float(p.get("openslide.mpp-y", "nan"))
            meta = _plausible((mx + my) / 2 if math.isfinite(my) else mx)
        except ValueError:
            meta = None
        source = "slide properties"
        if meta is None:
            meta, source = _tiff_tag_mpp(p), "TIFF resolution tags"
        super().__init__(path, list(self._s.level_dimensions), list(self._s.level_downsamples), meta, source,
                         mpp, _openslide_bounds(p, self._s.dimensions))
        self._lock = threading.Lock()

    def _read(self, level, x, y, w, h):
        d = self.level_downsamples[level]
        # OpenSlide takes level-0 coordinates; with a non-integer downsample it renders the level at the
        # fractional position (x * d) / d, interpolating by less than 1/d of a pixel
        img = self._s.read_region((int(round(x * d)), int(round(y * d))), level, (w, h))
        return over_white(np.asarray(img))

    def close(self):
        self._s.close()


def _tiff_tag_mpp(p) -> Optional[float]:
    """µm/px from OpenSlide's ``tiff.*`` properties (generic TIFF), if plausible."""
    unit = str(p.get("tiff.ResolutionUnit", "")).lower()
    try:
        res = float(p.get("tiff.XResolution", "nan"))
    except ValueError:
        return None
    per = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    return _plausible(per / res) if per and res > 0 else None


def _openslide_bounds(p, dims) -> Optional[Tuple[int, int, int, int]]:
    keys = ("openslide.bounds-x", "openslide.bounds-y", "openslide.bounds-width", "openslide.bounds-height")
    if not all(k in p for k in keys):
        return None
    x, y, w, h = (int(p[k]) for k in keys)
    if w <= 0 or h <= 0:
        return None
    return x, y, min(w, dims[0] - x), min(h, dims[1] - y)


class TiffSlide(Slide):
    """Pyramidal / tiled / stripped TIFF through tifffile; segments decoded on demand."""

    kind = "tifffile"

    def __init__(self, path: Path, mpp: Optional[float]):
        import tifffile

        self._tif = tifffile.TiffFile(str(path))
        self._pages = _pyramid_pages(self._tif)
        if not self._pages:
            self._tif.close()
            raise DataError(f"{path}: no RGB or grey image in this TIFF")
        dims = [(p.imagewidth, p.imagelength) for p in self._pages]
        downs = [dims[0][0] / w for w, _ in dims]
        meta, source = _tifffile_mpp(self._tif, self._pages[0])
        super().__init__(path, dims, downs, meta, source, mpp)
        self._lock = threading.Lock()
        self._segment = functools.lru_cache(maxsize=256)(self._decode_segment)

    def _decode_segment(self, level: int, index: int) -> np.ndarray:
        page = self._pages[level]
        with self._lock:  # one file handle: seeks and reads must not interleave
            fh = page.parent.filehandle
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        seg, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        if seg is None:  # a sparse tile: never written
            seg = np.zeros(shape, page.dtype)
        return _to_rgb(seg.reshape(shape[1:]) if seg.ndim == 5 else seg)

    def _read(self, level, x, y, w, h):
        page = self._pages[level]
        th, tw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, page.imagewidth)
        th = min(th, page.imagelength)
        across = -(-page.imagewidth // tw)
        out = np.empty((h, w, 3), np.uint8)
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                seg = self._segment(level, ty * across + tx)
                sy, sx = ty * th, tx * tw
                ya, yb = max(y, sy), min(y + h, sy + th, page.imagelength)
                xa, xb = max(x, sx), min(x + w, sx + tw, page.imagewidth)
                out[ya - y:yb - y, xa - x:xb - x] = seg[ya - sy:yb - sy, xa - sx:xb - sx]
        return out

    def close(self):
        self._tif.close()


def _to_rgb(seg: np.ndarray) -> np.ndarray:
    """A decoded segment (h, w[, s]) as uint8 RGB: grey replicated, alpha over white, 16-bit / 257."""
    seg = np.asarray(seg)
    if seg.ndim == 4:
        seg = seg[0]
    if seg.dtype == np.uint16:
        seg = from_16bit(seg)
    elif seg.dtype == bool:
        seg = seg.astype(np.uint8) * 255
    elif seg.dtype != np.uint8:
        raise DataError(f"TIFF pixels of type {seg.dtype} are not supported; expected 8- or 16-bit RGB or grey")
    if seg.ndim == 2:
        seg = seg[..., None]
    if seg.shape[-1] in (1, 2):
        seg = np.concatenate([np.repeat(seg[..., :1], 3, axis=-1), seg[..., 1:]], axis=-1)
    return over_white(seg[..., :4])


def _pyramid_pages(tif) -> list:
    """Level pages, largest first: a series' levels (SubIFD / OME / vendor
    pyramids), else top-level pages that each halve (or so) the one before."""
    s = tif.series[0]
    if len(s.levels) > 1:
        return [lvl.keyframe for lvl in s.levels]
    pages = [p for p in tif.pages if getattr(p, "imagewidth", 0) and p.samplesperpixel in (1, 2, 3, 4)]
    if not pages:
        return []
    out = [pages[0]]
    for p in pages[1:]:
        prev = out[-1]
        r = prev.imagewidth / p.imagewidth
        same_aspect = abs(prev.imagelength / max(p.imagelength, 1) - r) <= max(0.02 * r, 1.0)
        if r > 1 and same_aspect and not (p.is_reduced and p.imagewidth < 64):
            out.append(p)
    return out


def _tifffile_mpp(tif, page) -> Tuple[Optional[float], str]:
    ome = tif.ome_metadata if tif.is_ome else None
    if ome:
        import re

        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
        if m and (unit is None or unit.group(1) in ("µm", "um", "\u00b5m")):
            v = _plausible(float(m.group(1)))
            if v is not None:
                return v, "OME metadata"
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        per = {3: 1e4, 2: 25400.0}.get(unit)
        if per and num > 0 and den > 0:
            v = _plausible(per * den / num)
            if v is not None:
                return v, "TIFF resolution tags"
    return None, "TIFF"


class ImageSlide(Slide):
    """A plain image read whole (PNG, JPEG, BMP, ...): one level."""

    kind = "image"

    def __init__(self, path: Path, mpp: Optional[float]):
        from ..data.io import read_image

        self._img = read_image(path)
        h, w = self._img.shape[:2]
        super().__init__(path, [(w, h)], [1.0], None, "image", mpp)

    def _read(self, level, x, y, w, h):
        return self._img[y:y + h, x:x + w]


def _openslide_can_open(path: Path) -> bool:
    try:
        import openslide
    except (ImportError, OSError):
        return False
    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:
        return False


_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf", ".qptiff")  # .ome.tif(f) end in .tif(f)


def open_slide(path: PathLike, mpp: Optional[float] = None) -> Slide:
    """Open ``path`` with the first reader that can (see the module doc).

    ``mpp``: µm per level-0 pixel, used when the file declares none (and
    overriding the file, with a warning, when it disagrees by more than 1 %).
    Raises :class:`DataError` naming the file when it is missing, unreadable
    or of unknown pixel size.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"slide {p} does not exist" if not p.exists() else f"slide {p} is not a file")
    errors = []
    if _openslide_can_open(p):
        try:
            return OpenSlideSlide(p, mpp)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - fall through to the next reader, say why at the end
            errors.append(f"OpenSlide: {type(e).__name__}: {e}")
    if p.name.lower().endswith(_TIFF_SUFFIXES):
        try:
            return TiffSlide(p, mpp)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            errors.append(f"tifffile: {type(e).__name__}: {e}")
    try:
        return ImageSlide(p, mpp)
    except DataError as e:
        if errors:
            raise DataError(f"cannot read slide {p}: " + "; ".join(errors + [str(e)])) from e
        raise
