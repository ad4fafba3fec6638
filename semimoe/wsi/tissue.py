"""Tissue masks for whole-slide inference: detected on a thumbnail, or a user's mask file.

:func:`detect_tissue` finds H&E tissue on a low-resolution RGB thumbnail;
:func:`load_tissue_mask` reads a mask the user drew instead.

Why not Otsu on grey (TIAToolbox, MONAI, most slide tools)? Otsu splits the
grey histogram in two, so on a slide with dense tissue the threshold lands
between dense tissue and glass: pale tissue (faint eosin, fat, loose stroma,
RGB about (230, 210, 222)) falls on the glass side, and pen marks, dust,
slide edges and black out-of-slide areas -- all dark -- fall on the tissue
side. This detector instead asks of each pixel "is this stained tissue?":

1. **Glass colour from the image itself**: the most common bright,
   near-grey colour (8-level bins; exact white is left out, being the
   reader's fill outside the scanned area), or white when there is none.
   Glass may be grey or tinted: everything below is relative to it.
2. **Optical density above the glass**, after a blur of ``SMOOTH_UM``
   (sigma; at least one pixel), which divides per-pixel noise by about
   four: ``d = max(OD - OD_glass, 0)`` per channel, ``OD = -ln((I + 1) /
   256)``. Stains and inks add density, so glass and the white fill have
   ``d`` about 0 whatever their tint.
3. **Colour, not darkness**: a pixel is stained when the part of ``d`` off
   the grey axis (its chroma) exceeds ``CHROMA_MIN / sensitivity``. Pale
   eosin has a chroma of about 0.06, glass noise after the blur about 0.004
   (3 grey levels of noise); grey things (dust, smudges, dark slide edges,
   black fill) have none, however dark.
4. **Pen marks rejected by the direction of ``d``**: haematoxylin and eosin
   both absorb green most; neither absorbs red more than green (OD
   red/green 0.1-0.9 across published stain vectors) nor blue nearly as
   much (blue/green 0.1-0.7). Blue, green and cyan inks absorb red more
   than green; red, green, black and brown ink and anything grey absorb
   blue about as much as green; blue-black ink is darker than H&E ever is
   at thumbnail scale (nuclei are averaged with the stroma around them).
   Such pixels, and a one-pixel rim around them where the ink thins out on
   the glass, are not tissue. Red or pink ink of the very hue of eosin or
   blood is not told apart by colour and is kept.
5. **Morphology in µm**, so any thumbnail scale works: a closing of
   ``CLOSE_UM`` joins loose tissue; holes smaller than ``min_area_um2`` are
   filled; objects smaller than ``min_area_um2``, or holding no disc of
   radius ``THIN_UM`` (fibres, hairs, slide and coverslip edges), are
   dropped.

Edges may lie up to a pixel out into the glass (the blur). A 2000 x 2000
thumbnail takes about 0.6 s (up to 1.2 s on a busy shared 2-core machine):
numpy slices and lookups stand in for ndimage filters where they are
several times faster.
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from ..errors import DataError, check_range

__all__ = ["TISSUE_MPP", "detect_tissue", "load_tissue_mask"]

PathLike = str | os.PathLike

# µm per pixel at which the caller reads the thumbnail. At 8 µm/px the usual
# scanned area (15 x 15 mm) is about 1900 x 1900 px (11 MB RGB, under a
# second) and a whole 25 x 75 mm slide at most 3125 x 9375 px; a model patch
# of 224 px at 0.5 µm/px (112 µm) still spans 14 pixels, so its tissue share
# is known to within a few per cent; a nucleus (~8 µm) is averaged with the
# stroma around it, so pixels show tissue colour rather than nuclei; and
# 8 = 0.25 x 32 = 0.5 x 16, a power-of-two reduction of 40x and 20x scans
# (often a stored pyramid level, or read from one without odd resampling).
TISSUE_MPP: float = 8.0

SMOOTH_UM = 8.0          # Gaussian sigma before the pixel rule (at least one pixel)
CHROMA_MIN = 0.025       # OD chroma floor for "stained"; pale eosin is ~0.06
RED_OVER_GREEN = 1.15    # d_R / d_G above this: blue, green or cyan ink
BLUE_OVER_GREEN = 0.85   # d_B / d_G above this: red, green, black or brown ink, grey
DARK_OD = 1.2            # mean d above this (mean RGB < ~75) with d_B / d_G > 0.6: dark ink
DARK_BLUE_OVER_GREEN = 0.6
CLOSE_UM = 16.0          # closing radius
THIN_UM = 24.0           # objects holding no disc of this radius are lines (edges, fibres)


def detect_tissue(rgb: np.ndarray, mpp: float, *, min_area_um2: float = 20000.0,
                  sensitivity: float = 1.0) -> np.ndarray:
    """Tissue mask of an H&E slide thumbnail (see the module doc for the method).

    Args:
        rgb: uint8 (h, w, 3) RGB thumbnail, glass bright.
        mpp: µm per thumbnail pixel (> 0); read it at :data:`TISSUE_MPP`.
        min_area_um2: objects (and holes in them) smaller than this many µm²
            are dropped (filled); 20000 µm² is a square of 141 µm.
        sensitivity: > 0; divides the colour threshold: 2 also finds paler
            tissue (and more faint dirt), 0.5 only well-stained tissue.

    Returns:
        bool (h, w), True on tissue.
    """
    _check_args(rgb, mpp, min_area_um2, sensitivity)
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    planes = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # (3, h, w): per-channel work on contiguous data
    step = max(1, int(math.sqrt(h * w / 250_000)))  # ~250k pixels are plenty for glass statistics
    glass = _glass_colour(planes[:, ::step, ::step])
    d = _density_over_glass(planes, glass, mpp)
    mask = _chroma(d) > CHROMA_MIN / sensitivity
    ink = _ink(d) & mask
    mask &= ~_dilate(ink, 1)  # with the rim of each stroke, where ink thins out on the glass
    return _clean(mask, mpp, min_area_um2)


def _check_args(rgb, mpp, min_area_um2, sensitivity) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = (f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray)
               else type(rgb).__name__)
        raise ValueError(f"rgb must be a uint8 numpy array of shape (h, w, 3), got {got}")
    for name, value, lo_open in (("mpp", mpp, True), ("sensitivity", sensitivity, True),
                                 ("min_area_um2", min_area_um2, False)):
        value = value.item() if isinstance(value, np.generic) else value
        check_range(name, value, lo=0, lo_open=lo_open, error=ValueError)


def _glass_colour(sample: np.ndarray) -> np.ndarray:
    """float (3,): the most common bright near-grey colour of uint8 (3, ...) pixels, else white."""
    px = sample.reshape(3, -1)
    lo, hi = px.min(axis=0), px.max(axis=0)
    glassy = px[:, (lo >= 180) & (hi - lo <= 18) & (lo < 255)]
    if glassy.shape[1] == 0:
        return np.full(3, 255.0)
    q = (glassy >> 3).astype(np.int32)  # 8-level bins: glass noise spans one or two
    mode = np.bincount((q[0] << 10) | (q[1] << 5) | q[2]).argmax()
    centre = np.array([mode >> 10, (mode >> 5) & 31, mode & 31])[:, None]
    near = np.all(np.abs(q - centre) <= 1, axis=0)
    return np.median(glassy[:, near], axis=1).astype(np.float64)


def _density_over_glass(planes: np.ndarray, glass: np.ndarray, mpp: float) -> np.ndarray:
    """float32 (3, h, w): optical density above the glass, >= 0, after the blur."""
    sigma = max(SMOOTH_UM / mpp, 1.0)
    od = -np.log((np.arange(256) + 1.0) / 256.0)
    d = np.empty(planes.shape, dtype=np.float32)
    for c in range(3):
        # blurred in uint8: the rounding (< 0.5 level) is below the glass noise, and d is then a lookup
        smooth = _binomial(planes[c]) if sigma < 1.25 else ndi.gaussian_filter(planes[c], sigma, truncate=2.5)
        lut = np.maximum(od - (-math.log((glass[c] + 1.0) / 256.0)), 0.0).astype(np.float32)
        np.take(lut, smooth, out=d[c])
    return d


def _binomial(plane: np.ndarray) -> np.ndarray:
    """uint8 (h, w) blurred by the 5-tap binomial [1 4 6 4 1] / 16 (a Gaussian of sigma 1)
    along both axes, edges repeated; 3-4x faster than ndimage for this one size."""
    p = np.pad(plane, 2, mode="edge").astype(np.uint16)
    p = p[:-4] + 4 * p[1:-3] + 6 * p[2:-2] + 4 * p[3:-1] + p[4:]  # <= 16 * 255
    p = p[:, :-4] + 4 * p[:, 1:-3] + 6 * p[:, 2:-2] + 4 * p[:, 3:-1] + p[:, 4:]  # <= 65280
    return ((p + 128) >> 8).astype(np.uint8)


def _chroma(d: np.ndarray) -> np.ndarray:
    """float32 (h, w): length of d off the grey axis (1, 1, 1)."""
    mean = (d[0] + d[1] + d[2]) / 3
    return np.sqrt((d[0] - mean) ** 2 + (d[1] - mean) ** 2 + (d[2] - mean) ** 2)


def _ink(d: np.ndarray) -> np.ndarray:
    """bool (h, w): the direction of d is not that of H&E (see the module doc, step 4)."""
    r, g, b = d
    ink = (r > RED_OVER_GREEN * g) | (b > BLUE_OVER_GREEN * g)
    ink |= ((r + g + b) > 3 * DARK_OD) & (b > DARK_BLUE_OVER_GREEN * g)
    return ink


def _clean(mask: np.ndarray, mpp: float, min_area_um2: float) -> np.ndarray:
    """Closing, small holes filled, small and thin objects dropped (sizes in µm)."""
    r_close = round(CLOSE_UM / mpp)
    if r_close >= 1 and mask.any():
        mask = _erode(_dilate(mask, r_close), r_close)
    min_px = min_area_um2 / (mpp * mpp)
    mask = _fill_small_holes(mask, min_px)
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= max(min_px, 1)
    keep &= _has_core(mask, labels, n, THIN_UM / mpp)
    keep[0] = False
    return keep[labels]


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return _by_disc(mask, r, erode=False)


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Outside the image counts as tissue: tissue cut by the thumbnail's edge keeps its edge."""
    return _by_disc(mask, r, erode=True)


