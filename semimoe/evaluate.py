"""``python -m semimoe.evaluate``: gland segmentation metrics and overlays.

Two reporting protocols:

``ours`` (default)
    The deployed prediction: every image goes through the
    :class:`~semimoe.inference.Predictor` that ``semimoe.infer`` and the
    exported models run (resampled to the model's training scale, tiled,
    blended, probabilities brought back to the image's native resolution,
    instances from :func:`~semimoe.inference.postprocess`), with a fixed
    threshold. Metrics at each image's native resolution: pixel Dice/IoU
    pooled over the set (TP/FP/FN summed) and per-image mean, GlaS object F1
    (counts summed over images), object Dice and object Hausdorff (per-image
    mean; Hausdorff is ``inf`` for an image where exactly one of prediction
    and ground truth is empty, so ``object_hausdorff_defined_mean`` and the
    count of such images are reported as well). Scores come from
    :func:`semimoe.metrics.image_stats` and :func:`semimoe.metrics.summarize`.
    On image-level-labelled data (``weak``, ``synthetic-weak``) the command
    adds IKD-MIL's scores from the same counts
    (:func:`semimoe.metrics.weak_scores`): Dice and IoU pooled over the
    positive images, background F1 pooled over the negative ones.

``reference``
    The released code's reporting, kept to reproduce its numbers and clearly
    labelled optimistic: every image (and mask, nearest) squashed to 256x256
    whatever its aspect ratio and scale, pixel Dice/IoU pooled over the set,
    the threshold swept over ``0.00, 0.02, ..., 0.88`` (foreground if
    ``p > t``) and the one with the best pooled IoU reported -- i.e. the
    threshold is selected on the evaluated set itself.

Overlays are written by :func:`semimoe.visualize.write_overlays`.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .data.augment import resize_mask
from .inference import Predictor, TilingConfig, postprocess, sliding_window
from .errors import DataError, UsageError, check_range, run_cli
from .metrics import dice_from_counts, image_stats, iou_from_counts, summarize, weak_scores

__all__ = ["evaluate", "format_table", "REFERENCE_LABEL", "OURS_LABEL", "REFERENCE_THRESHOLDS", "main"]

REFERENCE_LABEL = "reference (256x256 squash, threshold selected on the evaluated set: optimistic)"
OURS_LABEL = "ours (the deployed predictor: training scale, tiled, native resolution, fixed threshold)"
REFERENCE_SIZE = 256
# np.arange(0, 0.9, 0.02) of the released code, as exact decimals
REFERENCE_THRESHOLDS = tuple(round(0.02 * i, 2) for i in range(45))


def _batches(dataset, batch_size: int, num_workers: int):
    """Consecutive samples grouped into lists of at most ``batch_size`` same-size images."""
    if num_workers > 0:
        items = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                                            collate_fn=lambda s: s)
    else:
        items = (dataset[i] for i in range(len(dataset)))
    buf: list = []
    for s in items:
        if buf and (len(buf) == batch_size or np.shape(s.image) != np.shape(buf[0].image)):
            yield buf
            buf = []
        buf.append(s)
    if buf:
        yield buf


def evaluate(predictor: Predictor, dataset, protocol: str = "ours", threshold: float = 0.5,
             split_boundary: bool = False, batch_size: int = 4, *, min_size: int = 0, per_image: bool = False,
             num_workers: int = 0, threads: Optional[int] = None, hausdorff: bool = True) -> Dict:
    """Score a predictor on a dataset of :class:`~semimoe.data.Sample` s.

    Args:
        predictor: the :class:`~semimoe.inference.Predictor` to score.
        dataset: items ``(name, image uint8 (H, W, 3), mask int (H, W))``
            (an :class:`~semimoe.data.ImageSet`); ``dataset.mpp``, if
            present, is the pixel size of its images (else the training
            images' is assumed).
        protocol: ``"ours"`` or ``"reference"`` (module doc).
        threshold: foreground if ``p_gland > threshold`` (0.5 = argmax).
        split_boundary: split touching glands with the boundary head
            (``"ours"`` only), as ``semimoe.infer`` does by default.
        batch_size: images per predictor call (consecutive same-size images).
        min_size: predicted objects smaller than this (pixels) are removed.
        per_image: include ``"per_image"``: a list of per-image dicts (the
            scores, the pixel and object counts, n_pred, n_gt), from which
            :func:`semimoe.metrics.summarize` gives any subset's scores.
        num_workers: DataLoader workers reading the dataset.
        threads: CPU threads for the per-image object metrics (they overlap
            with the predictions); None: ``min(4, cpu_count)``.
        hausdorff: compute the object Hausdorff distance (it dominates the
            cost on noisy predictions); the ``object_hausdorff*`` keys are
            absent otherwise.

    Returns:
        dict. ``"ours"``: protocol, n_images, threshold, split_boundary,
        min_size, mpp, model_mpp, the keys of :func:`semimoe.metrics.summarize`,
        seconds, images_per_second. ``"reference"``: protocol
        (:data:`REFERENCE_LABEL`), n_images, size, threshold (the selected
        one), dice_pooled, iou_pooled (at it), fixed_threshold,
        dice_pooled_fixed, iou_pooled_fixed (at ``threshold``), sweep (list
        of {threshold, dice, iou}), seconds, images_per_second.
    """
    if protocol not in ("ours", "reference"):
        raise UsageError(f"protocol must be 'ours' or 'reference', got {protocol!r}")
    if len(dataset) == 0:
        raise DataError("evaluate: the dataset is empty")
    check_range("batch_size", batch_size, lo=1)
    check_range("threshold", threshold, 0.0, 1.0, lo_open=True, hi_open=True)
    if not isinstance(predictor, Predictor):
        raise TypeError(f"evaluate needs a semimoe.inference.Predictor, got {type(predictor).__name__}")
    t0 = time.perf_counter()
    if protocol == "reference":
        res = _evaluate_reference(predictor, dataset, threshold, batch_size, num_workers)
    else:
        res = _evaluate_ours(predictor, dataset, threshold, split_boundary, batch_size, min_size, per_image,
                             num_workers, threads, hausdorff)
    dt = time.perf_counter() - t0
    res["seconds"] = dt
    res["images_per_second"] = res["n_images"] / dt if dt > 0 else float("inf")
    return res


def _evaluate_ours(predictor, dataset, threshold, split_boundary, batch_size, min_size, per_image, num_workers,
                   threads, hausdorff) -> Dict:
    mpp = getattr(dataset, "mpp", None)
    n_threads = threads if threads is not None else max(1, min(4, os.cpu_count() or 1))

    def score(name, prob, gt):
        _, lab = postprocess(prob, threshold, 0.5, split_boundary, min_size)
        return image_stats(lab, gt, hausdorff, name=name)

    futures = []
    with ThreadPoolExecutor(n_threads) as pool:
        for batch in _batches(dataset, batch_size, num_workers):
            images = np.stack([np.asarray(s.image) for s in batch])
            prob = predictor.probabilities(images, mpp).cpu().numpy()
            for s, p in zip(batch, prob):
                gt = np.asarray(s.mask)
                if gt.shape != p.shape[1:]:
                    raise DataError(f"evaluate: mask of {s.name!r} is {gt.shape}, image is {p.shape[1:]}")
                futures.append(pool.submit(score, str(s.name), p, gt))
        stats = [f.result() for f in futures]
    res = {"protocol": OURS_LABEL, "n_images": len(stats), "threshold": float(threshold),
           "split_boundary": bool(split_boundary), "min_size": int(min_size),
           "mpp": mpp if mpp is not None else predictor.spec.source_mpp, "model_mpp": predictor.spec.mpp}
    res.update(summarize(stats, hausdorff))
    if per_image:
        # with the pixel and object counts, so that a subset's rows give its
        # pooled scores through summarize() (e.g. per tumour grade)
        keys = ["name", "dice", "iou", "object_f1", "object_dice"] + (["object_hausdorff"] if hausdorff else [])
        keys += ["tp", "fp", "fn", "obj_tp", "obj_fp", "obj_fn", "n_pred", "n_gt", "pixels"]
        res["per_image"] = [{k: s[k] for k in keys} for s in stats]
    return res


def _sweep(hist_pos: torch.Tensor, hist_neg: torch.Tensor) -> List[Dict[str, float]]:
    """Pooled Dice/IoU at each reference threshold from histograms of
    ``#(thresholds < p)`` over foreground / background pixels."""
    pos = hist_pos.double().cpu()
    neg = hist_neg.double().cpu()
    # predicted foreground at threshold k  <=>  #(thresholds < p) >= k + 1
    tp_k = pos.flip(0).cumsum(0).flip(0)[1:]
    fp_k = neg.flip(0).cumsum(0).flip(0)[1:]
    total = float(pos.sum())
    out = []
    for k, t in enumerate(REFERENCE_THRESHOLDS):
        tp, fp = float(tp_k[k]), float(fp_k[k])
        fn = total - tp
        out.append({"threshold": t, "dice": dice_from_counts(tp, fp, fn), "iou": iou_from_counts(tp, fp, fn)})
    return out


def _evaluate_reference(predictor, dataset, threshold, batch_size, num_workers) -> Dict:
    S = (REFERENCE_SIZE, REFERENCE_SIZE)
    thr = torch.tensor(REFERENCE_THRESHOLDS, dtype=torch.float64)
    nb = len(REFERENCE_THRESHOLDS) + 1
    hist_pos = torch.zeros(nb, dtype=torch.int64)
    hist_neg = torch.zeros(nb, dtype=torch.int64)
    fixed = torch.zeros(3, dtype=torch.int64)
    spec = predictor.spec
    n = 0
    for batch in _batches(dataset, batch_size, num_workers):
        # squash to 256x256 before batching: images of different sizes share a batch
        x = torch.cat([F.interpolate(torch.as_tensor(np.asarray(s.image)).permute(2, 0, 1)[None].float() / 255.0,
                                     size=S, mode="bilinear", align_corners=False, antialias=True)
                       for s in batch])
        gt = torch.stack([resize_mask(torch.as_tensor(np.asarray(s.mask)), S) for s in batch]) > 0
        p = sliding_window(predictor.runtime, x, tile=None, mean=spec.mean, std=spec.std)[:, 1].double().cpu()
        idx = torch.bucketize(p, thr)  # #(thresholds < p)
        hist_pos += torch.bincount(idx[gt], minlength=nb)
        hist_neg += torch.bincount(idx[~gt], minlength=nb)
        pf = p > threshold
        fixed += torch.stack([(pf & gt).sum(), (pf & ~gt).sum(), (~pf & gt).sum()])
        n += len(batch)
    sweep = _sweep(hist_pos, hist_neg)
    best = max(range(len(sweep)), key=lambda k: (sweep[k]["iou"], -k))  # first max, as argmax
    tp, fp, fn = (int(v) for v in fixed)
    return {
        "protocol": REFERENCE_LABEL,
        "n_images": n,
        "size": REFERENCE_SIZE,
        "threshold": sweep[best]["threshold"],
        "dice_pooled": sweep[best]["dice"],
        "iou_pooled": sweep[best]["iou"],
        "fixed_threshold": float(threshold),
        "dice_pooled_fixed": dice_from_counts(tp, fp, fn),
        "iou_pooled_fixed": iou_from_counts(tp, fp, fn),
        "sweep": sweep,
    }


def format_table(metrics: Dict, title: str = "") -> str:
    """Two-column text table of the scalar entries of ``metrics``."""
    rows = [(k, v) for k, v in metrics.items() if not isinstance(v, (list, dict))]
    w = max(len(k) for k, _ in rows)
    lines = [title] if title else []
    for k, v in rows:
        if isinstance(v, float):
            s = f"{v:.4f}" if math.isfinite(v) else str(v)
        else:
            s = str(v)
        lines.append(f"  {k:<{w}}  {s}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    from .data.datasets import KINDS
    from .deploy.runtimes import RUNTIMES

    p = argparse.ArgumentParser(prog="python -m semimoe.evaluate",
                                description="Evaluate a Semi-MoE checkpoint or exported model through the "
                                            "deployed predictor (metrics table, metrics.json, overlays).",
                                epilog="User errors end in one 'error:' line (exit 2); --debug shows their "
                                       "traceback.")
    p.add_argument("--model", "--checkpoint", dest="model", required=True,
                   help="checkpoint (e.g. run/best.pt), ONNX file, AOTInductor package or TensorRT engine")
    p.add_argument("--runtime", default="auto", choices=("auto",) + RUNTIMES,
                   help="runtime (default: from the model file's suffix)")
    p.add_argument("--data", choices=KINDS, default=None,
                   help="dataset kind (default: the checkpoint's, else synthetic)")
    p.add_argument("--root", default=None, help="dataset folder (glas/crag/folder)")
    p.add_argument("--split", default="test",
                   help="test | testA | testB (GlaS) | val | unlabeled (parts of the run's split) | "
                        "a folder name (folder layout)")
    p.add_argument("--mpp", type=float, default=None,
                   help="pixel size of the images in µm (default: the dataset's)")
    p.add_argument("--protocol", choices=("ours", "reference", "both"), default="ours")
    p.add_argument("--out", default=None, help="output folder (default: <model dir>/eval_<data>_<split>)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--split-boundary", action="store_true", help="split touching glands with the boundary head")
    p.add_argument("--min-size", type=int, default=0, help="drop predicted objects below this area (px)")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side at the model's scale (default: the exported model's tile, else 256)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    p.add_argument("--batch-size", type=int, default=4, help="images per predictor call")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--trust-model", action="store_true",
                   help="run a .pt2 / .engine file not exported on this machine (they hold native code)")
    p.add_argument("--overlays", type=int, default=8, help="number of overlay images (0: none)")
    p.add_argument("--synthetic-test", type=int, default=None, help="number of synthetic test images")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    return p


