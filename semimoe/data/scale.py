"""Scale as a first-class fact: pixel sizes, the training scale, resampling,
and the input specification a checkpoint carries (docs/METHOD.md §6).

* Every dataset declares the pixel size of its images in µm per pixel
  (:func:`source_mpp`): GlaS and CRAG their published values, the synthetic
  generators a nominal value (the GlaS-like one and its tiles GlaS's 0.62),
  folder and weak datasets ``data.source_mpp`` (a nominal 20x value,
  :data:`NOMINAL_MPP`, is assumed and said when it is not given).
* Training resamples every image by one factor for the whole dataset,
  keeping the aspect ratio (:func:`training_mpp`): ``data.mpp`` sets the
  model's µm/px directly; otherwise ``data.size`` chooses it so that the
  median training image's shorter side becomes ``data.size`` pixels
  (torchvision's ``Resize(int)`` convention, with one factor per dataset so
  that every image is seen at the same scale).
* The model's µm/px and its input normalisation travel together as an
  :class:`InputSpec`, stored in every checkpoint and exported model. Every
  prediction path resamples its input to ``InputSpec.mpp`` with
  :func:`resample_image` -- the same function that built the training
  images -- and brings the outputs back to the input's native resolution.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError

__all__ = [
    "GLAS_MPP", "CRAG_MPP", "SYNTHETIC_MPP", "GLAS_SYNTHETIC_MPP", "NOMINAL_MPP", "source_mpp",
    "training_mpp", "resampled_shape", "resample_image", "resample_mask", "resample_prob", "InputSpec",
    "axis_taps", "apply_taps",
]

#: GlaS (Sirinukunwattana et al., 2017): scanned at 0.465 µm/px (Zeiss MIRAX
#: MIDI) and released rescaled to the 20x-equivalent 0.62005 µm/px.
GLAS_MPP = 0.62005
#: CRAG (Graham et al., MILD-Net, Medical Image Analysis 2019): 20x, Omnyx
#: VL120, 0.55 µm/px.
CRAG_MPP = 0.55
#: The synthetic generator draws glands of 14-44 px radius, about the size of
#: glands in a 20x scan; it declares the nominal 20x pixel size.
SYNTHETIC_MPP = 0.5
#: The GlaS-like generator (:mod:`semimoe.data.glas_synthetic`) draws its
#: tissue in µm at GlaS's 20x pixel size, rounded.
GLAS_SYNTHETIC_MPP = 0.62
#: Assumed for folder datasets that do not declare ``data.source_mpp``.
NOMINAL_MPP = 0.5
_DECLARED = {"glas": GLAS_MPP, "crag": CRAG_MPP, "synthetic": SYNTHETIC_MPP,
             "synthetic-glas": GLAS_SYNTHETIC_MPP, "synthetic-weak": GLAS_SYNTHETIC_MPP}


def _positive(name: str, v) -> float:
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive number of µm per pixel, got {v!r}")
    return v


def source_mpp(kind: str, declared: Optional[float] = None) -> Tuple[float, bool]:
    """(µm/px of a dataset's images as stored, assumed?).

    ``declared`` (``data.source_mpp``) wins; else the dataset's published
    value; folder datasets without one get :data:`NOMINAL_MPP` and
    ``assumed=True``.
    """
    if declared is not None:
        return _positive("data.source_mpp", declared), False
    if kind in _DECLARED:
        return _DECLARED[kind], False
    return NOMINAL_MPP, True


def training_mpp(src_mpp: float, shapes: Sequence[Tuple[int, int]], size: Optional[int] = None,
                 mpp: Optional[float] = None) -> float:
    """µm/px the model trains at.

    ``mpp`` if given; else, with ``size``, the value that brings the median
    shorter side of ``shapes`` ((H, W) of the images as stored) to ``size``
    pixels; else ``src_mpp`` (native resolution).
    """
    if mpp is not None:
        return _positive("data.mpp", mpp)
    if not size:
        return float(src_mpp)
    if not shapes:
        raise ValueError("training_mpp: no image shapes to take the median of")
    short = float(np.median([min(int(h), int(w)) for h, w in shapes]))
    return float(src_mpp) * short / int(size)


def resampled_shape(shape: Tuple[int, int], factor: float) -> Tuple[int, int]:
    """(H, W) scaled by ``factor``, rounded, at least 1 pixel each."""
    h, w = shape
    if factor == 1.0:
        return int(h), int(w)
    return max(1, int(math.floor(h * factor + 0.5))), max(1, int(math.floor(w * factor + 0.5)))


def _is_identity(factor: float) -> bool:
    return abs(float(factor) - 1.0) < 1e-9


def resample_image(image: Union[np.ndarray, torch.Tensor], factor: float) -> Union[np.ndarray, torch.Tensor]:
    """Resample a uint8 RGB image (H, W, 3) by ``factor`` (<1 shrinks).

    Bilinear with antialiasing (a box-like filter when shrinking), computed
    in float32 and rounded back to uint8; NumPy in, NumPy out; a tensor stays
    on its device. ``factor`` 1 returns the input unchanged. Training images
    and every prediction path go through this function, so the model sees
    the same pixels either way.
    """
    if _is_identity(factor):
        return image
    is_np = isinstance(image, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(image)) if is_np else image
    if t.dtype != torch.uint8 or t.dim() != 3:
        raise ValueError(f"resample_image expects uint8 (H, W, C), got {t.dtype} {tuple(t.shape)}")
    size = resampled_shape(tuple(t.shape[:2]), factor)
    x = t.permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    out = y[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    return out.numpy() if is_np else out


def axis_taps(start: int, length: int, in_size: int, out_size: int, origin: int = 0,
              limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The interpolation taps of output pixels ``start .. start+length-1`` of one axis.

    The axis of ``in_size`` source pixels (starting at source index
    ``origin``) resampled to ``out_size`` pixels, exactly as
    :func:`resample_image` does it (``F.interpolate`` bilinear,
    ``align_corners=False``, antialiased when shrinking): output pixel ``i``
    is centred at source position ``s (i + 0.5)``, ``s = in_size /
    out_size``, and takes a triangle filter of half-width ``max(s, 1)``,
    normalised over the source pixels that exist. Source pixels exist in
    ``[0, limit)`` (default ``origin + in_size``): a window of a larger
    image (a whole-slide level) may use real pixels beyond the resampled
    region. Output pixels without any source pixel get all-zero weights.

    Returns ``(index, weight)``, both (length, K): source indices (clipped
    into range where the weight is 0) and float32 weights summing to 1 per row.
    Resampling a whole image with these taps (:func:`apply_taps`) equals
    :func:`resample_image` up to float rounding.
    """
    limit = origin + in_size if limit is None else int(limit)
    s = in_size / out_size
    support = max(s, 1.0)
    centre = s * (np.arange(start, start + length, dtype=np.float64) + 0.5) + origin
    lo = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), limit)
    k = max(int((hi - lo).max(initial=1)), 1)
    idx = lo[:, None] + np.arange(k)
    w = np.clip(1.0 - np.abs((idx - centre[:, None] + 0.5) / support), 0.0, None)
    w[idx >= hi[:, None]] = 0.0
    tot = w.sum(axis=1, keepdims=True)
    w = np.divide(w, tot, out=np.zeros_like(w), where=tot > 0)
    return np.clip(idx, 0, max(limit - 1, 0)), w.astype(np.float32)


