"""Scale end to end (docs/METHOD.md §6): a model trained on a folder dataset
with ``data.size`` below the images' size records its training scale, and
``semimoe.evaluate``, ``semimoe.infer``, the ONNX model and the AOTInductor
package all run it at that scale and give the same prediction; the Dice of
``semimoe.infer``'s masks equals the Dice ``semimoe.evaluate`` reports."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semimoe.config import make_config
from semimoe.data import make_sample
from semimoe.data.io import read_image
from semimoe.evaluate import main as evaluate_main
from semimoe.infer import main as infer_main
from semimoe.inference import Predictor, TilingConfig
from semimoe.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIDE, FACTOR = 64, 2            # glands drawn on 64 px, stored at 2x: 128 px images
SOURCE_MPP = 0.25               # declared pixel size of the stored images


def _write_folder(root: Path, split: str, n: int, tag: int) -> None:
    (root / split / "image").mkdir(parents=True)
    (root / split / "mask").mkdir(parents=True)
    for i in range(n):
        img, lab = make_sample([tag, i], (SIDE, SIDE))
        Image.fromarray(img).resize((SIDE * FACTOR,) * 2, Image.BILINEAR).save(root / split / "image" / f"{i}.png")
        big = np.repeat(np.repeat(lab.astype(np.uint16), FACTOR, 0), FACTOR, 1)
        Image.fromarray(big).save(root / split / "mask" / f"{i}.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    root = tmp / "data"
    _write_folder(root, "train", 12, 1)
    _write_folder(root, "test", 3, 2)
    cfg = make_config("cpu-demo", overrides=[
        "data.kind=folder", f"data.root={root}", f"data.size={SIDE}", f"data.source_mpp={SOURCE_MPP}",
        "data.label_ratio=0.5", "data.val_ratio=0.25", "model.base_width=4", "model.depth=3", "train.crop=0",
        "train.batch_labeled=2", "train.batch_unlabeled=2", "train.iterations=30", "train.val_every=10",
        "optim.lr=0.01", "optim.warmup=3", "train.overlays=0", "train.progress=false", "train.threads=1",
        f"run_dir={tmp / 'run'}"])
    res = train(cfg, log=lambda *a, **k: None)
    return {"tmp": tmp, "root": root, "ckpt": Path(res["run_dir"]) / "best.pt", "results": res}


def _pooled_dice(pred_dir: Path, gt_dir: Path) -> float:
    tp = fp = fn = 0
    for g in sorted(gt_dir.glob("*.png")):
        p = np.asarray(Image.open(pred_dir / f"{g.stem}_mask.png")) > 0
        t = np.asarray(Image.open(g)) > 0
        tp, fp, fn = tp + np.sum(p & t), fp + np.sum(p & ~t), fn + np.sum(~p & t)
    return 2 * tp / (2 * tp + fp + fn)


def test_checkpoint_records_the_training_scale(run):
    ck = torch.load(run["ckpt"], weights_only=True)
    # median shorter side 128 -> data.size 64: the model trains at 2 x 0.25 µm/px
    assert ck["scale"] == {"mpp": SOURCE_MPP * FACTOR, "source_mpp": SOURCE_MPP, "source_mpp_assumed": False}
    assert len(ck["norm"]["mean"]) == 3


def test_evaluate_and_infer_report_the_same_prediction(run):
    tmp, root = run["tmp"], run["root"]
    assert evaluate_main(["--model", str(run["ckpt"]), "--data", "folder", "--root", str(root),
                          "--out", str(tmp / "ev"), "--overlays", "0"]) == 0
    ev = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert ev["mpp"] == SOURCE_MPP and ev["model_mpp"] == SOURCE_MPP * FACTOR
    assert infer_main(["--model", str(run["ckpt"]), "--input", str(root / "test" / "image"),
                       "--output", str(tmp / "inf"), "--quiet", "--save-npy"]) == 0
    d_infer = _pooled_dice(tmp / "inf", root / "test" / "mask")
    assert d_infer == pytest.approx(ev["dice_pooled"], abs=1e-12)
    # ...and the training run's own final test evaluation is that number too
    assert run["results"]["test"]["dice_pooled"] == pytest.approx(ev["dice_pooled"], abs=1e-12)
    assert 0.3 < d_infer  # a model that learnt something: the comparison is not between empty masks
    # the model saw the images at half their size
    seen = []
    pr = Predictor.from_file(run["ckpt"])
    inner = pr.runtime

    def recording(x):
        seen.append(tuple(x.shape[-2:]))
        return inner(x)

    recording.size_multiple, recording.device = inner.size_multiple, inner.device
    pr.runtime = recording
    img = read_image(root / "test" / "image" / "0.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = pr.probabilities(img).numpy()
    assert img.shape[:2] == (128, 128) and set(seen) == {(256, 256)}  # one tile of 256 around the 64x64 image
    npy = np.load(tmp / "inf" / "0_prob.npy").astype(np.float32)
    assert np.abs(p - npy).max() <= 1e-3  # float16 file


@pytest.mark.parametrize("fmt", ["onnx", "aoti"])
def test_exported_models_run_at_the_training_scale(run, fmt):
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "torch")
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxscript")
    from semimoe.export import main as export_main

    tmp, root = run["tmp"], run["root"]
    out = tmp / f"model.{'onnx' if fmt == 'onnx' else 'pt2'}"
    tile = 64
    assert export_main(["--checkpoint", str(run["ckpt"]), "--format", fmt, "--output", str(out),
                        "--tile", str(tile), "--max-batch", "8"]) == 0
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["scale"]["mpp"] == SOURCE_MPP * FACTOR and meta["scale"]["source_mpp"] == SOURCE_MPP
    tiling = TilingConfig(tile=tile)
    ref = Predictor.from_file(run["ckpt"], tiling=tiling)
    exp = Predictor.from_file(out, tiling=tiling)
    assert exp.spec == ref.spec
    for f in sorted((root / "test" / "image").glob("*.png")):
        img = read_image(f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, b = ref.probabilities(img), exp.probabilities(img)
        assert a.shape == (3, 128, 128) and float((a - b).abs().max()) <= 1e-4
    # the CLI with the exported model (AOTInductor: its own 64 px tile by
    # default; ONNX is dynamic, so the tile is given): the checkpoint's masks
    assert infer_main(["--model", str(out), "--input", str(root / "test" / "image"), "--output",
                       str(tmp / f"inf_{fmt}"), "--quiet", *(["--tile", str(tile)] if fmt == "onnx" else [])]) == 0
    assert infer_main(["--model", str(run["ckpt"]), "--input", str(root / "test" / "image"), "--output",
                       str(tmp / f"inf_{fmt}_ref"), "--tile", str(tile), "--quiet"]) == 0
    for g in sorted((root / "test" / "mask").glob("*.png")):
        m1 = np.asarray(Image.open(tmp / f"inf_{fmt}" / f"{g.stem}_mask.png"))
        m2 = np.asarray(Image.open(tmp / f"inf_{fmt}_ref" / f"{g.stem}_mask.png"))
        assert np.mean(m1 != m2) < 1e-3
