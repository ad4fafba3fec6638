"""Tiled (sliding-window) inference over images of any size.

Whole CRAG images (~1512x1516), GlaS images (~775x522) and larger tiles cut
from slides are segmented by running the model on overlapping tiles and
blending the tile predictions:

* **Tile grid.** Per axis, tile starts ``0, s, 2s, ...`` with the stride
  ``s = tile * (1 - overlap)`` rounded down to a multiple of ``align``, and a
  last tile that ends at the image border (rounded up to a multiple of
  ``align``). With ``align=1`` this is exactly MONAI's
  ``sliding_window_inference`` grid. With ``align`` = the model's
  downsampling factor (``2**(depth-1)``, the default when the model is known)
  every tile sits on the model's pooling grid, so that a pixel whose receptive
  field lies inside a tile gets *exactly* the value of a full-image forward
  pass.
* **Padding.** Where the grid runs past the bottom/right border (alignment) or
  the image is smaller than a tile, the missing pixels are filled by
  ``pad_mode`` (``"reflect"`` default, ``"replicate"``, or ``"constant"`` = 0
  after normalisation, i.e. the dataset mean colour). Only border tiles are
  gathered through an index map; nothing full-size is padded.
* **Blending.** ``"gaussian"`` (MONAI's importance map: per-axis
  ``exp(-x^2 / (2 (sigma_scale * tile)^2))``, outer product, floored at 1e-3)
  or ``"constant"``. Weights are computed once per (tile, blend, sigma, device)
  and cached. The output is ``sum_t w_t p_t / sum_t w_t``.
* **Bounded memory.** Tiles are processed row by row; the weighted sums live
  in a float32 band of ``tile`` rows (``(C + 1) x tile x W`` floats), and rows
  are normalised and written to the output (``out_dtype``, float32 or
  float16) as soon as no later tile can touch them. There is no full-size
  weight map, count map or float64 buffer; the input may stay uint8 and is
  normalised per tile batch.
* **Batching.** Tiles (of several images of the same size, too) are gathered
  into one channels-last batch buffer of ``batch_size`` tiles, normalised in
  one pass and run in one call; the weighted predictions land in a contiguous
  buffer, so the Python work per tile is one slice copy and one contiguous
  add. ``fixed_batch`` pads the last batch for engines compiled for one batch
  size. (MONAI's loop normalises the full image up front and keeps a
  full-size output and count map in the input dtype.)
* **Test-time augmentation.** ``tta="flip"`` averages the predictions of the
  tile and its horizontal, vertical and double flips (``"hflip"``: identity +
  horizontal flip), run in the same batch.

High level: :class:`TiledSegmenter` wraps a backend (PyTorch module,
onnxruntime, AOTInductor or TensorRT; see :mod:`semimoe.deploy`) with the
normalisation and tiling settings and returns a :class:`Segmentation`
(probabilities, mask, instances).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import warnings
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TilingConfig",
    "Segmentation",
    "TiledSegmenter",
    "sliding_window",
    "tile_starts",
    "blend_weights",
    "postprocess",
]

BLEND_MODES = ("gaussian", "constant")
PAD_MODES = ("reflect", "replicate", "constant")
TTA_MODES = (None, "hflip", "flip")

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
    """Settings of :func:`sliding_window` (and the ``semimoe.infer`` CLI).

    tile: (th, tw) or int; must be a multiple of the model's size multiple.
    overlap: fraction of the tile shared by neighbouring tiles, in [0, 1).
    blend: ``"gaussian"`` | ``"constant"``.
    sigma_scale: Gaussian sigma as a fraction of the tile size (MONAI's 0.125).
    batch_size: tiles per model call (times the TTA variants, see ``tta``).
    align: tile starts on multiples of this (None: the model's size multiple,
        1 when unknown).
    pad_mode: ``"reflect"`` | ``"replicate"`` | ``"constant"``.
    tta: None | ``"hflip"`` | ``"flip"``.
    out_dtype: dtype of the returned probability map (float32 or float16).
    """

    tile: IntPair = 256
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 8
    align: Optional[int] = None
    pad_mode: str = "reflect"
    tta: Optional[str] = None
    out_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        _pair(self.tile, "tile")
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


# ----------------------------------------------------------------------------
# Grid and weights
# ----------------------------------------------------------------------------
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


def blend_weights(tile: IntPair, blend: str = "gaussian", sigma_scale: float = 0.125,
                  device: Union[str, torch.device] = "cpu") -> Tensor:
    """Per-pixel blending weight of one tile: float32 (th, tw), cached.

    ``"gaussian"``: ``g(y) g(x)`` with ``g(u) = exp(-(u - (n-1)/2)^2 / (2 (sigma_scale n)^2))``,
    floored at 1e-3 (MONAI's ``compute_importance_map``); ``"constant"``: ones.
    The returned tensor is shared: do not modify it in place.
    """
    th, tw = _pair(tile, "tile")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    return _blend_weights_cached(th, tw, blend, float(sigma_scale), str(torch.device(device)))


def _pad_index(n_pad: int, size: int, mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """Source index for positions 0..n_pad-1 of an axis of length ``size``
    padded at the end, and the validity mask (False where ``constant`` fills)."""
    i = np.arange(n_pad)
    valid = i < size
    if mode == "reflect" and size > 1:
        period = 2 * size - 2
        j = i % period
        src = np.where(j < size, j, period - j)
    else:  # replicate, constant (value replaced afterwards), reflect of a 1-pixel axis
        src = np.minimum(i, size - 1)
    return src, valid


# ----------------------------------------------------------------------------
# Sliding window
# ----------------------------------------------------------------------------
class _Image(NamedTuple):
    data: Tensor          # (H, W, C) uint8 or (C, H, W) float, on the device
    hwc: bool


def _as_batch(image) -> Tuple[List[_Image], bool, bool]:
    """-> (images, batched?, uint8-HWC?)."""
    if isinstance(image, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays (np.asarray(PIL image)): never written
            warnings.simplefilter("ignore", UserWarning)
            image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor or numpy.ndarray, got {type(image).__name__}")
    if image.dtype == torch.uint8:
        if image.dim() == 3:
            return [_Image(image, True)], False, True
        if image.dim() == 4:
            return [_Image(im, True) for im in image], True, True
        raise ValueError(f"uint8 images must be (H, W, C) or (N, H, W, C), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be uint8 (H, W, C) or floating point (C, H, W), got {image.dtype}")
    if image.dim() == 3:
        return [_Image(image, False)], False, False
    if image.dim() == 4:
        return [_Image(im, False) for im in image], True, False
    raise ValueError(f"float images must be (C, H, W) or (N, C, H, W), got {tuple(image.shape)}")


def _flip_variants(tta: Optional[str]) -> List[Tuple[int, ...]]:
    if tta is None:
        return [()]
    if tta == "hflip":
        return [(), (3,)]
    return [(), (3,), (2,), (2, 3)]


def _size_multiple(predict) -> int:
    """The backend's ``size_multiple``, or the ``cfg.size_multiple`` of a model
    inside an ``nn.Module`` (a ``SemiMoE`` or its predictor), else 1."""
    m = getattr(predict, "size_multiple", None)
    if m:
        return int(m)
    if isinstance(predict, torch.nn.Module):
        for mod in predict.modules():
            cfg = getattr(mod, "cfg", None)
            if cfg is not None and getattr(cfg, "size_multiple", None):
                return int(cfg.size_multiple)
    return 1


def sliding_window(
    predict: Callable[[Tensor], Tensor],
    image: Union[Tensor, np.ndarray],
    *,
    tile: IntPair = 256,
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
    """Blend the predictions of ``predict`` over overlapping tiles of ``image``.

    Args:
        predict: maps a float32 tile batch x (b, C_in, th, tw) (a channels-last
            view) to (b, C_out, th, tw) per-pixel outputs (probabilities),
            any float dtype. A backend may declare ``device``, ``fixed_batch``
            (needs exactly ``batch_size`` tiles per call) and ``size_multiple``
            attributes, which supply the defaults below (``size_multiple`` is
            also found in the ``cfg`` of a SemiMoE module).
        image: either uint8 RGB ``(H, W, C)`` / ``(N, H, W, C)`` (tensor or
            ndarray), normalised per tile as ``(x / 255 - mean) / std`` (``mean``
            and ``std`` required), or a float ``(C, H, W)`` / ``(N, C, H, W)``
            tensor: used as it is, or, when ``mean`` and ``std`` are given,
            normalised per tile as ``(x - mean) / std``. N images are tiled as
            one stream (batches span images).
        tile, overlap, blend, sigma_scale, batch_size, align, pad_mode, tta,
        out_dtype: see :class:`TilingConfig`.
        fixed_batch: pad every call to exactly ``batch_size`` tiles.
        device: where tiles are gathered, predicted and blended (default:
            ``predict.device``, else the image's device).
        progress: tqdm progress bar; None shows it for more than 256 tiles
            when stderr is a terminal.

    Returns:
        float ``(C_out, H, W)`` (or ``(N, C_out, H, W)``) in ``out_dtype`` on
        ``device``: ``sum_t w_t p_t / sum_t w_t`` over the tiles t covering
        each pixel.
    """
    cfg = TilingConfig(tile=tile, overlap=overlap, blend=blend, sigma_scale=sigma_scale,
                       batch_size=batch_size, align=align, pad_mode=pad_mode, tta=tta, out_dtype=out_dtype)
    th, tw = _pair(cfg.tile, "tile")
    mult = _size_multiple(predict)
    if th % mult or tw % mult:
        raise ValueError(f"tile {th}x{tw} must be a multiple of the model's size multiple {mult}")
    al = int(cfg.align) if cfg.align is not None else mult
    if fixed_batch is None:
        fixed_batch = bool(getattr(predict, "fixed_batch", False))
    fixed_tile = getattr(predict, "tile", None)
    if fixed_tile is not None and tuple(fixed_tile) != (th, tw):
        raise ValueError(f"this backend was built for {tuple(fixed_tile)} tiles, got tile={th}x{tw}")

    images, batched, hwc = _as_batch(image)
    if device is None:
        device = getattr(predict, "device", None) or images[0].data.device
    device = torch.device(device)
    images = [_Image(im.data.to(device), im.hwc) for im in images]
    shapes = {tuple(im.data.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError("all images of a batch must have the same shape")
    if hwc:
        H, W, C = images[0].data.shape
        if mean is None or std is None:
            raise ValueError("uint8 images need mean and std (normalisation of the model's input)")
    else:
        C, H, W = images[0].data.shape
    if mean is not None and std is not None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(-1)
        if mean_t.numel() != C or std_t.numel() != C:
            raise ValueError(f"mean/std must have {C} values")
        scale = 1.0 / std_t
        shift = -mean_t / std_t
        if hwc:
            scale = scale / 255.0
        scale_row, shift_row = scale.repeat(tw), shift.repeat(tw)  # (tw * C,): HWC rows
    else:
        scale = shift = None

    ys, Hp = tile_starts(H, th, cfg.overlap, al)
    xs, Wp = tile_starts(W, tw, cfg.overlap, al)
    ry, vy = _pad_index(Hp, H, cfg.pad_mode)
    rx, vx = _pad_index(Wp, W, cfg.pad_mode)
    ry_t, rx_t = torch.from_numpy(ry).to(device), torch.from_numpy(rx).to(device)
    const = cfg.pad_mode == "constant"
    weights = blend_weights((th, tw), cfg.blend, cfg.sigma_scale, device)
    constant_blend = cfg.blend == "constant"
    # The column pattern of the weights is the same for every tile row: its
    # sum over one row of tiles is added to the denominator band once per row.
    row_den = torch.zeros(th, Wp, dtype=torch.float32, device=device)
    for x0 in xs:
        row_den[:, x0:x0 + tw] += weights

    flips = _flip_variants(cfg.tta)
    nv = len(flips)
    per_step = max(1, cfg.batch_size // nv)
    jobs = [(n, r, c) for n in range(len(images)) for r in range(len(ys)) for c in range(len(xs))]
    # Channels-last batch buffer: a HWC tile copies in with one contiguous memcpy per row.
    buf = torch.empty(per_step, th, tw, C, dtype=torch.float32, device=device)

    out = None
    band = den = None
    state = {"n": -1, "r": -1}

    def flush(n: int, y0: int, rows: int) -> None:
        rows_out = min(rows, H - y0)
        if rows_out <= 0:
            return
        out[n, :, y0:y0 + rows_out] = (band[:, :rows_out, :W] / den[:rows_out, :W]).to(cfg.out_dtype)

    def start_row(n: int, r: int) -> None:
        if n != state["n"]:
            if state["n"] >= 0:
                flush(state["n"], ys[state["r"]], th)
            band.zero_()
            den.zero_()
        else:
            y_old, y_new = ys[state["r"]], ys[r]
            d = y_new - y_old
            flush(n, y_old, d)
            if d < th:
                band[:, :th - d] = band[:, d:].clone()
                den[:th - d] = den[d:].clone()
            band[:, th - d:] = 0
            den[th - d:] = 0
        den.add_(row_den)
        state["n"], state["r"] = n, r

    show = progress if progress is not None else (len(jobs) > 256 and sys.stderr.isatty())
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), unit="tile", desc="tiles")

    with torch.inference_mode():
        for b0 in range(0, len(jobs), per_step):
            chunk = jobs[b0:b0 + per_step]
            for i, (n, r, c) in enumerate(chunk):
                y0, x0 = ys[r], xs[c]
                img = images[n].data
                inside = y0 + th <= H and x0 + tw <= W
                if hwc:
                    src = img[y0:y0 + th, x0:x0 + tw] if inside else \
                        img.index_select(0, ry_t[y0:y0 + th]).index_select(1, rx_t[x0:x0 + tw])
                    buf[i].copy_(src)
                else:
                    src = img[:, y0:y0 + th, x0:x0 + tw] if inside else \
                        img.index_select(1, ry_t[y0:y0 + th]).index_select(2, rx_t[x0:x0 + tw])
                    buf[i].copy_(src.permute(1, 2, 0))
            nb = len(chunk)
            xb = buf[:nb]
            if scale is not None:
                # x * scale + shift in one pass, over rows of tw * C values (a
                # per-channel broadcast over a last dim of 3 does not vectorise)
                rows = xb.view(nb * th, tw * C)
                torch.addcmul(shift_row, rows, scale_row, out=rows)
            if const:
                for i, (n, r, c) in enumerate(chunk):
                    y0, x0 = ys[r], xs[c]
                    if y0 + th > H:
                        xb[i, int(vy[y0:y0 + th].sum()):] = 0
                    if x0 + tw > W:
                        xb[i, :, int(vx[x0:x0 + tw].sum()):] = 0
            x = xb.permute(0, 3, 1, 2)  # (nb, C, th, tw), channels-last strides
            if nv > 1:
                x = torch.cat([x if not f else x.flip(f) for f in flips], dim=0)
            m = x.shape[0]
            if fixed_batch and m < cfg.batch_size:
                x = torch.cat([x, x[-1:].expand(cfg.batch_size - m, *x.shape[1:])], dim=0)
            y = predict(x)
            if y.dim() != 4 or y.shape[0] < m or tuple(y.shape[2:]) != (th, tw):
                raise ValueError(f"predict returned shape {tuple(y.shape)} for input {tuple(x.shape)}")
            y = y[:m]
            if y.device != device:
                y = y.to(device)
            if out is None:
                Cout = y.shape[1]
                out = torch.empty(len(images), Cout, H, W, dtype=cfg.out_dtype, device=device)
                band = torch.zeros(Cout, th, Wp, dtype=torch.float32, device=device)
                den = torch.zeros(th, Wp, dtype=torch.float32, device=device)
                # Weighted tiles land in a contiguous NCHW buffer whatever the
                # backend's output layout (channels-last, fp16): the per-tile
                # adds into the band are then plain contiguous row adds.
                ybuf = torch.empty(per_step, Cout, th, tw, dtype=torch.float32, device=device)
            yw = ybuf[:nb]
            if nv > 1:
                parts = y.split(nb, dim=0)
                yw.copy_(parts[0])
                for f, p in zip(flips[1:], parts[1:]):
                    yw += p.flip(f)
                yw.mul_(weights * (1.0 / nv) if not constant_blend else 1.0 / nv)
            elif constant_blend:
                yw.copy_(y)
            else:
                torch.mul(y, weights, out=yw)  # never writes into the backend's output
            y = yw
            for i, (n, r, c) in enumerate(chunk):
                if n != state["n"] or r != state["r"]:
                    start_row(n, r)
                x0 = xs[c]
                band[:, :, x0:x0 + tw] += y[i]
            if bar is not None:
                bar.update(nb)
        flush(state["n"], ys[state["r"]], th)
    if bar is not None:
        bar.close()
    return out if batched else out[0]


# ----------------------------------------------------------------------------
# Post-processing and the high-level segmenter
# ----------------------------------------------------------------------------
class Segmentation(NamedTuple):
    """Result of :meth:`TiledSegmenter.segment` for one image of H x W pixels.

    prob: float32 (3, H, W) ndarray: channels 0-1 segmentation softmax
        (background, gland), channel 2 boundary probability.
    mask: bool (H, W): gland pixels (``prob[1] > threshold``).
    instances: int32 (H, W): gland instances 1..n, 0 background.
    """

    prob: np.ndarray
    mask: np.ndarray
    instances: np.ndarray


def postprocess(prob, threshold: float = 0.5, boundary_threshold: float = 0.5, split: bool = True,
                min_size: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Mask and instances from a (3, H, W) probability map.

    mask = ``prob[1] > threshold``. Instances: connected components of the
    mask (8-connected), or with ``split=True`` the mask minus the predicted
    boundary (``prob[2] > boundary_threshold``) labelled 4-connected and grown
    back over the mask (:func:`semimoe.metrics.split_instances`), so that
    touching glands separated by a predicted boundary get distinct labels.
    ``min_size``: mask components smaller than this are removed first (from
    the mask too), and split cores smaller than this merge into their
    nearest neighbour.

    Returns ``(mask bool (H, W), instances int32 (H, W))``.
    """
    from .metrics import label_components, split_instances

    p = prob.detach().float().cpu().numpy() if isinstance(prob, Tensor) else np.asarray(prob, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"prob must be (C >= 2, H, W), got {p.shape}")
    mask = p[1] > threshold
    if min_size > 0:  # drop small specks from the mask itself first
        mask = label_components(mask, min_size=min_size) > 0
    if split and p.shape[0] >= 3:
        inst = split_instances(mask, p[2] > boundary_threshold, min_size=min_size)
    else:
        inst = label_components(mask, min_size=min_size)
    return mask, inst.astype(np.int32, copy=False)


class TiledSegmenter:
    """A deployed Semi-MoE predictor with its normalisation and tiling.

    Args:
        backend: callable x (b, 3, th, tw) float32 -> (b, 3, th, tw)
            probabilities: a :mod:`semimoe.deploy` backend, a predictor
            ``nn.Module`` (wrapped in :class:`semimoe.deploy.TorchBackend`), or
            any function.
        mean, std: the dataset normalisation (3 values each, images in [0, 1]).
        tiling: :class:`TilingConfig`.

    ``segment(image)`` takes a uint8 RGB (H, W, 3) ndarray/tensor of any size.
    """

    def __init__(self, backend, mean: Sequence[float], std: Sequence[float],
                 tiling: Optional[TilingConfig] = None):
        if isinstance(backend, torch.nn.Module):
            from .deploy.backends import TorchBackend

            backend = TorchBackend(backend)
        self.backend = backend
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.tiling = tiling or TilingConfig(tile=getattr(backend, "tile", None) or 256)

    @classmethod
    def from_file(cls, path, backend: str = "auto", device=None, tiling: Optional[TilingConfig] = None,
                  **backend_kwargs) -> "TiledSegmenter":
        """Load a checkpoint (``.pt``), ONNX file, AOTInductor package
        (``.pt2``) or TensorRT engine (``.engine``/``.plan``) with
        :func:`semimoe.deploy.load_backend`."""
        from .deploy.backends import load_backend

        be, meta = load_backend(path, backend=backend, device=device, **backend_kwargs)
        norm = meta.get("norm") or {}
        if "mean" not in norm or "std" not in norm:
            raise ValueError(f"{path}: no normalisation ('norm': mean/std) in its metadata")
        if tiling is None:
            tiling = TilingConfig(tile=getattr(be, "tile", None) or 256)
        return cls(be, norm["mean"], norm["std"], tiling)

    def predict_proba(self, image, progress: Optional[bool] = None) -> Tensor:
        """float (3, H, W) probabilities (``tiling.out_dtype``) for a uint8
        (H, W, 3) image (or (N, 3, H, W) for (N, H, W, 3))."""
        return sliding_window(self.backend, image, mean=self.mean, std=self.std, progress=progress,
                              **self.tiling.kwargs())

    def segment(self, image, threshold: float = 0.5, boundary_threshold: float = 0.5, split: bool = True,
                min_size: int = 0, progress: Optional[bool] = None) -> Segmentation:
        """Probabilities, mask and instances of one uint8 (H, W, 3) image."""
        prob = self.predict_proba(image, progress=progress)
        p = prob.float().cpu().numpy()
        mask, inst = postprocess(p, threshold, boundary_threshold, split, min_size)
        return Segmentation(p, mask, inst)

    __call__ = segment
