"""evaluate(): protocols and aggregation against semimoe.metrics; overlays; CLI."""
import json
from typing import NamedTuple, Optional

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import semimoe.evaluate as ev
from semimoe.data.synthetic import make_sample
from semimoe.evaluate import REFERENCE_THRESHOLDS, evaluate, write_overlays
from semimoe.metrics import label_components, object_f1_set, object_scores, pixel_scores


class Out(NamedTuple):  # SemiMoEOutput-like (docs/CONTRACTS.md)
    seg: torch.Tensor
    sdf: torch.Tensor
    bnd: torch.Tensor
    experts: dict
    gates: Optional[torch.Tensor]


class StandIn(torch.nn.Module):
    """Reads its answer from the input: channel 0 is the foreground probability,
    channel 1 > 0.5 the boundary; insists on sides that are multiples of 16."""

    size_multiple = 16

    def __init__(self, gates: str = "image"):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.gate_kind = gates
        self.shapes = []

    def forward(self, x):
        B, _, H, W = x.shape
        assert H % 16 == 0 and W % 16 == 0, (H, W)
        assert not torch.is_grad_enabled() and not self.training
        self.shapes.append((H, W))
        q = x[:, 0:1].clamp(1e-6, 1 - 1e-6)
        fg = torch.log(q / (1 - q)) * self.w
        seg = torch.cat([torch.zeros_like(fg), fg], 1)
        b = (x[:, 1:2] - 0.5) * 20
        bnd = torch.cat([-b, b], 1)
        sdf = torch.tanh(fg)
        if self.gate_kind == "image":
            g = torch.arange(9.0, device=x.device).view(1, 3, 3).expand(B, 3, 3)
            gates = torch.softmax(g / 4, dim=-1)
        elif self.gate_kind == "spatial":
            logits = torch.stack([x[:, 0], x[:, 1], x[:, 2]], 1)  # (B, K, H, W)
            gates = torch.softmax(logits, 1)[:, None].expand(B, 3, 3, H, W)
        else:
            gates = None
        return Out(seg, sdf, bnd, {"seg": seg, "sdf": sdf, "bnd": bnd}, gates)


class ArrayDataset(torch.utils.data.Dataset):
    """Items whose image encodes the model's answer: ch0 = foreground
    probability, ch1 = boundary, ch2 = noise; mask = ground truth labels."""

    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self, probs, gts, bnds=None, input_size=None, with_mask=True):
        self.items = []
        rng = np.random.default_rng(0)
        for k, (p, g) in enumerate(zip(probs, gts)):
            b = np.zeros_like(p) if bnds is None else bnds[k]
            img = np.stack([p, b, rng.random(p.shape)]).astype(np.float32)
            d = {"image": torch.from_numpy(img), "name": f"im{k}"}
            if with_mask:
                d["mask"] = torch.from_numpy(g.astype(np.int64))
            self.items.append(d)
        self.input_size = input_size

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
    model = StandIn()
    model.train()
    r = evaluate(model, ds, "cpu", batch_size=3)
    assert model.training  # mode restored
    assert r["n_images"] == len(SIZES)
    for k in ("dice_pooled", "iou_pooled", "dice_mean", "iou_mean", "object_f1", "object_dice"):
        assert r[k] == pytest.approx(1.0), k
    assert r["object_hausdorff"] == 0.0 and r["object_hausdorff_undefined"] == 0
    assert "ours" in r["protocol"]
    # padding to multiples of 16 happened; outputs cropped back
    assert set(model.shapes) >= {(64, 80), (48, 64), (80, 48)}


def test_split_boundary_separates_touching_glands():
    gts = [_gt(s, (256, 256)) for s in (0, 1, 3)]
    assert all(_touch_border(g).any() for g in gts)
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts,
                      bnds=[_touch_border(g).astype(np.float32) for g in gts])
    merged = evaluate(StandIn(), ds, "cpu")
    split = evaluate(StandIn(), ds, "cpu", split_boundary=True)
    assert merged["object_f1"] < 1.0
    assert split["object_f1"] == pytest.approx(1.0)
    assert split["dice_pooled"] == pytest.approx(1.0)  # splitting never changes the mask


def test_matches_metrics_module():
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
    r = evaluate(StandIn(), ds, "cpu", batch_size=2, per_image=True, threads=2)
    labs = [label_components(p) for p in preds]
    px = pixel_scores(labs, gts, "pooled")
    pm = pixel_scores(labs, gts, "mean")
    f1 = object_f1_set(labs, gts)
    ob = object_scores(labs, gts, "mean")
    assert r["dice_pooled"] == pytest.approx(px["dice"])
    assert r["iou_pooled"] == pytest.approx(px["iou"])
    assert r["dice_mean"] == pytest.approx(pm["dice"])
    assert r["iou_mean"] == pytest.approx(pm["iou"])
    assert r["object_f1"] == pytest.approx(f1["f1"])
    assert r["object_precision"] == pytest.approx(f1["precision"])
    assert r["object_dice"] == pytest.approx(ob["object_dice"])
    assert r["object_hausdorff"] == float("inf") and r["object_hausdorff_undefined"] == 1
    finite = [ob_ for ob_ in (object_scores([lb], [g])["object_hausdorff"] for lb, g in zip(labs, gts))
              if np.isfinite(ob_)]
    assert r["object_hausdorff_defined_mean"] == pytest.approx(np.mean(finite))
    assert [d["name"] for d in r["per_image"]] == [f"im{k}" for k in range(len(SIZES))]
    fast = evaluate(StandIn(), ds, "cpu", hausdorff=False)
    assert "object_hausdorff" not in fast and fast["object_dice"] == r["object_dice"]
    # min_size removes small predicted objects before every metric
    r2 = evaluate(StandIn(), ds, "cpu", min_size=40)
    labs2 = [label_components(p, min_size=40) for p in preds]
    assert r2["object_f1"] == pytest.approx(object_f1_set(labs2, gts)["f1"])
    assert r2["dice_pooled"] == pytest.approx(pixel_scores(labs2, gts)["dice"])