def _data_config(args, meta: dict):
    from .config import config_from_dict

    d = dict(meta.get("data_config") or {}) if isinstance(meta, dict) else {}
    if args.data is not None and args.data != d.get("kind"):
        d = {k: v for k, v in d.items() if k not in ("root", "mean", "std", "source_mpp")}
        d["kind"] = args.data
    d.setdefault("kind", "synthetic")
    if args.root is not None:
        d["root"] = args.root
    if args.synthetic_test is not None:
        d["synthetic_test"] = args.synthetic_test
    d["augment"] = False
    return config_from_dict({"data": d}).data


def _check_args(args) -> None:
    check_range("--threshold", args.threshold, 0.0, 1.0, lo_open=True, hi_open=True)
    check_range("--batch-size", args.batch_size, lo=1)
    check_range("--min-size", args.min_size, lo=0)
    check_range("--overlays", args.overlays, lo=0)
    check_range("--overlap", args.overlap, 0.0, 1.0, hi_open=True)
    check_range("--workers", args.workers, lo=0)
    if args.tile is not None:
        check_range("--tile", args.tile, lo=1)
    if args.mpp is not None:
        check_range("--mpp", args.mpp, lo=0.0, lo_open=True)


def main(argv=None) -> int:
    """The command line; user errors become one ``error:`` line and exit status 2."""
    return run_cli(_main, argv)


