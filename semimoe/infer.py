"""Segment image files with a trained or exported Semi-MoE.

    python -m semimoe.infer --model best.pt    --input images/ --output out/
    python -m semimoe.infer --model best.onnx  --input img.png --output out/ --mpp 0.25
    python -m semimoe.infer --model best.pt2   --input images/ --output out/ --runtime aoti

Every image (PNG, JPEG, TIFF, BMP; any size) goes through the deployed
prediction path, :class:`semimoe.inference.Predictor`: resampled to the scale
the model was trained at (``--mpp`` gives the images' pixel size in µm;
without it the training images' pixel size is assumed, and said once), tiled,
blended, and brought back to the image's own resolution. In ``--output``:

* ``<name>_mask.png``       gland mask, 8-bit, 0 / 255;
* ``<name>_prob.png``       gland probability, 8-bit, round(255 p);
* ``<name>_boundary.png``   boundary probability, 8-bit;
* ``<name>_instances.png``  gland instances, 16-bit labels (0 background);
* ``<name>_overlay.png``    the image with glands tinted and instance outlines;
* ``<name>_prob.npy``       (``--save-npy``) float16 (3, H, W) probabilities.

Files that cannot be read are skipped with a warning; the exit status is then
1 (0 when every image was written, 2 for usage errors).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .data.io import read_image
from .errors import DataError, UsageError, check_range, describe, run_cli

__all__ = ["main", "read_image", "write_outputs", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def write_outputs(out_dir: Path, name: str, image: np.ndarray, seg, save_npy: bool = False) -> List[Path]:
    """Write the PNGs (and optionally the .npy) of one :class:`~semimoe.inference.Segmentation`.

    All or nothing: every file is written under a temporary name first and
    renamed only when all of them are written, so a failure (too many
    instances for a 16-bit PNG, a full disk) leaves no partial outputs.
    """
    from PIL import Image

    from .visualize import tint

    prob = seg.prob
    inst = seg.instances
    if inst.max() > 65535:
        raise ValueError(f"{inst.max()} instances do not fit a 16-bit PNG")
    to8 = lambda a: np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)  # noqa: E731
    arrays = [("mask.png", seg.mask.astype(np.uint8) * 255), ("prob.png", to8(prob[1]))]
    if prob.shape[0] > 2:
        arrays.append(("boundary.png", to8(prob[2])))
    arrays += [("instances.png", inst.astype(np.uint16)), ("overlay.png", tint(image, seg.mask, inst))]
    if save_npy:
        arrays.append(("prob.npy", prob.astype(np.float16)))
    done: List[Tuple[Path, Path]] = []
    try:
        for suffix, arr in arrays:
            final = out_dir / f"{name}_{suffix}"
            tmp = out_dir / f".{final.name}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                if suffix.endswith(".npy"):
                    np.save(f, arr)
                else:
                    Image.fromarray(arr).save(f, format="PNG")
            done.append((tmp, final))
    except BaseException:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        (out_dir / f".{name}_{arrays[len(done)][0]}.tmp{os.getpid()}").unlink(missing_ok=True)
        raise
    for tmp, final in done:
        os.replace(tmp, final)
    return [final for _, final in done]


def _list_inputs(inp: Path) -> Tuple[List[Path], List[Path]]:
    """(candidate image files, other files ignored) of a file or directory."""
    if inp.is_file():
        return [inp], []
    files = sorted(p for p in inp.iterdir() if p.is_file())
    imgs = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    return imgs, [p for p in files if p not in imgs]


def build_parser() -> argparse.ArgumentParser:
    from .deploy.runtimes import RUNTIMES

    ap = argparse.ArgumentParser(
        prog="python -m semimoe.infer",
        description="Tiled gland segmentation of image files with a Semi-MoE checkpoint or exported model.")
    ap.add_argument("--model", required=True,
                    help="checkpoint (.pt), ONNX file (.onnx), AOTInductor package (.pt2) or TensorRT engine (.engine)")
    ap.add_argument("--input", required=True, help="an image file or a directory of images")
    ap.add_argument("--output", required=True, help="output directory (created)")
    ap.add_argument("--mpp", type=float, default=None,
                    help="pixel size of the images in µm (default: the training images' pixel size)")
    ap.add_argument("--runtime", "--backend", dest="runtime", default="auto", choices=("auto",) + RUNTIMES,
                    help="runtime (default: from the model file's suffix)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cpu; cuda for tensorrt)")
    ap.add_argument("--tile", type=int, nargs="+", default=None, metavar="N",
                    help="tile size H [W] at the model's scale (default: the exported model's tile, else 256)")
    ap.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    ap.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian")
    ap.add_argument("--sigma-scale", type=float, default=0.125, help="Gaussian sigma / tile size (default 0.125)")
    ap.add_argument("--batch-size", type=int, default=8, help="tiles per model call (default 8)")
    ap.add_argument("--tta", choices=("none", "hflip", "flip"), default="none",
                    help="flip test-time augmentation (flip: 4 flips, hflip: 2)")
    ap.add_argument("--threshold", type=float, default=0.5, help="gland probability threshold (default 0.5)")
    ap.add_argument("--boundary-threshold", type=float, default=0.5)
    ap.add_argument("--no-split", action="store_true",
                    help="instances = connected components, without boundary-based splitting")
    ap.add_argument("--min-size", type=int, default=0, help="drop instances smaller than this (pixels)")
    ap.add_argument("--compile", action="store_true", help="torch runtime: torch.compile the model")
    ap.add_argument("--trust-model", action="store_true",
                    help="run a .pt2 / .engine file not exported on this machine (they hold native code)")
    ap.add_argument("--save-npy", action="store_true", help="also write float16 probabilities (.npy)")
    ap.add_argument("--quiet", action="store_true")
    return ap


def _check_args(args) -> None:
    for name in ("threshold", "boundary_threshold"):
        check_range(f"--{name.replace('_', '-')}", getattr(args, name), 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("--overlap", args.overlap, 0.0, 1.0, hi_open=True)
    check_range("--sigma-scale", args.sigma_scale, lo=0.0, lo_open=True)
    check_range("--batch-size", args.batch_size, lo=1)
    check_range("--min-size", args.min_size, lo=0)
    if args.mpp is not None:
        check_range("--mpp (the images' pixel size in µm)", args.mpp, lo=0.0, lo_open=True)
    if args.tile is not None:
        if len(args.tile) not in (1, 2):
            raise UsageError("--tile takes one or two sizes")
        for t in args.tile:
            check_range("--tile", t, lo=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; user errors become one ``error:`` line and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    log = (lambda *a, **k: None) if args.quiet else print
    inp = Path(args.input)
    if not inp.exists():
        raise UsageError(f"--input {inp} does not exist")
    images, others = _list_inputs(inp)
    for p in others:
        log(f"ignoring {p.name} (not an image suffix: {', '.join(IMAGE_SUFFIXES)})")
    if not images:
        raise UsageError(f"--input {inp} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    predictor = _predictor(args)
    spec = predictor.spec
    log(f"model: {spec.describe()}; input pixel size "
        + (f"{args.mpp} µm (--mpp)" if args.mpp is not None else
           f"not given (--mpp): assuming the training images' {spec.source_mpp:.4g} µm")
        + f"; images resampled by {predictor.factor(args.mpp):.4g}")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    failed = _segment_files(predictor, images, out_dir, args, log)
    t = predictor.tiling.tile
    log(f"wrote {len(images) - len(failed)} of {len(images)} images to {out_dir} "
        f"({time.perf_counter() - t_all:.1f}s, runtime {getattr(predictor.runtime, 'name', '?')}, tile "
        f"{t[0]}x{t[1]} at {spec.mpp:.4g} µm/px, overlap {args.overlap}, {args.blend})")
    if failed:
        print(f"warning: {len(failed)} file(s) skipped: {', '.join(p.name for p in failed)}", file=sys.stderr)
        return 1
    return 0


def _predictor(args):
    """The Predictor of ``--model`` with the tiling the options ask for."""
    from .inference import Predictor, TilingConfig
    from .utils import resolve_device

    kwargs = {"compile": True} if args.compile else {}
    device = resolve_device(args.device) if args.device is not None else None
    predictor = Predictor.from_file(args.model, runtime=args.runtime, device=device, trust=args.trust_model,
                                    **kwargs)
    tile = (args.tile[0], args.tile[-1]) if args.tile else predictor.tiling.tile  # default: the runtime's
    return predictor.set_tiling(TilingConfig(tile=tile, overlap=args.overlap, blend=args.blend,
                                             sigma_scale=args.sigma_scale, batch_size=args.batch_size,
                                             tta=None if args.tta == "none" else args.tta))


def _segment_files(predictor, images: List[Path], out_dir: Path, args, log) -> List[Path]:
    """Segment and write every image; returns the files that were skipped."""
    used, failed = set(), []
    for p in images:
        try:
            img = read_image(p)
        except DataError as exc:  # skip unreadable files, report at the end
            print(f"warning: skipping {p}: {exc}", file=sys.stderr)
            failed.append(p)
            continue
        name = p.stem if p.stem not in used else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        used.add(name)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # the assumed pixel size is said once, by the caller
                warnings.simplefilter("ignore", UserWarning)
                res = predictor.segment(img, mpp=args.mpp, threshold=args.threshold,
                                        boundary_threshold=args.boundary_threshold, split=not args.no_split,
                                        min_size=args.min_size)
            write_outputs(out_dir, name, img, res, save_npy=args.save_npy)
        except (ValueError, OSError) as exc:
            print(f"warning: skipping {p}: {describe(exc)}", file=sys.stderr)
            failed.append(p)
            continue
        log(f"{p.name}: {img.shape[1]}x{img.shape[0]}, {int(res.instances.max())} glands, "
            f"{res.mask.mean() * 100:.1f}% gland, {time.perf_counter() - t0:.2f}s")
    return failed


if __name__ == "__main__":
    sys.exit(main())
