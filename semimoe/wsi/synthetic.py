"""Synthetic whole slides for the demo, the tests and the benchmark.

A slide is white glass with a few tissue regions (random ellipses covering
about ``tissue`` of the area). Two kinds of content:

* ``"he"``: the H&E-like patches of :func:`semimoe.data.make_sample`, one
  per ``patch`` x ``patch`` cell whose centre lies in tissue -- what the
  demo model was trained on;
* ``"disks"``: flat pink tissue with dark purple elliptical glands at known
  places, many of them across any tile grid's seams -- for tests whose
  reference is the known mask.

Written as a pyramidal tiled TIFF (levels as top-level pages with
resolution tags, downsamples ``levels``), which OpenSlide reads as a generic
tiled TIFF, by rows of cells: memory holds one row of cells and the
downsampled levels.

    python -m semimoe.wsi.synthetic slide.tif --size 8192 8192 [--kind he] [--mpp 0.5]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["write_synthetic_slide", "tissue_layout", "disk_glands"]

GLASS = (243, 243, 241)


def tissue_layout(shape: Tuple[int, int], fraction: float, rng: np.random.Generator, step: int = 16) -> np.ndarray:
    """Coarse bool map (one value per ``step`` pixels) of tissue: random ellipses until ``fraction`` is covered."""
    h, w = -(-shape[0] // step), -(-shape[1] // step)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w), bool)
    for _ in range(64):
        if out.mean() >= fraction:
            break
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
        out |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def disk_glands(shape: Tuple[int, int], tissue: np.ndarray, step: int, rng: np.random.Generator,
                radius: Tuple[float, float] = (15, 45), count: int = 0) -> np.ndarray:
    """int32 label map of non-touching elliptical glands placed in tissue."""
    H, W = shape
    lab = np.zeros((H, W), np.int32)
    count = count or int(tissue.mean() * H * W / (9 * np.mean(radius) ** 2))
    n = 0
    for _ in range(count * 4):
        if n >= count:
            break
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        if not tissue[min(int(cy) // step, tissue.shape[0] - 1), min(int(cx) // step, tissue.shape[1] - 1)]:
            continue
        ry, rx = rng.uniform(*radius), rng.uniform(*radius)
        y0, y1 = max(int(cy - ry) - 1, 0), min(int(cy + ry) + 2, H)
        x0, x1 = max(int(cx - rx) - 1, 0), min(int(cx + rx) + 2, W)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        inside = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1
        grown = np.zeros((y1 - y0 + 6, x1 - x0 + 6), bool)  # keep 3 px of stroma between glands
        grown[3:-3, 3:-3] = inside
        grown = ndimage.binary_dilation(grown, iterations=3)
        ry0, rx0 = y0 - 3, x0 - 3
        gy0, gx0 = max(ry0, 0), max(rx0, 0)
        gy1, gx1 = min(ry0 + grown.shape[0], H), min(rx0 + grown.shape[1], W)
        if (lab[gy0:gy1, gx0:gx1][grown[gy0 - ry0:gy1 - ry0, gx0 - rx0:gx1 - rx0]] > 0).any():
            continue
        n += 1
        lab[y0:y1, x0:x1][inside] = n
    return lab


def _disks_rgb(lab: np.ndarray, tissue_px: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = np.empty(lab.shape + (3,), np.uint8)
    img[:] = GLASS
    img[tissue_px] = (232, 170, 200)
    img[lab > 0] = (110, 50, 140)
    noise = rng.integers(-4, 5, img.shape, dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _cell_rows(shape, kind, tissue, step, patch, seed, glands) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """(rgb rows, label rows or None) of the slide, ``patch`` rows at a time."""
    from ..data import make_sample

    H, W = shape
    rng = np.random.default_rng(seed)
    for y0 in range(0, H, patch):
        y1 = min(y0 + patch, H)
        t_px = tissue[np.arange(y0, y1) // step][:, np.arange(W) // step]
        if kind == "disks":
            yield _disks_rgb(glands[y0:y1], t_px, rng), glands[y0:y1]
            continue
        rgb = np.empty((y1 - y0, W, 3), np.uint8)
        rgb[:] = GLASS
        lab = np.zeros((y1 - y0, W), np.int32)
        for x0 in range(0, W, patch):
            x1 = min(x0 + patch, W)
            cy, cx = (y0 + y1) // 2 // step, (x0 + x1) // 2 // step
            if tissue[min(cy, tissue.shape[0] - 1), min(cx, tissue.shape[1] - 1)]:
                im, lb = make_sample((seed, y0, x0), (patch, patch))
                rgb[:, x0:x1] = im[:y1 - y0, :x1 - x0]
                lab[:, x0:x1] = lb[:y1 - y0, :x1 - x0]
        yield rgb, lab


def _downsample(rgb: np.ndarray, f: int) -> np.ndarray:
    h, w = rgb.shape[0] // f * f, rgb.shape[1] // f * f
    return rgb[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def write_synthetic_slide(path, size: Tuple[int, int] = (4096, 4096), mpp: float = 0.5, seed: int = 0,
                          kind: str = "he", tissue: float = 0.5, levels: Sequence[int] = (1, 4, 16),
                          patch: int = 512, tile: int = 256, return_labels: bool = False) -> Optional[np.ndarray]:
    """Write a synthetic slide (see the module doc) of ``size`` (H, W) at
    ``mpp`` µm/px to ``path``; ``return_labels``: also return the int32 gland
    labels of level 0 (held in memory: for small test slides)."""
    import tifffile

    if kind not in ("he", "disks"):
        raise ValueError(f"kind must be 'he' or 'disks', got {kind!r}")
    H, W = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    step = 16
    t = tissue_layout((H, W), tissue, rng, step)
    glands = disk_glands((H, W), np.repeat(np.repeat(t, step, 0), step, 1)[:H, :W], 1, rng) if kind == "disks" \
        else None
    lows = {f: [] for f in levels[1:]}
    labels = [] if return_labels else None
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    # BigTIFF always: TIAToolbox reads a generic pyramidal TIFF only as BigTIFF (else "MPP is None")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        def level0() -> Iterator[np.ndarray]:
            for rgb, lab in _cell_rows((H, W), kind, t, step, patch, seed, glands):
                if labels is not None:
                    labels.append(lab)
                for f in lows:
                    lows[f].append(_downsample(rgb, f))
                for y in range(0, rgb.shape[0], tile):
                    for x in range(0, W, tile):
                        blk = np.full((tile, tile, 3), 255, np.uint8)
                        part = rgb[y:y + tile, x:x + tile]
                        blk[:part.shape[0], :part.shape[1]] = part
                        yield blk
        res = (1e4 / mpp, 1e4 / mpp)
        kw = dict(photometric="rgb", compression="zlib", resolutionunit="CENTIMETER", tile=(tile, tile))
        assert patch % tile == 0, "patch must be a multiple of tile"
        tw.write(level0(), shape=(H, W, 3), dtype=np.uint8, resolution=res, **kw)
        for f, parts in lows.items():
            low = np.concatenate(parts, axis=0)
            tw.write(low, resolution=(res[0] / f, res[1] / f), subfiletype=1, **kw)
    tmp.replace(path)
    return np.concatenate(labels, axis=0) if labels is not None else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m semimoe.wsi.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("output", help="the slide to write (.tif)")
    ap.add_argument("--size", type=int, nargs=2, default=[8192, 8192], metavar=("H", "W"))
    ap.add_argument("--mpp", type=float, default=0.5, help="µm per pixel (default 0.5)")
    ap.add_argument("--kind", choices=("he", "disks"), default="he")
    ap.add_argument("--tissue", type=float, default=0.5, help="fraction of the slide with tissue (default 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    write_synthetic_slide(a.output, tuple(a.size), a.mpp, a.seed, a.kind, a.tissue)
    print(a.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
