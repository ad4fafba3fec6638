"""Metrics on hand-built masks with known answers, and object Hausdorff/Dice
against a brute-force implementation written independently here."""
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from references import brute_object_counts  # tests/references.py
from semimoe.metrics import (
    dice_from_counts,
    gland_metrics,
    hausdorff_distance,
    image_stats,
    iou_from_counts,
    label_components,
    object_dice,
    object_f1,
    object_f1_set,
    object_hausdorff,
    object_scores,
    pixel_dice,
    pixel_iou,
    pixel_scores,
    split_instances,
    summarize,
)


def square(shape, y, x, h, w, value=1, out=None):
    m = np.zeros(shape, np.int32) if out is None else out
    m[y:y + h, x:x + w] = value
    return m


# ----------------------------------------------------------------------------
# pixel level
# ----------------------------------------------------------------------------
def test_pixel_dice_iou_shifted_squares():
    gt = square((20, 20), 2, 2, 10, 10)
    pred = square((20, 20), 2, 5, 10, 10)  # shifted by 3 columns: overlap 10 x 7
    assert pixel_dice(pred, gt) == pytest.approx(2 * 70 / 200)
    assert pixel_iou(pred, gt) == pytest.approx(70 / 130)
    assert pixel_dice(gt, gt) == 1.0
    assert pixel_dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0  # both empty
    assert pixel_dice(np.zeros((4, 4)), np.ones((4, 4))) == 0.0
    with pytest.raises(ValueError):
        pixel_dice(np.zeros((4, 4)), np.zeros((4, 5)))


