"""One slide, end to end: reader -> canvas -> tissue -> streamed inference
-> instances -> outputs.

:func:`run_slide` writes, in ``out_dir``, for a slide ``NAME``:

* ``NAME.prob.tif``: pyramidal tiled TIFF of the gland probability
  (uint8, ``round(255 p)``) at the model's µm/px, with resolution tags;
* ``NAME.glands.geojson``: one QuPath detection per gland, polygons in the
  slide's level-0 pixel coordinates (the frame of OpenSlide's
  ``read_region``; with bounds, *not* shifted to the bounds' corner);
* ``NAME.overlay.png``: a thumbnail with glands and the tissue outline;
* ``NAME.summary.json``: what was done, counted and timed.

Working files (``NAME.work/``: the probability raster, the resume state)
stay until the slide is finished; an interrupted slide resumes from them.
A finished slide is skipped unless its settings changed or ``overwrite``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..errors import UsageError
from ..utils import Progress, atomic_write, atomic_write_json
from .engine import ResumeState, stream_canvas, stripes
from .instances import InstanceConfig, Instances, iter_glands
from .plan import Canvas, make_canvas, tile_grid
from .raster import DiskRaster
from .reader import Slide, open_slide

__all__ = ["WSIConfig", "run_slide", "slide_name"]


@dataclasses.dataclass(frozen=True)
class WSIConfig:
    """Settings of whole-slide inference (lengths in canvas pixels, i.e. at the model's µm/px)."""

    tile: int = 512
    overlap: float = 0.25
    batch: int = 8
    workers: int = 2
    tissue: str = "auto"               # auto | none | path to a mask image
    threshold: float = 0.5
    boundary_threshold: float = 0.5
    split: bool = True
    min_size_um2: float = 0.0
    sigma_scale: float = 0.125
    tta: Optional[str] = None
    max_band_width: int = 16384
    block: int = 2048
    margin_um: float = 300.0
    thumbnail_mpp: float = 8.0
    overlay_size: int = 2048

    def key(self, slide: Slide, model_id: str) -> str:
        """Names the settings, slide and model a result belongs to."""
        st = slide.path.stat()
        blob = json.dumps([dataclasses.asdict(self), str(slide.path.resolve()), st.st_size, int(st.st_mtime),
                           slide.mpp, model_id], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def slide_name(path: Path) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _thumbnail(slide: Slide, mpp: float) -> np.ndarray:
    """uint8 RGB of the region of interest at ``mpp`` µm/px, read in pieces (bounded memory)."""
    c = make_canvas(slide, max(mpp, slide.mpp))
    H, W = c.shape
    out = np.empty((H, W, 3), np.uint8)
    step = max(16, int(1024 / max(c.scale)))  # about 1024 level pixels a side per piece
    for y in range(0, H, step):
        for x in range(0, W, step):
            out[y:y + step, x:x + step] = c.read(y, x, min(step, H - y), min(step, W - x))
    return out


def _tissue(cfg: WSIConfig, thumb: np.ndarray, mpp: float) -> Optional[np.ndarray]:
    from .tissue import detect_tissue, load_tissue_mask

    if cfg.tissue == "none":
        return None
    if cfg.tissue == "auto":
        return detect_tissue(thumb, mpp)
    return load_tissue_mask(cfg.tissue, thumb.shape[:2])


def _activity(tissue: Optional[np.ndarray], canvas_shape, ys, xs, tile: int):
    """active(r, c): tile (r, c) overlaps tissue (thumbnail pixels, with one pixel of margin)."""
    if tissue is None:
        return lambda r, c: True
    th, tw = tissue.shape
    H, W = canvas_shape
    fy, fx = th / H, tw / W

    def active(r: int, c: int) -> bool:
        y0, x0 = ys[r], xs[c]
        a, b = max(int(y0 * fy) - 1, 0), min(int(np.ceil((y0 + tile) * fy)) + 1, th)
        d, e = max(int(x0 * fx) - 1, 0), min(int(np.ceil((x0 + tile) * fx)) + 1, tw)
        return bool(tissue[a:b, d:e].any())
    return active


def _resized_window(mask: np.ndarray, shape, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows [y0, y1) and columns [x0, x1) of ``mask`` resized (nearest) to ``shape`` (H, W)."""
    (h, w), (H, W) = mask.shape, shape
    ry = np.minimum((np.arange(y0, y1) * h) // H, h - 1)
    rx = np.minimum((np.arange(x0, x1) * w) // W, w - 1)
    return mask[np.ix_(ry, rx)]


def _region(tissue: Optional[np.ndarray], canvas_shape):
    """region(y0, y1, x0, x1): the tissue mask at canvas pixels (nearest). The detector's mask
    already reaches about one thumbnail pixel into the glass."""
    if tissue is None:
        return None
    return lambda y0, y1, x0, x1: _resized_window(tissue, canvas_shape, y0, y1, x0, x1)


def _prob_thumbnail(raster: DiskRaster, shape) -> np.ndarray:
    """Nearest-sampled gland probability at a thumbnail's ``shape`` (reads one row per thumbnail row)."""
    H, W = raster.shape
    h, w = shape
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    return np.stack([raster.read(0, int(r), int(r) + 1)[0, cols] for r in rows]) if h else np.zeros((0, w), np.uint8)


def _write_glands(path: Path, raster: DiskRaster, canvas: Canvas, cfg: WSIConfig, log) -> Instances:
    from .outputs import GeoJSONWriter, gland_feature

    icfg = InstanceConfig(cfg.threshold, cfg.boundary_threshold, cfg.split,
                          int(round(cfg.min_size_um2 / canvas.mpp ** 2)), cfg.block,
                          max(64, int(np.ceil(cfg.margin_um / canvas.mpp))))
    stats = Instances()
    H, W = canvas.shape
    nblocks = (-(-H // icfg.block)) * (-(-W // icfg.block))
    bar = Progress(nblocks, "glands", unit="blocks") if log else None
    with GeoJSONWriter(path) as gw:
        for crop, prob, origin in iter_glands(raster, icfg, stats, on_block=(bar.update if bar else None)):
            f = gland_feature(crop, prob, origin, canvas.to_level0, canvas.mpp)
            if f is not None:
                gw.add(f)
    if bar:
        bar.close()
    return stats


def _overlay_base(slide, canvas, thumb, tissue, cfg):
    """The slide at the overlay's scale (about ``cfg.overlay_size`` px on the long side) and the tissue mask at it."""
    long_um = max(canvas.shape) * canvas.mpp
    mpp = max(long_um / cfg.overlay_size, canvas.mpp)
    big = thumb if mpp >= cfg.thumbnail_mpp else _thumbnail(slide, mpp)
    if tissue is None or tissue.shape == big.shape[:2]:
        return big, tissue
    H, W = big.shape[:2]
    return big, _resized_window(tissue, (H, W), 0, H, 0, W)


def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def run_slide(predictor, slide_path, out_dir, cfg: WSIConfig = WSIConfig(), *, mpp: Optional[float] = None,
              model_id: str = "", overwrite: bool = False, log=print) -> Dict[str, Any]:
    """Segment one slide with ``predictor`` (:class:`semimoe.inference.Predictor`);
    see the module doc for the outputs. Returns the summary."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_slide(slide_path, mpp) as slide:
        name = slide_name(slide.path)
        key = cfg.key(slide, model_id)
        summary_path = out_dir / f"{name}.summary.json"
        if not overwrite and summary_path.exists():
            try:
                old = json.loads(summary_path.read_text())
            except ValueError:
                old = {}
            if old.get("key") == key:
                log(f"{slide.path}: done before with these settings ({summary_path}); skipped")
                return old
        return _run(predictor, slide, out_dir, name, key, cfg, log, t_start, overwrite)


def _tile_size(predictor, cfg: WSIConfig) -> int:
    mult = int(getattr(predictor.runtime, "size_multiple", 1) or 1)
    fixed = getattr(predictor.runtime, "tile", None)
    if fixed is not None:
        if fixed[0] != fixed[1]:
            raise UsageError(f"this model was built for {fixed[0]}x{fixed[1]} tiles; whole-slide inference "
                             "needs square tiles")
        return int(fixed[0])
    return -(-int(cfg.tile) // mult) * mult


def _run(predictor, slide: Slide, out_dir: Path, name: str, key: str, cfg: WSIConfig, log, t_start,
         overwrite: bool) -> Dict[str, Any]:
    spec = predictor.spec
    canvas = make_canvas(slide, spec.mpp)
    tile = _tile_size(predictor, cfg)
    mult = int(getattr(predictor.runtime, "size_multiple", 1) or 1)
    ys, xs = tile_grid(canvas.shape, tile, cfg.overlap, mult)
    work = out_dir / f"{name}.work"
    if overwrite and work.exists():
        shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    thumb_mpp = max(cfg.thumbnail_mpp, slide.mpp)
    thumb = _thumbnail(slide, thumb_mpp)
    tissue = _tissue(cfg, thumb, thumb_mpp)
    t_tissue = time.perf_counter() - t0
    log(f"{slide.path}: {slide.kind}, {slide.mpp:.4g} µm/px ({slide.mpp_source}); level {canvas.level} "
        f"({slide.level_mpp(canvas.level):.4g} µm/px) -> {canvas.shape[1]}x{canvas.shape[0]} px at "
        f"{canvas.mpp:.4g} µm/px; {len(ys) * len(xs)} tiles of {tile} px")
    raster = DiskRaster(work / "prob.u8", canvas.shape, 2)
    state = ResumeState(work / "state.json", key)
    if raster.fresh and state.resumed:  # the raster was lost: start again
        state.reset()
    if state.resumed:
        log(f"{slide.path}: resuming (stripe {state.stripe}, {state.rows} rows done)")
    active = _activity(tissue, canvas.shape, ys, xs, tile)
    jobs = sum(len(ys) * len(st.cols) for st in stripes(xs, canvas.shape[1], tile, cfg.max_band_width))
    bar = Progress(jobs, name, unit="tiles") if log else None
    try:
        stats = stream_canvas(canvas, predictor.runtime, raster, state, ys=ys, xs=xs, tile=tile, active=active,
                              mean=spec.mean, std=spec.std, batch=cfg.batch, workers=cfg.workers,
                              max_band_width=cfg.max_band_width, sigma_scale=cfg.sigma_scale, tta=cfg.tta,
                              on_tiles=bar.update if bar else None, region=_region(tissue, canvas.shape))
    finally:
        if bar:
            bar.close()
    return _finish(slide, canvas, raster, tissue, thumb, thumb_mpp, stats, cfg, out_dir, name, key, work,
                   t_tissue, t_start, log)


def _finish(slide, canvas, raster, tissue, thumb, thumb_mpp, stats, cfg, out_dir, name, key, work, t_tissue,
            t_start, log) -> Dict[str, Any]:
    from PIL import Image

    from .outputs import overlay_thumbnail, write_pyramid_tiff

    t0 = time.perf_counter()
    glands = _write_glands(out_dir / f"{name}.glands.geojson", raster, canvas, cfg, log)
    t_glands = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_pyramid_tiff(out_dir / f"{name}.prob.tif", lambda a, b: raster.read(0, a, b), canvas.shape, canvas.mpp,
                       description=f"semimoe gland probability x255, {canvas.mpp:.6g} um/px")
    t_tiff = time.perf_counter() - t0
    big, tis = _overlay_base(slide, canvas, thumb, tissue, cfg)
    ov = overlay_thumbnail(big, _prob_thumbnail(raster, big.shape[:2]), tis)
    atomic_write(out_dir / f"{name}.overlay.png", lambda f: Image.fromarray(ov).save(f, format="PNG"))
    raster.close()
    total = time.perf_counter() - t_start
    summary = _summary(slide, canvas, tissue, thumb_mpp, stats, glands, cfg, key,
                       {"tissue": t_tissue, "inference": stats.seconds, "glands": t_glands, "tiff": t_tiff,
                        "total": total})
    atomic_write_json(out_dir / f"{name}.summary.json", summary)
    shutil.rmtree(work, ignore_errors=True)
    log(f"{slide.path}: {glands.count} glands, {stats.tiles_run} tiles run ({stats.tiles_skipped} without tissue "
        f"skipped) in {total:.1f} s -> {out_dir}/{name}.*")
    return summary


def _summary(slide, canvas, tissue, thumb_mpp, stats, glands, cfg, key, seconds) -> Dict[str, Any]:
    tissue_mm2 = None if tissue is None else float(tissue.sum()) * (thumb_mpp / 1000.0) ** 2
    run = max(stats.tiles_run, 1)
    return {
        "key": key, "slide": str(slide.path), "reader": slide.kind, "mpp": slide.mpp,
        "mpp_source": slide.mpp_source, "bounds": list(slide.bounds),
        "level_dimensions": [list(d) for d in slide.level_dimensions], **canvas.describe(),
        "tissue_mode": cfg.tissue, "tissue_area_mm2": tissue_mm2,
        "glands": glands.count, "glands_cut_at_view_edge": glands.cut,
        "gland_area_mm2": glands.area_px * (canvas.mpp / 1000.0) ** 2,
        "tiles_total": stats.tiles_total, "tiles_run": stats.tiles_run, "tiles_skipped": stats.tiles_skipped,
        "tiles_resumed": stats.tiles_resumed,
        "tiles_repeated_at_stripe_edges": stats.tiles_repeated,
        "tiles_per_s": stats.tiles_run / max(stats.seconds, 1e-9),
        "seconds_per_tile": stats.seconds / run, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
        "settings": dataclasses.asdict(cfg),
        "coordinates": "GeoJSON in level-0 pixels of the slide (OpenSlide read_region frame)",
    }