def _by_disc(mask: np.ndarray, r: int, erode: bool) -> np.ndarray:
    """Dilation or erosion by an octagon of radius r: r steps of a 3 x 3 cross or square,
    round(0.414 r) of them squares so that the diagonal reach is r * sqrt(2), like a disc's."""
    squares = round((math.sqrt(2) - 1) * r)
    for i in range(r):
        mask = _step(mask, i < squares, erode)
    return mask


def _step(a: np.ndarray, square: bool, erode: bool) -> np.ndarray:
    """One 3 x 3 cross or square step, with shifted slices (much faster than ndimage here)."""
    op = np.logical_and if erode else np.logical_or
    out = a.copy()
    op(out[1:], a[:-1], out=out[1:])
    op(out[:-1], a[1:], out=out[:-1])
    src = out.copy() if square else a  # a square is the cross's rows, then columns of the result
    op(out[:, 1:], src[:, :-1], out=out[:, 1:])
    op(out[:, :-1], src[:, 1:], out=out[:, :-1])
    return out


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """mask with its holes (background not touching the border) under max_px filled."""
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    small = np.bincount(holes.ravel(), minlength=n + 1) < max_px
    small[0] = False
    edges = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    small[np.unique(edges)] = False
    return mask | small[holes]


def _has_core(mask: np.ndarray, labels: np.ndarray, n: int, radius_px: float) -> np.ndarray:
    """bool (n + 1,): objects that hold a disc of radius_px (are not lines)."""
    r = math.floor(radius_px)
    if r < 1:
        return np.ones(n + 1, dtype=bool)
    core = _erode(mask, r)
    has = np.zeros(n + 1, dtype=bool)
    has[np.unique(labels[core])] = True
    return has


