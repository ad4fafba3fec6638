"""The one image reader and mask reader of semimoe.

Training, validation, evaluation and ``semimoe.infer`` read pixels through
:func:`read_image`, so the model sees the same values whichever path an image
takes:

* 8-bit RGB: as stored.
* Grey (``L``), bilevel (``1``): replicated to three channels.
* 16-bit grey (``I;16*``, and ``I`` with values up to 65535): divided by
  257 and rounded (65535 -> 255), replicated to three channels. The same
  linear map everywhere; no per-image stretching.
* Alpha (``RGBA``, ``LA``, transparent palettes): composited over white, the
  colour of an empty slide.
* Palette, CMYK, YCbCr...: converted to RGB by Pillow.
* Float images (``F``) and 32-bit integer images beyond 16 bits are refused:
  their intensity scale is unknown.

Greyscale and 16-bit images are read as described but said once (a model
trained on H&E colour sees little in a grey image).

Masks (:func:`read_mask`) are label images: see its docstring.
"""
from __future__ import annotations

import os
from typing import Tuple, Union

import numpy as np
from PIL import Image

from ..errors import DataError
from ..utils import warn_once

__all__ = ["DataError", "read_image", "read_mask", "image_size"]

PathLike = Union[str, os.PathLike]
_GREY16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open(path: PathLike, what: str) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()  # decode now, so that truncated or corrupt files fail here
    except FileNotFoundError as e:
        raise DataError(f"{what} {path} does not exist") from e
    except Exception as e:  # Pillow raises several types for corrupt files
        raise DataError(f"cannot read {what} {path}: {type(e).__name__}: {e}") from e
    return im


def over_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 RGBA (..., 4) composited over white -> uint8 RGB (RGB input is returned as it is)."""
    if rgba.shape[-1] == 3:
        return rgba
    if rgba[..., 3].min() == 255:  # opaque (the common case): no arithmetic
        return np.ascontiguousarray(rgba[..., :3])
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def from_16bit(a: np.ndarray) -> np.ndarray:
    """16-bit values to uint8: round(a / 257) in exact integer arithmetic (65535 -> 255)."""
    return ((a.astype(np.int64) * 2 + 257) // 514).astype(np.uint8)


def read_image(path: PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3), converted as the module doc says.

    Raises :class:`DataError` naming the file when it is missing, truncated,
    corrupt or of an unsupported kind.
    """
    im = _open(path, "image")
    with im:
        mode = im.mode
        if mode in _GREY16 + ("L", "1", "LA"):
            warn_once("grey-image", f"image {path} is greyscale (mode {mode}): it is read as three equal "
                      "channels" + (", 16-bit values divided by 257" if mode in _GREY16 else "")
                      + "; a model trained on H&E colour images may see nothing in it (said once)")
        if mode in _GREY16:
            a = np.asarray(im).astype(np.int64)
            if a.size and (a.min() < 0 or a.max() > 65535):
                raise DataError(f"image {path} is a 32-bit integer image with values outside 0..65535; "
                                "expected 8- or 16-bit pixels")
            a = from_16bit(a)
            return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))
        if mode == "F":
            raise DataError(f"image {path} holds floating-point pixels of unknown scale; expected 8- or "
                            "16-bit RGB or grey")
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
            return over_white(np.asarray(im.convert("RGBA")))
        if mode != "RGB":
            im = im.convert("RGB")
        a = np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy)
    if a.ndim != 3 or a.shape[2] != 3:
        raise DataError(f"image {path} decoded to shape {a.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(a)


def image_size(path: PathLike) -> Tuple[int, int]:
    """(H, W) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError as e:
        raise DataError(f"image {path} does not exist") from e
    except Exception as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return int(h), int(w)


def read_mask(path: PathLike) -> np.ndarray:
    """An instance label map as int32 (H, W), 0 = background.

    Grey (8/16/32-bit) and palette images give their values (palette
    indices); RGB masks with equal channels give that channel; other RGB
    masks give one label per distinct non-black colour.

    Binary masks -- two values, 0 and one other (0/1, 0/255) -- hold no
    instances: their glands are numbered by connected components
    (8-connected), and that is said once when it splits a mask into several
    glands (glands that touch stay one). Masks saved in a lossy format (JPEG)
    and masks with implausibly many tiny labels are warned about. Raises
    :class:`DataError` naming the file.
    """
    im = _open(path, "mask")
    with im:
        mode = im.mode
        if mode in ("RGBA", "LA", "PA"):
            im = im.convert("RGB" if mode == "RGBA" else "L" if mode == "LA" else "P")
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., :3]
        if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
            a = a[..., 0]
        else:
            code = (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]
            _, inv = np.unique(code, return_inverse=True)
            inv = inv.reshape(code.shape)
            # black is background; other colours numbered 1.. in colour order
            a = inv + (0 if (code == 0).any() else 1)
    if a.ndim != 2:
        raise DataError(f"mask {path} has shape {a.shape}, expected a 2-D label image")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DataError(f"mask {path} holds non-integer values")
    if a.size and a.min() < 0:
        raise DataError(f"mask {path} holds negative labels")
    a = np.ascontiguousarray(a.astype(np.int32))
    if str(path).lower().endswith((".jpg", ".jpeg")):
        warn_once("jpeg-mask", f"mask {path} is a JPEG: lossy compression changes label values at every "
                  "edge, so it gains spurious labels; save masks as PNG or TIFF (said once)")
    values = np.unique(a)
    if values.size == 2 and values[0] == 0:
        from ..metrics import label_components

        lab = label_components(a > 0)
        if lab.max() > 1:
            warn_once("binary-mask", f"mask {path} is binary (values 0 and {values[1]}): its glands are "
                      "numbered by connected components, so glands that touch count as one; save one integer "
                      "per gland to keep them apart (said once)")
        return lab
    if values.size > 50:
        areas = np.bincount(a.ravel())[values[values > 0]]
        if np.median(areas) < 20:
            warn_once("tiny-labels", f"mask {path} has {values.size - 1} labels with a median area of "
                      f"{int(np.median(areas))} px: is it really an instance mask? (lossy compression and "
                      "anti-aliased drawing create such labels)")
    return a
