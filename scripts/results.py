"""Regenerate docs/RESULTS.md: supervised-only vs Semi-MoE (reference behaviour)
vs Semi-MoE with semimoe's options, on the synthetic benchmark.

    python scripts/results.py                       # 10 % labels, 300 iterations, seed 0
    python scripts/results.py --label-ratios 0.1,0.05 --threads 1
    python scripts/results.py --reuse               # rebuild the report from finished runs

Every variant is the ``cpu-demo`` preset (same model size, data, crops,
optimiser, schedule, iterations and seed) with these differences:

    supervised   train.method=supervised (labeled images only), per-image gate
    reference    per-image gate, raw pseudo-labels (the released code's method)
    ours         per-pixel gate, pseudo-labels refined with sdf_agree+confidence

Each run is a separate ``python -m semimoe.train`` process with its own run
folder (``<out>/labels<ratio>/<variant>``); best.pt is selected on the
validation split (carved from the training images); the test split is the
held-out synthetic test set (other seeds), evaluated once at the end. Nothing
is tuned on it. The report adds the learning curves (validation Dice during
training) and an evaluation on the unlabeled training images, whose masks
the synthetic generator knows but training never sees: a 4-5x larger
evaluation set, and the quality of the pseudo-labels each run trains on.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "supervised": ("Supervised only (labeled images, no unsupervised term)",
                   ["train.method=supervised", "model.gate=image", "train.refine=null"]),
    "reference": ("Semi-MoE, reference behaviour (per-image gate, raw pseudo-labels)",
                  ["train.method=semimoe", "model.gate=image", "train.refine=null"]),
    "ours": ("Semi-MoE, semimoe options (spatial gate, sdf_agree+confidence refine)",
             ["train.method=semimoe", "model.gate=spatial", "train.refine=sdf_agree+confidence"]),
}
COLS = [("dice_pooled", "{:.4f}"), ("iou_pooled", "{:.4f}"), ("object_f1", "{:.4f}"),
        ("object_dice", "{:.4f}"), ("object_hausdorff", "{:.2f}")]
HEAD = "| variant | Dice | IoU | obj F1 | obj Dice | obj Hausdorff |"
NOTE_MARKER = "<!-- discussion: written by hand, kept when scripts/results.py regenerates this file -->"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _common(args, ratio: float):
    return [f"train.iterations={args.iterations}", f"train.seed={args.seed}", f"data.label_ratio={ratio}",
            f"data.synthetic_train={args.n_train}", f"data.synthetic_test={args.n_test}",
            "train.overlays=0", "train.eval_test=true", "train.time_limit=0", "train.progress=false"]


def run_variant(name: str, run_dir: Path, args, common) -> dict:
    cmd = [sys.executable, "-m", "semimoe.train", "--preset", "cpu-demo", "--run-dir", str(run_dir),
           "--overwrite", *common, *VARIANTS[name][1], f"train.threads={args.threads}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    (run_dir / "results_wall.json").write_text(json.dumps({"wall_seconds": wall,
                                                          "load_after": os.getloadavg()}))
    return load_run(run_dir)


def load_run(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    wall = run_dir / "results_wall.json"
    res["wall_seconds"] = json.loads(wall.read_text())["wall_seconds"] if wall.exists() else \
        res.get("total_seconds", float("nan"))
    res["curve"] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val_dice"):
                res["curve"][int(row["step"])] = float(row["val_dice"])
    # runs logged before the final validation went to metrics.csv: when
    # best.pt is the last model, the final validation Dice is its score
    it, b = res.get("iterations"), res.get("best", {})
    if it and it not in res["curve"] and b.get("step") == it and "dice" in str(b.get("metric")):
        res["curve"][it] = float(b["score"])
    return res


def unlabeled_eval(run_dir: Path) -> dict:
    """best.pt on the unlabeled training images (masks known to the generator,
    never used in training): metrics of the gate's prediction, of the
    segmentation expert alone, and of the refined pseudo-labels."""
    import torch

    from semimoe.config import config_from_dict
    from semimoe.data.datasets import GlandDataset, build_datasets, build_split_set, build_test_dataset
    from semimoe.evaluate import evaluate
    from semimoe.inference import Predictor
    from semimoe.losses import make_pseudo_labels

    predictor = Predictor.from_file(run_dir / "best.pt")
    model = predictor.runtime.module.model
    cfg = config_from_dict({"data": dict(predictor.meta["data_config"], augment=False)}).data
    _, unl, val = build_datasets(cfg, str(run_dir))
    out = {"gate": evaluate(predictor, build_split_set(cfg, str(run_dir), "unlabeled"), per_image=True)}
    # images where the prediction collapses (per-image Dice < 0.7), per set
    out["collapsed"] = {"unlabeled": sum(r["dice"] < 0.7 for r in out["gate"].pop("per_image"))}
    for name, d in (("val", val), ("test", build_test_dataset(cfg))):
        out["collapsed"][name] = sum(r["dice"] < 0.7 for r in evaluate(predictor, d, per_image=True)["per_image"])
    ds = GlandDataset(unl.pool, unl.indices, unl.mean, unl.std, with_mask=True)  # the training-scale view
    out["collapsed_n"] = {"unlabeled": len(ds), "val": len(val), "test": int(cfg.synthetic_test)}
    c = dict(etp=0, efp=0, efn=0, ktp=0, kfp=0, kfn=0, kept=0, n=0)
    with torch.no_grad():
        for i in range(0, len(ds), 8):
            items = [ds[j] for j in range(i, min(i + 8, len(ds)))]
            x = torch.stack([b["image"] for b in items])
            g = torch.stack([b["mask"] for b in items]) > 0
            o = model(x)
            e = o.experts["seg"].argmax(1) > 0
            c["etp"] += int((e & g).sum()); c["efp"] += int((e & ~g).sum()); c["efn"] += int((~e & g).sum())
            pl = make_pseudo_labels(o.seg, o.sdf, o.bnd, refine="sdf_agree+confidence")
            p, k = pl.mask > 0, pl.weight > 0.5
            c["ktp"] += int((p & g & k).sum()); c["kfp"] += int((p & ~g & k).sum())
            c["kfn"] += int((~p & g & k).sum()); c["kept"] += int(k.sum()); c["n"] += k.numel()

    def dice(tp, fp, fn):
        return 2 * tp / max(1, 2 * tp + fp + fn)

    out["seg_expert_dice"] = dice(c["etp"], c["efp"], c["efn"])
    out["refined_dice"] = dice(c["ktp"], c["kfp"], c["kfn"])
    out["refined_kept"] = c["kept"] / max(1, c["n"])
    out["n_images"] = len(ds)
    return out


def _cells(r) -> str:
    return " | ".join(f.format(r[k]) if isinstance(r.get(k), (int, float)) else "-" for k, f in COLS)


def section(ratio: float, results: dict, unl: dict, args) -> list:
    sup = results.get("supervised")
    any_r = next(iter(results.values()))
    lines = [f"## {ratio:.0%} labels", ""]
    r0 = any_r
    lines.append(f"Split: {r0.get('n_labeled', '?')} labeled / {r0.get('n_unlabeled', '?')} unlabeled / "
                 f"{r0['val']['n_images']} validation training images; {r0['test']['n_images']} test images.")
    lines += ["", "### Validation split (selects best.pt)", "", HEAD + " best iter | wall time |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {VARIANTS[name][0]} | {_cells(r['val'])} | {r['best']['step']} | "
                     f"{r['wall_seconds'] / 60:.1f} min |")
    lines += ["", "### Held-out test split", "", HEAD, "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {VARIANTS[name][0]} | {_cells(r['test'])} |")
    if unl:
        n = next(iter(unl.values()))["n_images"]
        lines += ["", f"### Unlabeled training images ({n} images; masks never seen in training)", "",
                  HEAD + " seg expert alone: Dice | refined pseudo-labels: Dice (kept pixels) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, u in unl.items():
            lines.append(f"| {VARIANTS[name][0]} | {_cells(u['gate'])} | {u['seg_expert_dice']:.4f} | "
                         f"{u['refined_dice']:.4f} ({u['refined_kept']:.0%}) |")
    if unl:
        lines += ["", "### Images whose prediction collapses (per-image Dice < 0.7)", "",
                  "| variant | validation | test | unlabeled training images |", "|---|---|---|---|"]
        for name, u in unl.items():
            c, n = u["collapsed"], u["collapsed_n"]
            lines.append(f"| {VARIANTS[name][0]} | " + " | ".join(
                f"{c[k]} / {n[k]}" for k in ("val", "test", "unlabeled")) + " |")
    steps = sorted({s for r in results.values() for s in r["curve"]})
    lines += ["", "### Learning curves: validation Dice during training", "",
              "| variant | " + " | ".join(f"iter {s}" for s in steps) + " |",
              "|---|" + "---|" * len(steps)]
    for name, r in results.items():
        lines.append(f"| {VARIANTS[name][0]} | " + " | ".join(
            f"{r['curve'][s]:.4f}" if s in r["curve"] else "-" for s in steps) + " |")
    if sup is not None:
        lines += ["", "### Semi-MoE minus supervised only (Dice points)", ""]
        for name in ("reference", "ours"):
            if name not in results:
                continue
            r = results[name]
            parts = [f"{100 * (r['val']['dice_pooled'] - sup['val']['dice_pooled']):+.2f} validation",
                     f"{100 * (r['test']['dice_pooled'] - sup['test']['dice_pooled']):+.2f} test"]
            if name in unl and "supervised" in unl:
                parts.append(f"{100 * (unl[name]['gate']['dice_pooled'] - unl['supervised']['gate']['dice_pooled']):+.2f}"
                             " unlabeled training images")
            lines.append(f"* {VARIANTS[name][0]}: " + ", ".join(parts) + ".")
    lines.append("")
    return lines


def write_markdown(path: Path, by_ratio: dict, unl_by_ratio: dict, args) -> None:
    import torch

    lines = [
        "# Results on the synthetic gland benchmark",
        "",
        "Every number below was measured by `scripts/results.py` (this file is its output; "
        f"generated {datetime.date.today().isoformat()}).",
        "",
        "## Setting",
        "",
        f"* Data: synthetic H&E-like glands (`semimoe.data.synthetic`), {args.n_train} training images "
        "of 256x256, split by the data module into validation (15 %), labeled and unlabeled images; "
        f"test: {args.n_test} held-out synthetic images drawn from other seeds.",
        "* Model and training: the `cpu-demo` preset -- three 16-32-64-128 U-Net experts, 128x128 random "
        "crops, batch 4 labeled + 4 unlabeled, AdamW (lr 3e-3, wd 1e-4, linear warm-up over 30 "
        "iterations, x0.5 after iteration 230), reference adaptive multi-objective loss, unsupervised "
        f"weight ramp to 0.5 -- **{args.iterations} iterations, seed {args.seed}, identical for every "
        "row** except what the row names. The supervised-only baseline trains the same model with the "
        "same supervised losses on the labeled images only.",
        "* Selection and metrics: best.pt is chosen on the validation split by pooled pixel Dice at "
        "the fixed threshold 0.5 (never on test data); metrics come from `semimoe.evaluate` (`ours` "
        "protocol): pooled pixel Dice and IoU, GlaS object F1, object Dice and object Hausdorff "
        "(pixels, per-image means, instances = connected components).",
        f"* Machine: {os.cpu_count()}-core CPU ({_cpu_name()}), torch {torch.__version__}, "
        f"{args.threads} thread(s) per run, one run at a time, on a machine shared with other jobs "
        "(wall times are upper bounds).",
        "* Command: `python scripts/results.py " + " ".join(sys.argv[1:]) + "`; each run is "
        "`python -m semimoe.train --preset cpu-demo " + " ".join(_common(args, 0.1)).replace(
            "data.label_ratio=0.1", "data.label_ratio=<ratio>") + " <variant>` with <variant> = "
        + "; ".join(f"{k}: `{' '.join(v[1])}`" for k, v in VARIANTS.items()) + ".",
        "",
    ]
    for ratio, results in by_ratio.items():
        lines += section(ratio, results, unl_by_ratio.get(ratio, {}), args)
    # the hand-written discussion below the marker survives regeneration
    old = path.read_text() if path.exists() else ""
    note = old.split(NOTE_MARKER, 1)[1].strip() if NOTE_MARKER in old else ""
    lines += [NOTE_MARKER, "", note, ""]
    path.write_text("\n".join(lines).rstrip() + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--label-ratios", default="0.1", help="comma-separated, e.g. 0.1,0.05")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1 is robust on a shared 2-core machine)")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--variants", default="supervised,reference,ours")
    p.add_argument("--out", default=str(ROOT / "runs" / "results"))
    p.add_argument("--md", default=str(ROOT / "docs" / "RESULTS.md"))
    p.add_argument("--reuse", action="store_true", help="reuse finished runs (results.json) in --out")
    p.add_argument("--no-unlabeled-eval", action="store_true")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    by_ratio, unl_by_ratio = {}, {}
    for ratio in (float(r) for r in args.label_ratios.split(",")):
        common = _common(args, ratio)
        results, unl = {}, {}
        for name in args.variants.split(","):
            run_dir = Path(args.out) / f"labels{ratio:g}" / name
            if args.reuse and (run_dir / "results.json").exists():
                results[name] = load_run(run_dir)
            else:
                results[name] = run_variant(name, run_dir, args, common)
            split = json.loads((run_dir / "split.json").read_text())
            results[name]["n_labeled"] = len(split["labeled"])
            results[name]["n_unlabeled"] = len(split["unlabeled"])
            if not args.no_unlabeled_eval:
                unl[name] = unlabeled_eval(run_dir)
        by_ratio[ratio], unl_by_ratio[ratio] = results, unl
    write_markdown(Path(args.md), by_ratio, unl_by_ratio, args)
    print(Path(args.md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