def test_pooled_vs_mean_differ():
    # image 1: large gland found exactly; image 2: small gland missed entirely
    gt1 = square((32, 32), 0, 0, 20, 20)
    gt2 = square((32, 32), 5, 5, 3, 3)
    preds = [gt1.copy(), np.zeros((32, 32), np.int32)]
    gts = [gt1, gt2]
    pooled = pixel_scores(preds, gts, mode="pooled")
    mean = pixel_scores(preds, gts, mode="mean")
    # pooled: TP 400, FN 9 -> Dice 800/809, IoU 400/409; mean: (1 + 0)/2
    assert pooled["dice"] == pytest.approx(800 / 809)
    assert pooled["iou"] == pytest.approx(400 / 409)
    assert mean["dice"] == pytest.approx(0.5) and mean["iou"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------
# instances
# ----------------------------------------------------------------------------
def test_label_components_min_size_and_connectivity():
    m = np.zeros((10, 10), bool)
    m[0:3, 0:3] = True  # 9 px
    m[3, 3] = True  # diagonal neighbour of the square
    m[7:9, 7:9] = True  # 4 px
    lab8 = label_components(m)
    assert lab8.dtype == np.int32 and lab8.max() == 2
    assert lab8[3, 3] == lab8[0, 0]
    lab4 = label_components(m, connectivity=1)
    assert lab4.max() == 3
    lab = label_components(m, min_size=5)
    assert lab.max() == 1 and lab[8, 8] == 0 and lab[1, 1] == 1
    assert set(np.unique(label_components(m, min_size=2, connectivity=1))) == {0, 1, 2}


def test_split_instances_touching_squares():
    lab_gt = square((12, 20), 2, 2, 8, 7, 1)
    square((12, 20), 2, 9, 8, 8, 2, out=lab_gt)  # touches gland 1 at column 8|9
    mask = lab_gt > 0
    assert label_components(mask).max() == 1  # merged
    boundary = np.zeros_like(mask)
    boundary[:, 8:10] = True  # predicted boundary over the contact (and outside the mask)
    lab = split_instances(mask, boundary)
    assert lab.max() == 2
    assert np.array_equal(lab > 0, mask)  # covers exactly the mask
    # the removed pixels are grown back from the nearest core
    assert np.all(lab[2:10, 2:9] == lab[5, 3]) and np.all(lab[2:10, 10:17] == lab[5, 15])
    assert lab[5, 9] == lab[5, 15]
    # without boundary: one instance; all-boundary: falls back to components
    assert split_instances(mask, np.zeros_like(mask)).max() == 1
    assert split_instances(mask, np.ones_like(mask)).max() == 1
    # a tiny core is dropped by min_size and absorbed by its neighbour
    b2 = boundary.copy()
    b2[2:10, 3] = True  # leaves a 1-px-wide core column 2 of 8 px
    assert split_instances(mask, b2).max() == 3
    assert split_instances(mask, b2, min_size=10).max() == 2


# ----------------------------------------------------------------------------
# object F1
# ----------------------------------------------------------------------------
def test_object_f1_missed_and_false_positive():
    gt = np.zeros((40, 40), np.int32)
    square(gt.shape, 0, 0, 10, 10, 1, out=gt)  # A
    square(gt.shape, 0, 20, 10, 10, 2, out=gt)  # B
    square(gt.shape, 20, 0, 10, 10, 3, out=gt)  # C (missed)
    pred = np.zeros_like(gt)
    square(gt.shape, 0, 0, 10, 8, 1, out=pred)  # covers 80 % of A -> TP
    square(gt.shape, 0, 20, 10, 3, 2, out=pred)  # covers 30 % of B -> FP
    square(gt.shape, 30, 30, 5, 5, 3, out=pred)  # nothing there -> FP
    r = object_f1(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["f1"] == pytest.approx(2 / 6)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    # exactly 50 % is not enough (strictly more than half)
    half = square(gt.shape, 0, 0, 10, 5, 1)
    assert object_f1(half, gt)["tp"] == 0
    # set version sums counts: perfect image + this one -> TP 4, FP 2, FN 2
    s = object_f1_set([gt, pred], [gt, gt])
    assert (s["tp"], s["fp"], s["fn"]) == (4, 2, 2)
    assert object_f1(np.zeros((4, 4), int), np.zeros((4, 4), int))["f1"] == 1.0


def test_object_f1_gt_overlap_vs_iou():
    gt = square((30, 30), 5, 5, 6, 6)  # 36 px
    pred = square((30, 30), 0, 0, 20, 20)  # contains the gland: 100 % of G, IoU 36/400
    assert object_f1(pred, gt)["tp"] == 1
    assert object_f1(pred, gt, criterion="iou")["tp"] == 0
    # a segmented object merging two glands is TP for the larger covered one only
    gt2 = square((30, 30), 0, 0, 10, 10, 1)
    square((30, 30), 0, 12, 10, 10, 2, out=gt2)
    merged = square((30, 30), 0, 0, 10, 22, 1)
    r = object_f1(merged, gt2)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)


# ----------------------------------------------------------------------------
# object Dice / Hausdorff, hand values
# ----------------------------------------------------------------------------
def test_object_dice_hand():
    gt = square((30, 30), 0, 0, 10, 10, 1)  # G1 100 px
    square((30, 30), 20, 20, 5, 10, 2, out=gt)  # G2 50 px, missed
    pred = (gt == 1).astype(np.int32)
    # G side: 100/150 * 1 + 50/150 * 0 = 2/3; S side: 1 * 1; mean = 5/6
    assert object_dice(pred, gt) == pytest.approx(5 / 6)
    assert object_dice(gt, gt) == 1.0
    assert object_dice(np.zeros_like(gt), gt) == 0.0
    assert object_dice(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_hausdorff_shifted_squares():
    a = square((30, 30), 5, 5, 10, 10) > 0
    b = square((30, 30), 8, 9, 10, 10) > 0  # shifted by (3, 4): Hausdorff 5
    assert hausdorff_distance(a, b) == pytest.approx(5.0)
    assert hausdorff_distance(a, a) == 0.0
    assert hausdorff_distance(a, np.zeros_like(a)) == math.inf
    assert object_hausdorff(b.astype(int), a.astype(int)) == pytest.approx(5.0)
    # unmatched object: G2 has no overlapping S, so it is matched to the
    # nearest S object (S1, the copy of G1): H(G2, S1) between squares
    gt = square((40, 40), 0, 0, 4, 4, 1)
    square((40, 40), 0, 10, 4, 4, 2, out=gt)
    pred = (gt == 1).astype(np.int32)
    # H(G2, S1): farthest G2 pixel (3, 13) from S1 pixel (3, 3) = 10
    # G side: 16/32 * 0 + 16/32 * 10 = 5; S side: 0 -> 2.5
    assert object_hausdorff(pred, gt) == pytest.approx(2.5)
    assert object_hausdorff(np.zeros_like(gt), gt) == math.inf
    assert object_hausdorff(np.zeros_like(gt), gt, empty_value=-1.0) == -1.0
    assert object_hausdorff(np.zeros_like(gt), np.zeros_like(gt)) == 0.0


# ----------------------------------------------------------------------------
# brute force comparison on small random masks
# ----------------------------------------------------------------------------
def _brute_hausdorff(a, b):
    pa = np.argwhere(a)
    pb = np.argwhere(b)
    d = cdist(pa, pb)
    return max(d.min(axis=1).max(), d.min(axis=0).max())


def _brute_partner(obj, other, other_ids):
    best, best_ov = None, 0
    for k in other_ids:  # ascending: ties go to the smallest label
        ov = np.count_nonzero(obj & (other == k))
        if ov > best_ov:
            best, best_ov = k, ov
    return best


def _brute_object_metrics(s, g):
    g_ids = [k for k in np.unique(g) if k > 0]
    s_ids = [k for k in np.unique(s) if k > 0]
    hd = {"g": 0.0, "s": 0.0}
    dc = {"g": 0.0, "s": 0.0}
    for side, ids, lab, o_ids, o_lab in (("g", g_ids, g, s_ids, s), ("s", s_ids, s, g_ids, g)):
        total = sum(np.count_nonzero(lab == k) for k in ids)
        for k in ids:
            obj = lab == k
            w = np.count_nonzero(obj) / total
            m = _brute_partner(obj, o_lab, o_ids)
            if m is None:
                dists = [_brute_hausdorff(obj, o_lab == j) for j in o_ids]
                h = min(dists)
                d = 0.0
            else:
                other = o_lab == m
                h = _brute_hausdorff(obj, other)
                d = 2 * np.count_nonzero(obj & other) / (obj.sum() + other.sum())
            hd[side] += w * h
            dc[side] += w * d
    return 0.5 * (hd["g"] + hd["s"]), 0.5 * (dc["g"] + dc["s"])


def _random_labels(rng, shape, n):
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(1.5, 7), rng.uniform(1.5, 7)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        blob &= rng.random(shape) < 0.9  # ragged, sometimes disconnected
        if blob.any():
            k += 1
            lab[blob] = k  # later blobs overwrite: touching and cut objects
    return lab


def test_object_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    checked = 0
    unmatched_seen = 0
    for _ in range(25):
        g = _random_labels(rng, (24, 28), int(rng.integers(1, 6)))
        s = _random_labels(rng, (24, 28), int(rng.integers(1, 6)))
        if g.max() == 0 or s.max() == 0:
            continue
        # labels may have gaps (overwritten blobs vanish); the metrics must not care
        h_ref, d_ref = _brute_object_metrics(s, g)
        assert object_hausdorff(s, g) == pytest.approx(h_ref, rel=1e-12, abs=1e-12)
        assert object_dice(s, g) == pytest.approx(d_ref, rel=1e-12, abs=1e-12)
        for k in np.unique(g)[1:]:
            if not np.any(s[g == k] > 0):
                unmatched_seen += 1
        checked += 1
    assert checked >= 20 and unmatched_seen >= 3


def test_hausdorff_distance_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.random((15, 17)) < rng.uniform(0.02, 0.3)
        b = rng.random((15, 17)) < rng.uniform(0.02, 0.3)
        if not a.any() or not b.any():
            continue
        assert hausdorff_distance(a, b) == pytest.approx(_brute_hausdorff(a, b), abs=1e-12)


def test_object_scores_modes_and_gland_metrics():
    gt1 = square((30, 30), 0, 0, 10, 10, 1)
    square((30, 30), 20, 20, 5, 10, 2, out=gt1)
    pred1 = (gt1 == 1).astype(np.int32)  # object Dice 5/6
    gt2 = square((30, 30), 5, 5, 4, 4, 1)
    pred2 = gt2.copy()  # object Dice 1
    mean = object_scores([pred1, pred2], [gt1, gt2], mode="mean")
    assert mean["object_dice"] == pytest.approx((5 / 6 + 1) / 2)
    pooled = object_scores([pred1, pred2], [gt1, gt2], mode="pooled")
    # G side: (100*1 + 50*0 + 16*1) / 166 ; S side: (100 + 16) / 116 = 1
    assert pooled["object_dice"] == pytest.approx(0.5 * (116 / 166 + 1))
    # image 1: G2 has no partner -> nearest S1; H(G2, S1) = |(0,0) - (20,20)| = sqrt(800)
    # G side: (100*0 + 50*sqrt(800) + 16*0) / 166 ; S side: 0
    assert pooled["object_hausdorff"] == pytest.approx(0.5 * 50 * math.sqrt(800) / 166)
    assert mean["object_hausdorff"] == pytest.approx(0.5 * (0.5 * 50 * math.sqrt(800) / 150 + 0.0))
    m = gland_metrics([pred1, pred2], [gt1, gt2])
    assert set(m) >= {"dice", "iou", "object_f1", "object_dice", "object_hausdorff"}
    assert m["object_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    # per-image mean of the brute-force object Dice / Hausdorff (not another aggregation of semimoe)
    refs = [_brute_object_metrics(p, g) for p, g in ((pred1, gt1), (pred2, gt2))]
    assert m["object_dice"] == pytest.approx(np.mean([d for _, d in refs]), rel=1e-12)
    assert m["object_hausdorff"] == pytest.approx(np.mean([h for h, _ in refs]), rel=1e-12)
    # pooled pixel Dice / IoU from counts summed with NumPy
    tp = sum(np.count_nonzero((p > 0) & (g > 0)) for p, g in ((pred1, gt1), (pred2, gt2)))
    area = sum(np.count_nonzero(p > 0) + np.count_nonzero(g > 0) for p, g in ((pred1, gt1), (pred2, gt2)))
    assert m["dice"] == pytest.approx(2 * tp / area, rel=1e-12)
    assert m["iou"] == pytest.approx(tp / (area - tp), rel=1e-12)


# ----------------------------------------------------------------------------
# object F1, image_stats and summarize against brute force
# ----------------------------------------------------------------------------
def _brute_image(s, g):
    """Per-image brute-force reference, empty maps handled per the module doc."""
    p, q = s > 0, g > 0
    tp = int(np.sum(p & q))
    fp = int(np.sum(p & ~q))
    fn = int(np.sum(~p & q))
    ng, ns = int(g.max()), int(s.max())
    if ng == 0 and ns == 0:
        hd, od = 0.0, 1.0
    elif ng == 0 or ns == 0:
        hd, od = math.inf, 0.0
    else:
        hd, od = _brute_object_metrics(s, g)
    return dict(tp=tp, fp=fp, fn=fn, dice=1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn),
                iou=1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn), obj=brute_object_counts(s, g),
                hd=hd, od=od)


def test_object_f1_matches_brute_force():
    rng = np.random.default_rng(2)
    partial = 0
    for _ in range(25):
        g = _random_labels(rng, (24, 28), int(rng.integers(0, 6)))
        s = _random_labels(rng, (24, 28), int(rng.integers(0, 6)))
        tp, fp, fn = brute_object_counts(s, g)
        r = object_f1(s, g)
        assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn)
        want = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        assert r["f1"] == pytest.approx(want, rel=1e-12)
        st = image_stats(s, g, hausdorff=False)
        assert (st["obj_tp"], st["obj_fp"], st["obj_fn"]) == (tp, fp, fn)
        partial += 0 < tp and fp + fn > 0
    assert partial >= 3  # mixed images, not only all-hit / all-miss ones