def _main(argv) -> int:
    import dataclasses

    from .data.datasets import WEAK_KINDS, build_split_set, build_test_dataset, image_labels
    from .utils import atomic_write, atomic_write_json, resolve_device

    args = _parser().parse_args(argv)
    _check_args(args)
    device = resolve_device(args.device, default="auto")
    predictor = Predictor.from_file(args.model, runtime=args.runtime, device=device, trust=args.trust_model)
    predictor.set_tiling(TilingConfig(tile=args.tile or predictor.tiling.tile, overlap=args.overlap))
    model = getattr(getattr(predictor.runtime, "module", None), "model", None)  # for the gate pictures
    cfg = _data_config(args, predictor.meta)
    model_dir = Path(args.model).resolve().parent
    if args.split in ("val", "unlabeled"):
        run_dir = model_dir if (model_dir / "split.json").exists() else None
        if run_dir is None:
            warnings.warn(f"no split.json next to {args.model}: the {args.split} split is "
                          f"recomputed from the seed ({cfg.seed})")
        dataset = build_split_set(cfg, run_dir, args.split)
    else:
        dataset = build_test_dataset(cfg, args.split)
    if args.mpp is not None:
        dataset.mpp = float(args.mpp)
    out = Path(args.out) if args.out else model_dir / f"eval_{cfg.kind}_{args.split}"
    out.mkdir(parents=True, exist_ok=True)

    results = {}
    for proto in (("ours", "reference") if args.protocol == "both" else (args.protocol,)):
        r = evaluate(predictor, dataset, protocol=proto, threshold=args.threshold,
                     split_boundary=args.split_boundary and proto == "ours", batch_size=args.batch_size,
                     min_size=args.min_size, per_image=proto == "ours", num_workers=args.workers)
        results[proto] = r
        if proto == "ours" and cfg.kind in WEAK_KINDS:  # IKD-MIL's scores from the same counts
            labels = image_labels(cfg, "train" if args.split in ("val", "unlabeled") else args.split)
            r.update(weak_scores(r["per_image"], [labels[row["name"]] for row in r["per_image"]]))
        print(format_table(r, f"{cfg.kind} {args.split}, {len(dataset)} images -- {r['protocol']}"))
        if proto == "ours":
            rows = r.pop("per_image")

            def write_csv(f, rows=rows):
                wr = csv.DictWriter(f, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)

            atomic_write(out / "per_image.csv", write_csv, binary=False)
    doc = {"model": str(args.model), "split": args.split, "data": dataclasses.asdict(cfg), "device": str(device),
           "input_spec": predictor.spec.to_meta()}
    doc.update(results[args.protocol] if args.protocol != "both" else results)
    atomic_write_json(out / "metrics.json", doc)
    paths = []
    if args.overlays > 0:
        from .visualize import write_overlays

        paths = write_overlays(predictor, dataset, out / "overlays", n=args.overlays, threshold=args.threshold,
                               split_boundary=args.split_boundary, min_size=args.min_size, model=model)
    print(f"wrote {out / 'metrics.json'}" + (f" and {len(paths)} overlay PNGs in {out / 'overlays'}"
                                            if paths else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
