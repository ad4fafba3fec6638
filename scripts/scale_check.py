"""Does ``semimoe.infer`` see the scale the model was trained at?

Builds a folder dataset whose images are synthetic glands drawn at ``--factor``
times the synthetic generator's scale (bilinear upsampling of the image,
pixel replication of the instance mask), so a model trained with
``data.size=256`` on these 512x512 images sees the glands at the generator's
native scale, and deployment on the same 512x512 images must resample them.

    python scripts/scale_check.py make --out /tmp/scale2x             # the folder dataset
    python -m semimoe.train data.kind=folder data.root=/tmp/scale2x data.size=256 --run-dir /tmp/scale_run
    python -m semimoe.infer --model /tmp/scale_run/best.pt --input /tmp/scale2x/test/image --output /tmp/scale_out
    python scripts/scale_check.py dice --pred /tmp/scale_out --gt /tmp/scale2x/test/mask

``dice`` reads ``<name>_mask.png`` / ``<name>_instances.png`` written by
``semimoe.infer`` and prints the pooled pixel Dice and the mean number of
predicted and true glands per image. It uses only NumPy and Pillow, so the
same commands measure any version of semimoe.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def make(out: Path, n_train: int, n_test: int, factor: int, side: int) -> None:
    from semimoe.data.synthetic import make_sample

    for split, n, tag in (("train", n_train, 0xA11CE), ("test", n_test, 0xB0B)):
        (out / split / "image").mkdir(parents=True, exist_ok=True)
        (out / split / "mask").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lab = make_sample([tag, i], (side, side))
            big = Image.fromarray(img).resize((side * factor, side * factor), Image.BILINEAR)
            big.save(out / split / "image" / f"{split}_{i:03d}.png")
            m = np.repeat(np.repeat(lab.astype(np.uint16), factor, 0), factor, 1)
            Image.fromarray(m).save(out / split / "mask" / f"{split}_{i:03d}.png")
    print(f"wrote {n_train} train and {n_test} test images of {side * factor}x{side * factor} px "
          f"(glands at {factor}x the synthetic scale) to {out}")


def dice(pred: Path, gt: Path) -> float:
    tp = fp = fn = 0
    n_pred, n_gt, n = 0, 0, 0
    for g in sorted(gt.iterdir()):
        if g.suffix.lower() != ".png":
            continue
        m = pred / f"{g.stem}_mask.png"
        if not m.exists():
            sys.exit(f"missing prediction {m}")
        p = np.asarray(Image.open(m)) > 0
        t = np.asarray(Image.open(g)) > 0
        tp += int((p & t).sum())
        fp += int((p & ~t).sum())
        fn += int((~p & t).sum())
        inst = pred / f"{g.stem}_instances.png"
        if inst.exists():
            n_pred += len(np.unique(np.asarray(Image.open(inst)))) - 1
        n_gt += len(np.unique(np.asarray(Image.open(g)))) - 1
        n += 1
    d = 2 * tp / max(1, 2 * tp + fp + fn)
    print(f"{n} images: pooled Dice {d:.4f}; glands per image: predicted {n_pred / n:.1f}, true {n_gt / n:.1f}")
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("make", help="write the folder dataset")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--train", type=int, default=200)
    a.add_argument("--test", type=int, default=40)
    a.add_argument("--factor", type=int, default=2)
    a.add_argument("--side", type=int, default=256, help="side of the synthetic draw before upsampling")
    b = sub.add_parser("dice", help="pooled Dice of semimoe.infer's masks against the ground truth")
    b.add_argument("--pred", type=Path, required=True)
    b.add_argument("--gt", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "make":
        make(args.out, args.train, args.test, args.factor, args.side)
    else:
        dice(args.pred, args.gt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
