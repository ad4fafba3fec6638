"""Tiled (sliding-window) inference over images of any size: grid -> runner
-> merger (:mod:`.grid`, :mod:`.runner`, :mod:`.merger`).

Tiles of several images of the same size are gathered into one
channels-last batch of ``batch_size`` tiles, normalised in one pass and run
in one call; the weighted predictions are blended in a band one tile high
and written out row by row. ``tile=None`` runs each image in one pass,
padded to the model's size multiple (validation does this), unless it is
larger than :data:`WHOLE_IMAGE_MAX_PIXELS`.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from ..utils import Progress
from .grid import PAD_MODES, Job, TileGrid, TileReader
from .merger import BLEND_MODES, BandMerger, blend_weights
from .runner import TTA_MODES, TileRunner

__all__ = ["TilingConfig", "sliding_window", "resolve_tile", "WHOLE_IMAGE_MAX_PIXELS", "LARGE_IMAGE_TILE"]

#: ``tile=None`` runs an image in one pass up to this many pixels (2048 x 2048)...
WHOLE_IMAGE_MAX_PIXELS = 2048 * 2048
#: ...and larger images in tiles of this side (a multiple of every size multiple up to 256).
LARGE_IMAGE_TILE = 1024

IntPair = Union[int, Tuple[int, int], Sequence[int]]


def _pair(v: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(a) for a in v)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {v!r}")
    return v  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class TilingConfig:
    """Settings of :func:`sliding_window` (and of ``semimoe.infer``).

    tile: (th, tw) or int (kept as a pair), a multiple of the model's size multiple; None:
        each image in one tile (padded up to the size multiple) when it has at
        most :data:`WHOLE_IMAGE_MAX_PIXELS` pixels, else tiles of
        :data:`LARGE_IMAGE_TILE` px.
    overlap: fraction of the tile shared by neighbouring tiles, in [0, 1).
    blend: ``"gaussian"`` | ``"constant"``.
    sigma_scale: Gaussian sigma as a fraction of the tile size (MONAI's 0.125).
    batch_size: tiles per model call (counting the TTA variants).
    align: tile starts on multiples of this (None: the model's size multiple).
    pad_mode: ``"reflect"`` | ``"replicate"`` | ``"constant"``.
    tta: None | ``"hflip"`` | ``"flip"``.
    out_dtype: dtype of the returned probability map (float32, float16, bfloat16).
    """

    tile: Optional[IntPair] = 256
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 8
    align: Optional[int] = None
    pad_mode: str = "reflect"
    tta: Optional[str] = None
    out_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.tile is not None:  # stored as an (h, w) pair
            object.__setattr__(self, "tile", _pair(self.tile, "tile"))
        if not 0.0 <= float(self.overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {self.blend!r}")
        if not float(self.sigma_scale) > 0:
            raise ValueError(f"sigma_scale must be > 0, got {self.sigma_scale!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.align is not None and int(self.align) < 1:
            raise ValueError(f"align must be >= 1, got {self.align!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        if self.tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {self.tta!r}")
        if self.out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"out_dtype must be float32, float16 or bfloat16, got {self.out_dtype}")

    def kwargs(self) -> dict:
        return dataclasses.asdict(self)


def _as_images(image) -> Tuple[List[Tensor], bool, bool]:
    """-> (images, batched?, uint8-HWC?)."""
    if isinstance(image, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays (np.asarray(PIL image)): never written
            warnings.simplefilter("ignore", UserWarning)
            image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor or numpy.ndarray, got {type(image).__name__}")
    if image.dtype == torch.uint8:
        if image.dim() in (3, 4):
            return list(image) if image.dim() == 4 else [image], image.dim() == 4, True
        raise ValueError(f"uint8 images must be (H, W, C) or (N, H, W, C), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be uint8 (H, W, C) or floating point (C, H, W), got {image.dtype}")
    if image.dim() in (3, 4):
        return list(image) if image.dim() == 4 else [image], image.dim() == 4, False
    raise ValueError(f"float images must be (C, H, W) or (N, C, H, W), got {tuple(image.shape)}")


def resolve_tile(cfg_tile: Optional[IntPair], shape: Tuple[int, int], mult: int, fixed=None) -> Tuple[int, int]:
    """The (th, tw) tile for an image of ``shape``: the runtime's ``fixed`` tile
    (``cfg_tile`` must then equal it or be None), or ``cfg_tile`` (a multiple
    of ``mult``), or, for None, the whole image / large-image tiles. Raises
    :class:`~semimoe.errors.UsageError` (a ValueError) naming the tile."""
    if fixed is not None:
        fixed = tuple(int(v) for v in fixed)
        if cfg_tile is not None and _pair(cfg_tile, "tile") != fixed:
            raise UsageError(f"this model was built for {fixed[0]}x{fixed[1]} tiles, got tile "
                             f"{'x'.join(map(str, _pair(cfg_tile, 'tile')))}")
        return fixed  # type: ignore[return-value]
    if cfg_tile is None:
        if shape[0] * shape[1] <= WHOLE_IMAGE_MAX_PIXELS:  # the whole image, padded up to the size multiple
            return tuple(-(-s // mult) * mult for s in shape)  # type: ignore[return-value]
        cfg_tile = -(-LARGE_IMAGE_TILE // mult) * mult
    th, tw = _pair(cfg_tile, "tile")
    if th % mult or tw % mult:
        raise UsageError(f"tile {th}x{tw} must be a multiple of the model's size multiple {mult}")
    return th, tw


def sliding_window(
    runtime: Callable[[Tensor], Tensor],
    image: Union[Tensor, np.ndarray],
    *,
    tile: Optional[IntPair] = 256,
    overlap: float = 0.25,
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 8,
    align: Optional[int] = None,
    pad_mode: str = "reflect",
    tta: Optional[str] = None,
    out_dtype: torch.dtype = torch.float32,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    fixed_batch: Optional[bool] = None,
    device: Union[str, torch.device, None] = None,
    progress: Optional[bool] = None,
) -> Tensor:
    """Blend the predictions of ``runtime`` over overlapping tiles of ``image``.

    Args:
        runtime: maps a float32 tile batch x (b, C_in, th, tw) (a channels-last
            view) to (b, C_out, th, tw) per-pixel outputs, any float dtype. It
            may declare ``device``, ``fixed_batch`` (needs exactly
            ``batch_size`` tiles per call), ``tile`` (the only tile size it
            runs) and ``size_multiple`` (H and W of a tile must be multiples
            of it; the model's, see :attr:`semimoe.models.SemiMoE.size_multiple`).
        image: uint8 RGB ``(H, W, C)`` / ``(N, H, W, C)`` (tensor or ndarray),
            normalised per tile as ``(x / 255 - mean) / std`` (``mean`` and
            ``std`` required), or a float ``(C, H, W)`` / ``(N, C, H, W)``
            tensor: used as it is, or, when ``mean`` and ``std`` are given,
            normalised per tile as ``(x - mean) / std``. N images are tiled as
            one stream (batches span images).
        tile, overlap, blend, sigma_scale, batch_size, align, pad_mode, tta,
        out_dtype: see :class:`TilingConfig`.
        fixed_batch: pad every call to exactly ``batch_size`` tiles.
        device: where tiles are gathered, predicted and blended (default:
            ``runtime.device``, else the image's device).
        progress: report progress on stderr (a bar on a terminal, else a line
            every 30 s); None: for more than 256 tiles.

    Returns:
        float ``(C_out, H, W)`` (or ``(N, C_out, H, W)``) in ``out_dtype`` on
        ``device``: ``sum_t w_t p_t / sum_t w_t`` over the tiles t covering
        each pixel.
    """
    cfg = TilingConfig(tile=tile, overlap=overlap, blend=blend, sigma_scale=sigma_scale, batch_size=batch_size,
                       align=align, pad_mode=pad_mode, tta=tta, out_dtype=out_dtype)
    images, batched, hwc = _as_images(image)
    if device is None:
        device = getattr(runtime, "device", None) or images[0].device
    device = torch.device(device)
    images = [im.to(device) for im in images]
    if len({tuple(im.shape) for im in images}) != 1:
        raise ValueError("all images of a batch must have the same shape")
    shape = tuple(images[0].shape[:2] if hwc else images[0].shape[1:])
    mult = int(getattr(runtime, "size_multiple", 1) or 1)
    th, tw = resolve_tile(cfg.tile, shape, mult, getattr(runtime, "tile", None))
    grid = TileGrid(shape, (th, tw), cfg.overlap, int(cfg.align) if cfg.align else mult, cfg.pad_mode, device)
    runner = TileRunner(runtime, cfg.batch_size, cfg.tta, fixed_batch)
    reader = TileReader(images, hwc, grid, runner.per_step, mean, std)
    one_tile = len(grid) == 1  # one tile per image: blending weights cancel exactly
    weights = None if (cfg.blend == "constant" or one_tile) else blend_weights((th, tw), cfg.blend,
                                                                                cfg.sigma_scale, device)
    jobs = [Job(n, r, c) for n in range(len(images)) for r, c in grid.positions()]
    show = progress if progress is not None else len(jobs) > 256
    bar = Progress(len(jobs), "tiles", unit="tiles") if show else None
    merger = None
    try:
        with torch.inference_mode():
            for b0 in range(0, len(jobs), runner.per_step):
                chunk = jobs[b0:b0 + runner.per_step]
                y = runner(reader.read(chunk))
                if merger is None:
                    merger = BandMerger(grid, len(images), y.shape[1], weights, cfg.out_dtype, device,
                                        runner.per_step)
                merger.aggregate(chunk, y)
                if bar is not None:
                    bar.update(len(chunk))
            out = merger.finalize()
    finally:
        if bar is not None:
            bar.close()
    return out if batched else out[0]
