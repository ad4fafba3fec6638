"""``python -m semimoe.wsi``: whole-slide gland segmentation.

    python -m semimoe.wsi SLIDE [SLIDE ...] --model CKPT|ONNX|PT2|ENGINE --output DIR \\
        [--mpp X] [--backend torch|onnxruntime|aoti|tensorrt] [--tissue auto|none|MASK.png] [--batch N]

Each slide gets ``DIR/NAME.prob.tif``, ``NAME.glands.geojson``,
``NAME.overlay.png`` and ``NAME.summary.json`` (:mod:`semimoe.wsi.pipeline`).
A slide that fails (unreadable, unknown pixel size) is reported and the next
one runs; the exit status is then 1. Under ``torchrun`` the slides are
shared out over the ranks (slide i goes to rank i mod world size), each rank
on its own GPU when there are GPUs.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import SemimoeError, UsageError, check_range, describe, run_cli

__all__ = ["main", "build_parser", "shard"]


def build_parser() -> argparse.ArgumentParser:
    from ..deploy.runtimes import RUNTIMES

    ap = argparse.ArgumentParser(prog="python -m semimoe.wsi", description="Whole-slide gland segmentation.")
    ap.add_argument("slides", nargs="+", metavar="SLIDE",
                    help="slides (SVS, NDPI, MRXS, pyramidal TIFF, OME-TIFF, ...) or plain images")
    ap.add_argument("--model", required=True, help="checkpoint (.pt), ONNX (.onnx), AOTInductor (.pt2) or "
                    "TensorRT engine")
    ap.add_argument("--output", required=True, help="output directory (created)")
    ap.add_argument("--mpp", type=float, default=None,
                    help="µm per level-0 pixel, for slides whose files do not say (overrides the file's value, "
                    "with a warning, when they disagree)")
    ap.add_argument("--backend", "--runtime", dest="backend", default="auto", choices=("auto",) + RUNTIMES)
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default cpu; under torchrun the "
                    "rank's GPU)")
    ap.add_argument("--tissue", default="auto", help="auto (detect on a thumbnail), none (every tile), or a mask "
                    "image covering the slide")
    ap.add_argument("--batch", type=int, default=8, help="tiles per model call (default 8)")
    ap.add_argument("--tile", type=int, default=512, help="tile size at the model's scale (default 512)")
    ap.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    ap.add_argument("--workers", type=int, default=2, help="reader threads (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of torch / onnxruntime "
                    "(default: theirs)")
    ap.add_argument("--threshold", type=float, default=0.5, help="gland probability threshold (default 0.5)")
    ap.add_argument("--boundary-threshold", type=float, default=0.5)
    ap.add_argument("--no-split", action="store_true", help="instances = connected components (no boundary split)")
    ap.add_argument("--min-area", type=float, default=0.0, help="drop glands smaller than this (µm²)")
    ap.add_argument("--tta", choices=("none", "hflip", "flip"), default="none")
    ap.add_argument("--ort-run-batch", type=int, default=1, help="onnxruntime on the CPU: tiles per session run "
                    "(default 1; 0: the whole --batch). Its memory arena keeps the peak of the largest run, and "
                    "CPU convolutions gain nothing from bigger runs")
    ap.add_argument("--trust-model", action="store_true", help="trust a native-code model file (.pt2, engine)")
    ap.add_argument("--overwrite", action="store_true", help="redo slides that are done or half done")
    ap.add_argument("--quiet", action="store_true")
    return ap


def _check(args) -> None:
    check_range("--batch", args.batch, lo=1)
    check_range("--tile", args.tile, lo=16)
    check_range("--workers", args.workers, lo=1)
    check_range("--ort-run-batch", args.ort_run_batch, lo=0)
    if args.threads is not None:
        check_range("--threads", args.threads, lo=1)
    check_range("--overlap", args.overlap, lo=0, hi=1, hi_open=True)
    check_range("--threshold", args.threshold, lo=0, hi=1)
    check_range("--boundary-threshold", args.boundary_threshold, lo=0, hi=1)
    check_range("--min-area", args.min_area, lo=0)
    if args.mpp is not None:
        check_range("--mpp", args.mpp, lo=0, lo_open=True)
    if args.tissue not in ("auto", "none") and not Path(args.tissue).is_file():
        raise UsageError(f"--tissue must be auto, none or a mask image; {args.tissue} is not a file")
    from .pipeline import slide_name

    names = [slide_name(Path(p)) for p in args.slides]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"slides with the same name would write the same outputs: {', '.join(twice)}; "
                         "run them into different --output folders")
    if args.tissue not in ("auto", "none") and len(args.slides) > 1:
        raise UsageError("--tissue MASK applies to one slide; give one slide, or use auto")


def shard(items: Sequence, rank: int, world: int) -> List:
    """Item i goes to rank i mod world."""
    return [x for i, x in enumerate(items) if i % world == rank]


def _rank_world() -> tuple:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _device(args, rank: int, world: int) -> Optional[str]:
    if args.device is not None:
        from ..utils import resolve_device

        return str(resolve_device(args.device))
    if world > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; user errors become one ``error:`` line and exit status 2."""
    return run_cli(_main, argv)


def _main(argv: Sequence[str]) -> int:
    from ..inference import Predictor
    from .pipeline import WSIConfig, run_slide

    args = build_parser().parse_args(argv)
    _check(args)
    rank, world = _rank_world()
    log = (lambda *a, **k: None) if args.quiet else (lambda m: print(f"[rank {rank}] {m}" if world > 1 else m))
    slides = shard(args.slides, rank, world)
    kwargs = {}
    ort = args.backend == "onnxruntime" or (args.backend == "auto" and str(args.model).endswith(".onnx"))
    if ort:
        kwargs["max_batch"] = args.ort_run_batch or None
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        if ort:
            kwargs["threads"] = args.threads
    predictor = Predictor.from_file(args.model, runtime=args.backend, device=_device(args, rank, world),
                                    trust=args.trust_model, **kwargs)
    cfg = WSIConfig(tile=args.tile, overlap=args.overlap, batch=args.batch, workers=args.workers,
                    tissue=args.tissue, threshold=args.threshold, boundary_threshold=args.boundary_threshold,
                    split=not args.no_split, min_size_um2=args.min_area, tta=None if args.tta == "none" else args.tta)
    model_id = _model_id(args.model)
    failed = []
    for s in slides:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                run_slide(predictor, s, args.output, cfg, mpp=args.mpp, model_id=model_id, overwrite=args.overwrite,
                          log=log)
        except (SemimoeError, OSError) as exc:
            print(f"warning: slide {s} failed: {describe(exc)}", file=sys.stderr)
            failed.append(s)
    if failed:
        print(f"warning: {len(failed)} of {len(slides)} slide(s) failed", file=sys.stderr)
        return 1
    return 0


def _model_id(path) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{int(st.st_mtime)}"


if __name__ == "__main__":
    sys.exit(main())