def load_tissue_mask(path: PathLike, shape: tuple[int, int]) -> np.ndarray:
    """A user's tissue mask image, resized (nearest) to ``shape``.

    Any non-zero pixel is tissue: in RGB(A) images any colour channel
    non-zero, and alpha 0 is never tissue; JPEG masks, whose black is not
    exactly 0 after compression, count a channel as non-zero above 127. The
    mask covers the slide's region of interest (the whole slide when it has
    no bounds).

    Args:
        path: PNG, TIFF, JPEG... file.
        shape: (h, w) of the wanted mask.

    Returns:
        bool (h, w).

    Raises:
        DataError naming the file: unreadable; aspect ratio more than 2 %
        off that of ``shape``; no tissue (before or after resizing).
    """
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape)):
        raise ValueError(f"shape must be (h, w) with two positive integers, got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    mask = _read_mask_any(path)
    mh, mw = mask.shape
    if mh == 0 or mw == 0:
        raise DataError(f"tissue mask {path} is empty ({mw} x {mh} px)")
    if abs((mw / mh) / (w / h) - 1.0) > 0.02:
        raise DataError(f"tissue mask {path} is {mw} x {mh} px (w x h, aspect {mw / mh:.3f}) but the slide "
                        f"region is {w} x {h} px (aspect {w / h:.3f}); the mask must cover the same region, "
                        "aspect ratios within 2 %")
    if not mask.any():
        raise DataError(f"tissue mask {path} marks no tissue (all pixels zero or transparent)")
    rows = ((np.arange(h) + 0.5) * (mh / h)).astype(np.intp)
    cols = ((np.arange(w) + 0.5) * (mw / w)).astype(np.intp)
    out = mask[rows[:, None], cols[None, :]]
    if not out.any():
        raise DataError(f"tissue mask {path} ({mw} x {mh} px) marks tissue too small to survive resizing "
                        f"to {w} x {h} px")
    return out


def _read_mask_any(path: PathLike) -> np.ndarray:
    """bool (H, W): non-zero (and not transparent) pixels of an image file."""
    try:
        with Image.open(path) as im:
            im.load()
            lossy = im.format == "JPEG"
            mode = im.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
                im, alpha = im.convert("RGBA"), True
            elif mode in ("P", "CMYK", "YCbCr", "HSV", "LAB", "RGBX"):
                im, alpha = im.convert("RGB"), False
            else:
                alpha = False
            a = np.asarray(im)
    except FileNotFoundError as e:
        raise DataError(f"tissue mask {path} does not exist") from e
    except Exception as e:  # Pillow raises several types for corrupt files
        raise DataError(f"cannot read tissue mask {path}: {type(e).__name__}: {e}") from e
    cut = 127 if lossy else 0
    if a.ndim == 2:
        return np.abs(a) > cut
    if a.ndim != 3:
        raise DataError(f"tissue mask {path} decoded to shape {a.shape}, expected a 2-D image")
    on = np.any(a[..., :3] > cut, axis=2)
    return on & (a[..., 3] > 0) if alpha else on