def apply_taps(window: np.ndarray, y0: int, x0: int, rows: Tuple[np.ndarray, np.ndarray],
               cols: Tuple[np.ndarray, np.ndarray], fill: int = 255) -> np.ndarray:
    """Resample a uint8 (h, w, C) ``window`` whose top-left pixel is source
    pixel (``y0``, ``x0``) with the taps of :func:`axis_taps` for the output
    rows and columns: rows first, then columns, in float32, rounded to uint8.
    Output pixels with no source pixel get ``fill`` (white: an empty slide)."""
    (ri, rw), (ci, cw) = rows, cols
    if rw.shape[1] == 1 and cw.shape[1] == 1 and (rw == 1).all() and (cw == 1).all():
        return np.ascontiguousarray(window[ri[:, 0] - y0][:, ci[:, 0] - x0])  # integer positions: a copy
    src = window.astype(np.float32)
    tmp = sum(rw[:, k, None, None] * src[ri[:, k] - y0] for k in range(rw.shape[1]))
    out = sum(cw[None, :, k, None] * tmp[:, ci[:, k] - x0] for k in range(cw.shape[1]))
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)  # half to even, as torch.round
    empty_r, empty_c = rw.sum(1) == 0, cw.sum(1) == 0
    if empty_r.any() or empty_c.any():
        out[empty_r] = fill
        out[:, empty_c] = fill
    return out