def test_fixed_threshold():
    g = _gt(7, (64, 64))
    q = np.where(g > 0, 0.7, 0.3).astype(np.float32)
    ds = ArrayDataset([q], [g])
    assert evaluate(StandIn(), ds, "cpu", threshold=0.5)["dice_pooled"] == pytest.approx(1.0)
    assert evaluate(StandIn(), ds, "cpu", threshold=0.8)["dice_pooled"] == 0.0


def test_input_size_resizes_and_upsamples_back():
    gts = [label_components(_gt(s, (64, 64)) > 0) for s in range(3)]
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts, input_size=32)
    model = StandIn()
    r = evaluate(model, ds, "cpu")
    assert set(model.shapes) == {(32, 32)} and r["input_size"] == 32
    assert r["dice_pooled"] > 0.9
    model.shapes.clear()
    evaluate(model, ds, "cpu", input_size=None)
    assert set(model.shapes) == {(64, 64)}


def test_reference_protocol():
    gts = [_gt(s, (256, 256)) for s in range(3)]
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts)
    r = evaluate(StandIn(), ds, "cpu", protocol="reference")
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
    r = evaluate(StandIn(), ds, "cpu", protocol="reference", batch_size=2)
    # brute force: resize like the protocol, then the released code's sweep
    import torch.nn.functional as F

    from semimoe.data.augment import resize_mask
    probs, trues = [], []
    for q, g in zip(qs, gts):
        x = torch.from_numpy(q)[None, None]
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
        evaluate(StandIn(), ds, "cpu", protocol="paper")
    with pytest.raises(ValueError, match="empty"):
        evaluate(StandIn(), ArrayDataset([], []), "cpu")
    with pytest.raises(ValueError, match="no mask"):
        evaluate(StandIn(), ArrayDataset([np.zeros((16, 16), np.float32)], [None], with_mask=False), "cpu")


def _png(path):
    with Image.open(path) as im:
        im.load()
        return im.format, im.size


@pytest.mark.parametrize("gates", ["image", "spatial", None])
def test_overlays(tmp_path, gates):
    gts = [_gt(s, sz) for s, sz in enumerate([(50, 70), (64, 64), (40, 40)])]
    ds = ArrayDataset([(g > 0).astype(np.float32) for g in gts], gts)
    paths = write_overlays(StandIn(gates), ds, tmp_path / "ov", "cpu", n=2)
    overlays = [p for p in paths if p.endswith("_overlay.png")]
    gate_pngs = [p for p in paths if p.endswith("_gates.png")]
    assert len(overlays) == 2 and len(gate_pngs) == (0 if gates is None else 2)
    fmt, (w, h) = _png(overlays[0])
    assert fmt == "PNG" and (w, h) == (3 * 70 + 8, 50)
    with Image.open(overlays[0]) as im:
        a = np.asarray(im.convert("RGB"))
    assert ((a[:, 74:144] == (0, 255, 0)).all(-1)).any()  # ground-truth outlines in green
    for p in gate_pngs:
        assert _png(p)[0] == "PNG"
    if gates == "spatial":  # T weight maps of the image's size under a 16 px header
        assert _png(gate_pngs[0])[1] == (3 * 70 + 8, 50 + 16)
    # without masks: image | prediction
    nomask = ArrayDataset([(gts[1] > 0).astype(np.float32)], [None], with_mask=False)
    p = write_overlays(StandIn(gates), nomask, tmp_path / "nm", "cpu", n=4)
    assert _png(p[0])[1] == (2 * 64 + 4, 64)


def test_cli(tmp_path, monkeypatch, capsys):
    model = StandIn("image")
    meta = {"norm": {"mean": [0.8, 0.5, 0.85], "std": [0.16, 0.16, 0.09]},
            "data_config": {"kind": "synthetic", "size": 32, "synthetic_train": 6, "synthetic_test": 3,
                            "seed": 1, "label_ratio": 0.5, "val_ratio": 0.34}}
    monkeypatch.setattr(ev, "_load_model", lambda path, device: (model, meta))
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"")
    out = tmp_path / "ev"
    assert ev.main(["--checkpoint", str(ckpt), "--out", str(out), "--protocol", "both", "--overlays", "2",
                    "--split-boundary"]) == 0
    text = capsys.readouterr().out
    assert "object_f1" in text and "optimistic" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["kind"] == "synthetic" and m["data"]["mean"] == [0.8, 0.5, 0.85]
    assert m["ours"]["n_images"] == 3 and "optimistic" in m["reference"]["protocol"]
    assert (out / "per_image.csv").read_text().startswith("name,")
    assert len(list((out / "overlays").glob("*.png"))) == 4
    # the run's validation split
    with pytest.warns(UserWarning, match="split.json"):
        assert ev.main(["--checkpoint", str(ckpt), "--split", "val", "--overlays", "0"]) == 0
    m = json.loads((ckpt.parent / "eval_synthetic_val" / "metrics.json").read_text())
    assert m["n_images"] == 2 and "ours" in m["protocol"]
