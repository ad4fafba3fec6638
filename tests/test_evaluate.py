"""evaluate(): the deployed predictor on datasets, both protocols, against
brute-force computations; overlays; CLI."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import semimoe.evaluate as ev
from semimoe.data import InputSpec, Sample
from semimoe.data.synthetic import make_sample
from semimoe.evaluate import REFERENCE_THRESHOLDS, evaluate
from semimoe.inference import Predictor, TilingConfig
from semimoe.metrics import label_components
from semimoe.models import ModelConfig, build_model
from semimoe.visualize import write_overlays

from references import brute_object_counts  # tests/references.py

SPEC = InputSpec(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), mpp=0.5, source_mpp=0.5)


class StandIn:
    """A runtime that reads its answer from the normalised input (mean 0, std
    1: pixel / 255): channel 0 is the gland probability, channel 1 > 0.5 the
    boundary. Insists on sides that are multiples of 16 and records them."""

    size_multiple = 16
    device = torch.device("cpu")

    def __init__(self):
        self.shapes = []

    def __call__(self, x):
        H, W = x.shape[-2:]
        assert H % 16 == 0 and W % 16 == 0, (H, W)
        self.shapes.append((H, W))
        p = x[:, 0:1].clamp(1e-6, 1 - 1e-6)
        return torch.cat([1 - p, p, (x[:, 1:2] > 0.5).float()], 1)


def predictor(tile=None, spec=SPEC):
    return Predictor(StandIn(), spec, TilingConfig(tile=tile))


class ArrayDataset:
    """Samples whose uint8 image encodes the answer: ch0 = round(255 * gland
    probability), ch1 = 255 * boundary, ch2 = noise; mask = ground truth."""

    def __init__(self, probs, gts, bnds=None, mpp=0.5):
        self.items = []
        rng = np.random.default_rng(0)
        for k, (p, g) in enumerate(zip(probs, gts)):
            b = np.zeros_like(p) if bnds is None else bnds[k]
            img = np.stack([p, b, rng.random(p.shape)], -1)
            self.items.append(Sample(f"im{k}", np.round(img * 255).astype(np.uint8), g))
        self.mpp = mpp

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _gt(seed, size):
    _, lab = make_sample(seed, size)
    return lab


def _touch_border(lab):
    """Pixels of a gland that have a 4-neighbour in a different gland."""
    out = np.zeros(lab.shape, bool)
    for sl_a, sl_b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                       ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        a, b = lab[sl_a], lab[sl_b]
        t = (a > 0) & (b > 0) & (a != b)
        out[sl_a] |= t
        out[sl_b] |= t
    return out


SIZES = [(50, 70), (64, 64), (37, 64), (64, 64), (80, 45)]


def test_oracle_scores_one():
    # ground truth = connected components, prediction = the mask: everything perfect
    gts = [label_components(_gt(s, sz) > 0) for s, sz in enumerate(SIZES)]
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts)
    pr = predictor()
    r = evaluate(pr, ds, batch_size=3)
    assert r["n_images"] == len(SIZES)
    for k in ("dice_pooled", "iou_pooled", "dice_mean", "iou_mean", "object_f1", "object_dice"):
        assert r[k] == pytest.approx(1.0), k
    assert r["object_hausdorff"] == 0.0 and r["object_hausdorff_undefined"] == 0
    assert "ours" in r["protocol"] and r["mpp"] == 0.5 and r["model_mpp"] == 0.5
    # padding to multiples of 16 happened; outputs cropped back
    assert set(pr.runtime.shapes) >= {(64, 80), (48, 64), (80, 48)}


def test_split_boundary_separates_touching_glands():
    gts = [_gt(s, (256, 256)) for s in (0, 1, 3)]
    assert all(_touch_border(g).any() for g in gts)
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts,
                      bnds=[_touch_border(g).astype(np.float32) for g in gts])
    merged = evaluate(predictor(), ds)
    split = evaluate(predictor(), ds, split_boundary=True)
    assert merged["object_f1"] < 1.0
    assert split["object_f1"] == pytest.approx(1.0)
    assert split["dice_pooled"] == pytest.approx(1.0)  # splitting never changes the mask


def test_scores_equal_a_direct_computation():
    rng = np.random.default_rng(5)
    gts, preds = [], []
    for s, sz in enumerate(SIZES):
        g = _gt(100 + s, sz)
        p = ndimage.binary_erosion(g > 0, iterations=int(rng.integers(0, 3)))
        p[rng.integers(0, sz[0]):, : rng.integers(1, sz[1])] ^= rng.random() < 0.5
        if s == 2:
            p[:] = False  # an empty prediction: object Hausdorff undefined
        gts.append(g)
        preds.append(p)
    ds = ArrayDataset([p.astype(np.float32) for p in preds], gts)
    r = evaluate(predictor(), ds, batch_size=2, per_image=True, threads=2)
    tp = sum(int(np.sum(p & (g > 0))) for p, g in zip(preds, gts))
    fp = sum(int(np.sum(p & (g == 0))) for p, g in zip(preds, gts))
    fn = sum(int(np.sum(~p & (g > 0))) for p, g in zip(preds, gts))
    assert r["dice_pooled"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["iou_pooled"] == pytest.approx(tp / (tp + fp + fn))
    per = [2 * np.sum(p & (g > 0)) / max(1, np.sum(p) + np.sum(g > 0)) for p, g in zip(preds, gts)]
    assert r["dice_mean"] == pytest.approx(np.mean(per))
    labs = [ndimage.label(p, structure=np.ones((3, 3)))[0] for p in preds]  # 8-connected instances
    c = np.sum([brute_object_counts(lb, g) for lb, g in zip(labs, gts)], axis=0)
    assert r["object_f1"] == pytest.approx(2 * c[0] / (2 * c[0] + c[1] + c[2]))
    assert r["object_precision"] == pytest.approx(c[0] / (c[0] + c[1]))
    assert r["object_hausdorff"] == float("inf") and r["object_hausdorff_undefined"] == 1
    assert [d["name"] for d in r["per_image"]] == [f"im{k}" for k in range(len(SIZES))]
    assert [d["n_pred"] for d in r["per_image"]] == [int(lb.max()) for lb in labs]
    fast = evaluate(predictor(), ds, hausdorff=False)
    assert "object_hausdorff" not in fast and fast["object_dice"] == r["object_dice"]
    # min_size removes small predicted objects before every metric
    r2 = evaluate(predictor(), ds, min_size=40)
    big = [np.isin(lb, [i for i in np.unique(lb) if i and np.sum(lb == i) >= 40]) for lb in labs]
    tp2 = sum(int(np.sum(p & (g > 0))) for p, g in zip(big, gts))
    fp2 = sum(int(np.sum(p & (g == 0))) for p, g in zip(big, gts))
    assert r2["dice_pooled"] == pytest.approx(2 * tp2 / (2 * tp2 + fp2 + (tp + fn - tp2)))


def test_fixed_threshold():
    g = _gt(7, (64, 64))
    q = np.where(g > 0, 0.7, 0.3).astype(np.float32)
    ds = ArrayDataset([q], [g])
    assert evaluate(predictor(), ds, threshold=0.5)["dice_pooled"] == pytest.approx(1.0)
    assert evaluate(predictor(), ds, threshold=0.8)["dice_pooled"] == 0.0


def test_images_are_seen_at_the_training_scale_and_scored_at_their_own():
    # images at 0.5 µm/px, a model trained at 1.0 µm/px: the runtime sees them
    # at half size, the metrics are computed on the 64x64 masks
    gts = [label_components(_gt(s, (64, 64)) > 0) for s in range(3)]
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts, mpp=0.5)
    pr = predictor(spec=dataclasses.replace(SPEC, mpp=1.0))
    r = evaluate(pr, ds)
    assert set(pr.runtime.shapes) == {(32, 32)} and r["mpp"] == 0.5 and r["model_mpp"] == 1.0
    assert r["dice_pooled"] > 0.9
    pr.runtime.shapes.clear()
    ds.mpp = 1.0  # the same pixels declared twice as coarse: the model sees them as they are
    evaluate(pr, ds)
    assert set(pr.runtime.shapes) == {(64, 64)}


def test_reference_protocol():
    gts = [_gt(s, (256, 256)) for s in range(3)]
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts)
    r = evaluate(predictor(), ds, protocol="reference")
    assert r["protocol"] == ev.REFERENCE_LABEL and "optimistic" in r["protocol"]
    assert r["size"] == 256 and len(r["sweep"]) == 45
    assert r["dice_pooled"] == pytest.approx(1.0) and r["iou_pooled"] == pytest.approx(1.0)
    assert r["threshold"] == 0.02  # first best: at 0.00 every pixel is foreground
    assert r["dice_pooled_fixed"] == pytest.approx(1.0)


def test_reference_sweep_matches_brute_force():
    rng = np.random.default_rng(1)
    gts, qs = [], []
    for s, sz in enumerate([(256, 256), (300, 200), (128, 128)]):
        g = _gt(20 + s, sz)
        # continuous probabilities: (almost surely) no pixel on a threshold
        qs.append(np.clip(np.where(g > 0, 0.6, 0.25) + rng.normal(0, 0.2, sz), 1e-3, 0.999)
                  .astype(np.float32))
        gts.append(g)
    ds = ArrayDataset(qs, gts)
    r = evaluate(predictor(), ds, protocol="reference", batch_size=2)
    # brute force: resize like the protocol, then the released code's sweep
    import torch.nn.functional as F

    from semimoe.data.augment import resize_mask
    probs, trues = [], []
    for q, g in zip(qs, gts):
        x = torch.from_numpy(np.round(q * 255).astype(np.float32) / 255)[None, None]  # the uint8 image
        x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
        probs.append(x.clamp(1e-6, 1 - 1e-6).flatten().numpy())
        trues.append((resize_mask(torch.from_numpy(g), (256, 256)) > 0).flatten().numpy())
    p = np.concatenate(probs).astype(np.float64)
    t = np.concatenate(trues)
    best = None
    for k, thr in enumerate(np.arange(0, 0.9, 0.02)):
        y = p > thr
        tp = np.sum(y & t)
        union = np.sum(y ^ t)
        iou, dice = tp / (union + tp), 2 * tp / (union + 2 * tp)
        assert r["sweep"][k]["iou"] == pytest.approx(iou, abs=1e-5)
        assert r["sweep"][k]["dice"] == pytest.approx(dice, abs=1e-5)
        if best is None or iou > best[1]:
            best = (k, iou, dice)
    assert r["threshold"] == REFERENCE_THRESHOLDS[best[0]]
    assert r["dice_pooled"] == pytest.approx(best[2], abs=1e-5)


def test_bad_arguments():
    ds = ArrayDataset([np.zeros((16, 16), np.float32)], [np.zeros((16, 16), np.int32)])
    with pytest.raises(ValueError, match="protocol"):
        evaluate(predictor(), ds, protocol="paper")
    with pytest.raises(ValueError, match="empty"):
        evaluate(predictor(), ArrayDataset([], []))
    with pytest.raises(TypeError, match="Predictor"):
        evaluate(StandIn(), ds)
    bad = ArrayDataset([np.zeros((16, 16), np.float32)], [np.zeros((8, 16), np.int32)])
    with pytest.raises(ValueError, match="mask of 'im0'"):
        evaluate(predictor(), bad)


def _png(path):
    with Image.open(path) as im:
        im.load()
        return im.format, im.size


def tiny_model(gate):
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("cpu-demo", base_width=4, depth=3, gate=gate)).eval()


@pytest.mark.parametrize("gates", ["image", "spatial", None])
def test_overlays(tmp_path, gates):
    gts = [_gt(s, sz) for s, sz in enumerate([(50, 70), (64, 64), (40, 40)])]
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts)
    model = tiny_model(gates or "image")
    paths = write_overlays(predictor(), ds, tmp_path / "ov", n=2, model=None if gates is None else model)
    overlays = [p for p in paths if p.endswith("_overlay.png")]
    gate_pngs = [p for p in paths if p.endswith("_gates.png")]
    assert len(overlays) == 2 and len(gate_pngs) == (0 if gates is None else 2)
    fmt, (w, h) = _png(overlays[0])
    assert fmt == "PNG" and (w, h) == (3 * 70 + 8, 50 + 14)  # three titled panels
    with Image.open(overlays[0]) as im:
        a = np.asarray(im.convert("RGB"))
    assert ((a[14:, 74:144] == (0, 255, 0)).all(-1)).any()  # ground-truth outlines in green
    for p in gate_pngs:
        assert _png(p)[0] == "PNG"
    if gates == "spatial":  # T weight maps of the image's size under a 16 px header
        assert _png(gate_pngs[0])[1] == (3 * 70 + 8, 50 + 16)


def _checkpoint(tmp_path):
    m = tiny_model("image")
    meta = {"norm": {"mean": [0.8, 0.5, 0.85], "std": [0.16, 0.16, 0.09]},
            "scale": {"mpp": 0.5, "source_mpp": 0.5, "source_mpp_assumed": False},
            "data_config": {"kind": "synthetic", "synthetic_side": 32, "synthetic_train": 6, "synthetic_test": 3,
                            "seed": 1, "label_ratio": 0.5, "val_ratio": 0.34}}
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    torch.save({"model": m.state_dict(), "model_config": dataclasses.asdict(m.cfg), **meta}, ckpt)
    return ckpt


def test_cli(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "ev"
    assert ev.main(["--model", str(ckpt), "--out", str(out), "--protocol", "both", "--overlays", "2",
                    "--split-boundary"]) == 0
    text = capsys.readouterr().out
    assert "object_f1" in text and "optimistic" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["kind"] == "synthetic" and m["input_spec"]["norm"]["mean"] == [0.8, 0.5, 0.85]
    assert m["ours"]["n_images"] == 3 and "optimistic" in m["reference"]["protocol"]
    assert (out / "per_image.csv").read_text().startswith("name,")
    assert len(list((out / "overlays").glob("*.png"))) == 4
    # the run's validation split
    with pytest.warns(UserWarning, match="split.json"):
        assert ev.main(["--checkpoint", str(ckpt), "--split", "val", "--overlays", "0"]) == 0
    m = json.loads((ckpt.parent / "eval_synthetic_val" / "metrics.json").read_text())
    assert m["n_images"] == 2 and "ours" in m["protocol"]