def resample_mask(mask: Union[np.ndarray, torch.Tensor], factor: float) -> Union[np.ndarray, torch.Tensor]:
    """Nearest resample of an integer (H, W) label map by ``factor`` (exact labels)."""
    if _is_identity(factor):
        return mask
    from .augment import resize_mask

    is_np = isinstance(mask, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(mask)) if is_np else mask
    out = resize_mask(t, resampled_shape(tuple(t.shape[-2:]), factor))
    return out.numpy() if is_np else out


def resample_prob(prob: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Probability maps (C, h, w) back to (C, H, W): bilinear, antialiased when shrinking."""
    if tuple(prob.shape[-2:]) == tuple(shape):
        return prob
    shrink = shape[0] < prob.shape[-2] or shape[1] < prob.shape[-1]
    y = F.interpolate(prob[None].float(), size=tuple(shape), mode="bilinear", align_corners=False,
                      antialias=shrink)
    return y[0].to(prob.dtype)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model expects of its input.

    mean, std: per-channel normalisation of images scaled to [0, 1].
    mpp: µm/px the model was trained at (after any resampling).
    source_mpp: µm/px of the training images as stored: the pixel size
        assumed for inputs whose own pixel size is not given.
    source_mpp_assumed: the training data did not declare its pixel size
        (a folder dataset without ``data.source_mpp``).
    """

    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    mpp: float
    source_mpp: float
    source_mpp_assumed: bool = False

    def __post_init__(self):
        for name in ("mean", "std"):
            v = tuple(float(a) for a in getattr(self, name))
            if len(v) != 3 or not all(math.isfinite(a) for a in v):
                raise ValueError(f"InputSpec.{name} needs 3 finite values, got {v}")
            object.__setattr__(self, name, v)
        if min(self.std) <= 0:
            raise ValueError(f"InputSpec.std must be positive, got {self.std}")
        object.__setattr__(self, "mpp", _positive("InputSpec.mpp", self.mpp))
        object.__setattr__(self, "source_mpp", _positive("InputSpec.source_mpp", self.source_mpp))

    def factor(self, image_mpp: Optional[float] = None) -> float:
        """Resampling factor for an image of ``image_mpp`` µm/px (None: ``source_mpp``)."""
        m = self.source_mpp if image_mpp is None else _positive("mpp", image_mpp)
        return m / self.mpp

    def to_meta(self) -> Dict[str, Any]:
        """``{"norm": {mean, std}, "scale": {mpp, source_mpp, source_mpp_assumed}}``: the
        entries written into checkpoints and exported models."""
        return {"norm": {"mean": list(self.mean), "std": list(self.std)},
                "scale": {"mpp": self.mpp, "source_mpp": self.source_mpp,
                          "source_mpp_assumed": bool(self.source_mpp_assumed)}}

    @classmethod
    def from_meta(cls, meta: Dict[str, Any], where: str = "model") -> "InputSpec":
        """Read :meth:`to_meta`'s entries. Files written before the scale was
        recorded (no ``"scale"``) run at their inputs' native resolution, with a
        warning."""
        norm = meta.get("norm") if isinstance(meta, dict) else None
        if not isinstance(norm, dict) or norm.get("mean") is None or norm.get("std") is None:
            raise CheckpointError(f"{where}: no input normalisation ('norm': mean/std) in its metadata")
        scale = meta.get("scale")
        if not isinstance(scale, dict) or scale.get("mpp") is None:
            warnings.warn(f"{where} records no training scale (written by an older semimoe): inputs are "
                          "used at their native resolution", stacklevel=2)
            return cls(norm["mean"], norm["std"], 1.0, 1.0, True)
        return cls(norm["mean"], norm["std"], scale["mpp"], scale.get("source_mpp") or scale["mpp"],
                   bool(scale.get("source_mpp_assumed", False)))

    def describe(self) -> str:
        src = f"{self.source_mpp:.4g} µm/px" + (" (assumed)" if self.source_mpp_assumed else "")
        return f"model at {self.mpp:.4g} µm/px (training images {src}, resampled by {self.factor():.4g})"