def _summary_images():
    sh = (40, 40)
    imgs = []
    # A: G1 found (80 %), G2 covered 40 % (FP), G3 missed, one FP far away
    g = square(sh, 0, 0, 10, 10, 1)
    square(sh, 0, 20, 10, 10, 2, out=g)
    square(sh, 25, 0, 6, 6, 3, out=g)
    s = square(sh, 0, 0, 10, 8, 4)
    square(sh, 0, 20, 10, 4, 7, out=s)
    square(sh, 30, 30, 5, 5, 9, out=s)
    imgs.append((s, g))
    # B: a gland, nothing predicted (Hausdorff undefined)
    imgs.append((np.zeros(sh, np.int32), square(sh, 5, 5, 8, 8, 1)))
    # C: both empty
    imgs.append((np.zeros(sh, np.int32), np.zeros(sh, np.int32)))
    # D: no gland, one predicted object (Hausdorff undefined)
    imgs.append((square(sh, 10, 10, 4, 6, 2), np.zeros(sh, np.int32)))
    # E: a gland found by a shifted object
    imgs.append((square(sh, 12, 15, 9, 9, 1), square(sh, 10, 12, 9, 9, 5)))
    return imgs


def test_image_stats_and_summarize_match_brute_force():
    imgs = _summary_images()
    refs = [_brute_image(s, g) for s, g in imgs]
    stats = [image_stats(s, g, name=f"im{k}") for k, (s, g) in enumerate(imgs)]
    for st, ref, (s, g), k in zip(stats, refs, imgs, range(len(imgs))):
        assert st["name"] == f"im{k}"
        assert (st["tp"], st["fp"], st["fn"]) == (ref["tp"], ref["fp"], ref["fn"])
        assert (st["obj_tp"], st["obj_fp"], st["obj_fn"]) == ref["obj"]
        assert st["dice"] == pytest.approx(ref["dice"], rel=1e-12)
        assert st["iou"] == pytest.approx(ref["iou"], rel=1e-12)
        assert st["object_dice"] == pytest.approx(ref["od"], rel=1e-12)
        assert st["object_hausdorff"] == pytest.approx(ref["hd"], rel=1e-12)
        assert st["n_pred"] == len(np.unique(s[s > 0])) and st["n_gt"] == len(np.unique(g[g > 0]))
    assert [r["obj"] for r in refs][0] == (1, 2, 2)  # the hand-built case A is what it claims

    out = summarize(stats)
    tp, fp, fn = (sum(r[k] for r in refs) for k in ("tp", "fp", "fn"))
    assert out["dice_pooled"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    assert out["iou_pooled"] == pytest.approx(tp / (tp + fp + fn), rel=1e-12)
    assert out["dice_mean"] == pytest.approx(np.mean([r["dice"] for r in refs]), rel=1e-12)
    assert out["iou_mean"] == pytest.approx(np.mean([r["iou"] for r in refs]), rel=1e-12)
    assert out["dice_pooled"] != pytest.approx(out["dice_mean"])  # the two aggregations differ here
    otp, ofp, ofn = (sum(r["obj"][i] for r in refs) for i in range(3))
    assert out["object_f1"] == pytest.approx(2 * otp / (2 * otp + ofp + ofn), rel=1e-12)
    assert out["object_precision"] == pytest.approx(otp / (otp + ofp), rel=1e-12)
    assert out["object_recall"] == pytest.approx(otp / (otp + ofn), rel=1e-12)
    assert out["object_dice"] == pytest.approx(np.mean([r["od"] for r in refs]), rel=1e-12)
    hd = [r["hd"] for r in refs]
    defined = [h for h in hd if math.isfinite(h)]
    assert out["object_hausdorff"] == math.inf
    assert out["object_hausdorff_undefined"] == 2 == len(hd) - len(defined)
    assert out["object_hausdorff_defined_mean"] == pytest.approx(np.mean(defined), rel=1e-12)
    assert np.mean(defined) > 0

    # without Hausdorff: the three keys are left out, the rest is unchanged
    quick = [image_stats(s, g, hausdorff=False) for s, g in imgs]
    assert all(math.isnan(st["object_hausdorff"]) for st in quick)
    out2 = summarize(quick, hausdorff=False)
    assert not any(k.startswith("object_hausdorff") for k in out2)
    assert out2 == {k: v for k, v in out.items() if not k.startswith("object_hausdorff")}
    with pytest.raises(ValueError):
        summarize([])

    # gland_metrics = the same scores, with empty_value for the undefined images
    m = gland_metrics([s for s, _ in imgs], [g for _, g in imgs], empty_value=40.0)
    assert m["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
    assert m["object_f1"] == pytest.approx(2 * otp / (2 * otp + ofp + ofn), rel=1e-12)
    assert m["object_hausdorff"] == pytest.approx(np.mean([h if math.isfinite(h) else 40.0 for h in hd]),
                                                  rel=1e-12)


def test_counts_to_scores():
    rng = np.random.default_rng(3)
    for _ in range(10):
        p = rng.random((9, 11)) < 0.4
        g = rng.random((9, 11)) < 0.4
        tp, fp, fn = int(np.sum(p & g)), int(np.sum(p & ~g)), int(np.sum(~p & g))
        # Dice = 2|P∩G| / (|P| + |G|), IoU = |P∩G| / |P∪G| from the masks themselves
        assert dice_from_counts(tp, fp, fn) == pytest.approx(2 * np.sum(p & g) / (p.sum() + g.sum()), rel=1e-12)
        assert iou_from_counts(tp, fp, fn) == pytest.approx(np.sum(p & g) / np.sum(p | g), rel=1e-12)
    assert dice_from_counts(0, 0, 0) == 1.0 and iou_from_counts(0, 0, 0) == 1.0
    assert dice_from_counts(0, 3, 2) == 0.0 and iou_from_counts(0, 3, 2) == 0.0
