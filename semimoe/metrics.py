"""Evaluation metrics for gland segmentation (NumPy/SciPy, CPU).

Pixel level
    :func:`pixel_dice`, :func:`pixel_iou` (one image) and
    :func:`pixel_scores` (a set: ``"pooled"`` = TP/FP/FN summed over all
    images, as the reference reports; ``"mean"`` = mean of per-image values).
    Both masks empty counts as a perfect score (1.0).

Instances
    :func:`label_components` (connected components, small ones removed) and
    :func:`split_instances` (separate touching glands with a boundary map).

GlaS object level (Sirinukunwattana et al., "Gland segmentation in colon
histology images: The GlaS challenge contest", Medical Image Analysis 35,
2017), implemented as follows, for a ground truth G with objects G_i and a
segmentation S with objects S_j (label maps, 0 = background):

* Matching: the partner of an object is the object of the *other* label map
  with the largest pixel overlap (ties: smallest label), or none if it
  overlaps nothing. This is the challenge code's ``mode`` of the overlapping
  labels.
* :func:`object_f1`: S_j is a true positive iff its partner G_i exists and
  ``|S_j ∩ G_i| > 0.5 |G_i|`` ("intersects at least 50 % of its ground
  truth object"), else a false positive. Because segmented objects are
  disjoint, at most one S_j can cover more than half of a G_i, so no ground
  truth object is counted twice; FN = #G - TP. F1 = 2TP / (2TP + FP + FN).
  ``criterion="iou"`` instead requires ``IoU(S_j, G_i) > 0.5`` (the variant
  some later papers use; not the GlaS definition).
* :func:`object_dice`::

      D_obj = 1/2 [ sum_i |G_i|/|G| * Dice(G_i, S*(G_i))
                  + sum_j |S_j|/|S| * Dice(G*(S_j), S_j) ]

  with S*(G_i) the partner of G_i (Dice 0 when it has none), |G| the total
  gland area of G.
* :func:`object_hausdorff`: the same area-weighted sum with the Hausdorff
  distance (Euclidean, between pixel centres) in place of Dice; an object
  without an overlapping partner is matched to the object of the other map
  at the *smallest Hausdorff distance* (the challenge code's behaviour).
  If exactly one of G and S has no objects the value is undefined and
  ``empty_value`` (default ``inf``) is returned; both empty gives 0.

Hausdorff distances come from Euclidean distance transforms
(``scipy.ndimage.distance_transform_edt``) computed on the bounding box of
the two objects: H(A, B) = max(max_{b in B} d_A(b), max_{a in A} d_B(a)), exact
and without pairwise pixel loops.

All inputs may be NumPy arrays or CPU torch tensors of shape (H, W); masks are
binarised with ``> 0``.
"""
from __future__ import annotations

from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
from scipy import ndimage

__all__ = [
    "pixel_dice",
    "pixel_iou",
    "pixel_scores",
    "label_components",
    "split_instances",
    "object_f1",
    "object_f1_set",
    "object_dice",
    "object_hausdorff",
    "hausdorff_distance",
    "object_scores",
    "gland_metrics",
    "image_stats",
    "summarize",
    "dice_from_counts",
    "iou_from_counts",
    "weak_scores",
    "score_masks",
]


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) array, got shape {a.shape}")
    return a


def _pair(pred, gt, name_a="pred", name_b="gt") -> Tuple[np.ndarray, np.ndarray]:
    a = _np(pred)
    b = _np(gt)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")
    return a, b


# ----------------------------------------------------------------------------
# Pixel level
# ----------------------------------------------------------------------------
def _counts(pred, gt) -> Tuple[int, int, int]:
    p, g = _pair(pred, gt)
    p = p > 0
    g = g > 0
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p & ~g))
    fn = int(np.count_nonzero(~p & g))
    return tp, fp, fn


def dice_from_counts(tp: float, fp: float, fn: float) -> float:
    """Dice (= F1) ``2 TP / (2 TP + FP + FN)``; 1.0 when all three are 0.
    The one place where pixel or object counts become a Dice/F1 score."""
    d = 2 * tp + fp + fn
    return 1.0 if d == 0 else 2.0 * tp / d


def iou_from_counts(tp: float, fp: float, fn: float) -> float:
    """IoU ``TP / (TP + FP + FN)``; 1.0 when all three are 0."""
    d = tp + fp + fn
    return 1.0 if d == 0 else tp / d


def pixel_dice(pred, gt) -> float:
    """Dice 2|P∩G| / (|P| + |G|) of two binary masks (H, W); 1.0 if both empty."""
    return dice_from_counts(*_counts(pred, gt))


def pixel_iou(pred, gt) -> float:
    """IoU |P∩G| / |P∪G| of two binary masks (H, W); 1.0 if both empty."""
    return iou_from_counts(*_counts(pred, gt))


def pixel_scores(preds: Iterable, gts: Iterable, mode: str = "pooled") -> Dict[str, float]:
    """Pixel Dice and IoU over a set of (H, W) masks (sizes may differ).

    ``mode="pooled"``: TP, FP, FN summed over all images, then Dice/IoU (the
    reference's reporting). ``mode="mean"``: mean of the per-image values.
    Returns ``{"dice": ..., "iou": ...}``.
    """
    if mode not in ("pooled", "mean"):
        raise ValueError(f"mode must be 'pooled' or 'mean', got {mode!r}")
    counts = [_counts(p, g) for p, g in zip(preds, gts, strict=True)]
    if not counts:
        raise ValueError("pixel_scores needs at least one image")
    if mode == "pooled":
        tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
        return {"dice": dice_from_counts(tp, fp, fn), "iou": iou_from_counts(tp, fp, fn)}
    return {
        "dice": float(np.mean([dice_from_counts(*c) for c in counts])),
        "iou": float(np.mean([iou_from_counts(*c) for c in counts])),
    }


# ----------------------------------------------------------------------------
# Instances
# ----------------------------------------------------------------------------
def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 1:
        return ndimage.generate_binary_structure(2, 1)
    if connectivity == 2:
        return np.ones((3, 3), bool)
    raise ValueError(f"connectivity must be 1 (4-neighbour) or 2 (8-neighbour), got {connectivity}")


def _remove_small_and_relabel(lab: np.ndarray, n: int, min_size: int) -> np.ndarray:
    if n == 0:
        return lab.astype(np.int32)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[lab]


def label_components(mask, min_size: int = 0, connectivity: int = 2) -> np.ndarray:
    """Instances from a binary mask by connected components.

    Args:
        mask: (H, W), foreground = ``mask > 0``.
        min_size: components with fewer pixels are removed (set to 0).
        connectivity: 2 = 8-neighbour (default, as MATLAB ``bwlabel`` in the
            GlaS evaluation), 1 = 4-neighbour.

    Returns:
        int32 (H, W) labels 1..n (consecutive, in scan order), 0 background.
    """
    m = _np(mask) > 0
    lab, n = ndimage.label(m, structure=_structure(connectivity))
    return _remove_small_and_relabel(lab, n, min_size)


def split_instances(mask, boundary, min_size: int = 0, connectivity: int = 1) -> np.ndarray:
    """Separate touching glands using a predicted boundary map.

    1. core = mask ∧ ¬boundary, labelled by connected components
       (``connectivity``, default 4-neighbour so that thin diagonal boundary
       lines still separate); cores smaller than ``min_size`` are dropped.
    2. Every mask pixel that is not in a kept core (the removed boundary
       pixels and dropped small cores) takes the label of the nearest core
       pixel of its own mask component (8-connected; Euclidean, ties broken
       by SciPy's distance transform). A mask component without a kept core
       is one instance. Pixels outside ``mask`` stay 0.

    The labels of a component depend on that component alone, so a window
    that holds a whole component labels it as the whole image does (up to
    ties and label numbers): whole-slide inference relies on this.

    Args:
        mask: (H, W) binary gland mask (``> 0``).
        boundary: (H, W) binary boundary map (``> 0``).
        min_size: minimum core size in pixels.
        connectivity: 1 (4-neighbour) or 2 (8-neighbour) for the cores.

    Returns:
        int32 (H, W) labels 1..n, 0 background.
    """
    m, b = _pair(mask, boundary, "mask", "boundary")
    m = m > 0
    core = m & ~(b > 0)
    lab, n = ndimage.label(core, structure=_structure(connectivity))
    lab = _remove_small_and_relabel(lab, n, min_size).astype(np.int32, copy=False)
    todo = m & (lab == 0)
    if not todo.any():
        return lab
    comp, _ = ndimage.label(m, structure=_structure(2))
    lab = lab.copy()
    rest = todo
    if lab.max() > 0:
        iy, ix = ndimage.distance_transform_edt(lab == 0, return_distances=False, return_indices=True)
        ok = todo & (comp[iy, ix] == comp)  # the nearest core lies in the pixel's own component
        lab[ok] = lab[iy[ok], ix[ok]]
        rest = todo & ~ok
    if rest.any():
        _grow_within_components(lab, comp, rest)
    return lab


def _grow_within_components(lab: np.ndarray, comp: np.ndarray, rest: np.ndarray) -> None:
    """Label the ``rest`` pixels in place from the nearest core of their own
    component, or as a new instance when their component has no core."""
    boxes = ndimage.find_objects(comp)
    nxt = int(lab.max()) + 1
    for k in np.unique(comp[rest]):
        sl = boxes[int(k) - 1]
        own = comp[sl] == k
        sub = np.where(own, lab[sl], 0)
        todo = own & rest[sl]
        if sub.max() == 0:
            lab[sl][own] = nxt
            nxt += 1
            continue
        iy, ix = ndimage.distance_transform_edt(sub == 0, return_distances=False, return_indices=True)
        lab[sl][todo] = sub[iy[todo], ix[todo]]


# ----------------------------------------------------------------------------
# Object level (GlaS)
# ----------------------------------------------------------------------------
def _as_labels(x) -> np.ndarray:
    a = _np(x)
    if a.dtype == bool:
        return label_components(a)
    if not np.issubdtype(a.dtype, np.integer):
        if np.any(a != np.round(a)):
            raise ValueError("label maps must hold integers")
        a = a.astype(np.int64)
    if a.min(initial=0) < 0:
        raise ValueError("label maps must be >= 0")
    return a


def _overlap_table(g: np.ndarray, s: np.ndarray):
    """Overlap counts between labels of g and s.

    Returns (g_ids, s_ids, overlap[len(g_ids), len(s_ids)], g_area, s_area),
    ids sorted ascending, background excluded.
    """
    g_ids = np.unique(g)
    g_ids = g_ids[g_ids > 0]
    s_ids = np.unique(s)
    s_ids = s_ids[s_ids > 0]
    gi = np.searchsorted(g_ids, g.ravel())
    si = np.searchsorted(s_ids, s.ravel())
    both = (g.ravel() > 0) & (s.ravel() > 0)
    ov = np.bincount(gi[both] * s_ids.size + si[both], minlength=g_ids.size * s_ids.size)
    ov = ov.reshape(g_ids.size, s_ids.size).astype(np.int64)
    g_area = np.bincount(gi[g.ravel() > 0], minlength=g_ids.size)
    s_area = np.bincount(si[s.ravel() > 0], minlength=s_ids.size)
    return g_ids, s_ids, ov, g_area, s_area


def _partners(ov: np.ndarray) -> np.ndarray:
    """Index of the max-overlap partner per row, -1 if the row is all 0
    (argmax gives the smallest index among ties)."""
    if ov.shape[1] == 0:
        return np.full(ov.shape[0], -1, np.int64)
    j = ov.argmax(axis=1)
    j[ov.max(axis=1) == 0] = -1
    return j


def _object_f1_counts(pred, gt, criterion: str) -> Tuple[int, int, int]:
    if criterion not in ("gt_overlap", "iou"):
        raise ValueError(f"criterion must be 'gt_overlap' or 'iou', got {criterion!r}")
    s, g = _pair(pred, gt)
    s = _as_labels(s)
    g = _as_labels(g)
    g_ids, s_ids, ov, g_area, s_area = _overlap_table(g, s)
    partner = _partners(ov.T)  # for each S_j, index into g_ids
    tp = 0
    for j, i in enumerate(partner):
        if i < 0:
            continue
        inter = ov[i, j]
        if criterion == "gt_overlap":
            ok = inter > 0.5 * g_area[i]
        else:
            ok = inter > 0.5 * (g_area[i] + s_area[j] - inter)
        tp += bool(ok)
    fp = s_ids.size - tp
    fn = g_ids.size - tp
    return tp, fp, fn


def _f1_dict(tp: int, fp: int, fn: int) -> Dict[str, float]:
    prec = 1.0 if tp + fp == 0 else tp / (tp + fp)
    rec = 1.0 if tp + fn == 0 else tp / (tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": prec, "recall": rec, "f1": dice_from_counts(tp, fp, fn)}


def object_f1(pred, gt, criterion: str = "gt_overlap") -> Dict[str, float]:
    """GlaS object-level detection F1 of one image (definition in the module doc).

    Args:
        pred, gt: (H, W) instance label maps (int, 0 = background); a bool
            mask is turned into instances with :func:`label_components`.
        criterion: ``"gt_overlap"`` (GlaS: ``|S_j ∩ G_i| > 0.5 |G_i|``) or
            ``"iou"`` (``IoU > 0.5``).

    Returns:
        dict with tp, fp, fn (int), precision, recall, f1 (float; 1.0 when
        the denominator is 0, i.e. no objects in either map).
    """
    return _f1_dict(*_object_f1_counts(pred, gt, criterion))


def object_f1_set(preds: Iterable, gts: Iterable, criterion: str = "gt_overlap") -> Dict[str, float]:
    """Object F1 over a set of images: TP, FP, FN summed over images, then F1."""
    tot = [0, 0, 0]
    for p, g in zip(preds, gts, strict=True):
        c = _object_f1_counts(p, g, criterion)
        for k in range(3):
            tot[k] += c[k]
    return _f1_dict(*tot)


def _object_dice_parts(s: np.ndarray, g: np.ndarray) -> Tuple[float, int, float, int]:
    """(sum_i |G_i| Dice_i, |G|, sum_j |S_j| Dice_j, |S|)."""
    g_ids, s_ids, ov, g_area, s_area = _overlap_table(g, s)
    sum_g = 0.0
    pg = _partners(ov)
    for i, j in enumerate(pg):
        if j >= 0:
            sum_g += g_area[i] * 2.0 * ov[i, j] / (g_area[i] + s_area[j])
    sum_s = 0.0
    ps = _partners(ov.T)
    for j, i in enumerate(ps):
        if i >= 0:
            sum_s += s_area[j] * 2.0 * ov[i, j] / (g_area[i] + s_area[j])
    return sum_g, int(g_area.sum()), sum_s, int(s_area.sum())


def _combine_weighted(sum_g: float, tot_g: int, sum_s: float, tot_s: int) -> float:
    a = sum_g / tot_g if tot_g > 0 else None
    b = sum_s / tot_s if tot_s > 0 else None
    if a is None and b is None:
        return 1.0
    if a is None or b is None:
        return 0.0
    return 0.5 * (a + b)


def object_dice(pred, gt) -> float:
    """GlaS object Dice of one image (definition in the module doc).

    Args:
        pred, gt: (H, W) instance label maps (bool masks are labelled with
            :func:`label_components`).

    Returns:
        float in [0, 1]; 1.0 if both have no objects, 0.0 if only one has.
    """
    s, g = _pair(pred, gt)
    return _combine_weighted(*_object_dice_parts(_as_labels(s), _as_labels(g)))


def _bbox(mask: np.ndarray) -> Tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def hausdorff_distance(a, b) -> float:
    """Symmetric Hausdorff distance between two binary masks (pixel centres, Euclidean).

    Exact, via distance transforms on the union bounding box:
    ``max(max_{p in B} d_A(p), max_{p in A} d_B(p))``. ``inf`` if exactly one
    mask is empty, 0 if both are.
    """
    A, B = _pair(a, b, "a", "b")
    return _hausdorff(A > 0, B > 0)


def _hausdorff(A: np.ndarray, B: np.ndarray) -> float:
    ea = not A.any()
    eb = not B.any()
    if ea and eb:
        return 0.0
    if ea or eb:
        return float("inf")
    ya0, ya1, xa0, xa1 = _bbox(A)
    yb0, yb1, xb0, xb1 = _bbox(B)
    sl = (slice(min(ya0, yb0), max(ya1, yb1)), slice(min(xa0, xb0), max(xa1, xb1)))
    return _hausdorff_crop(A[sl], B[sl])


def _hausdorff_crop(a: np.ndarray, b: np.ndarray) -> float:
    # all pixels of both objects lie in the crop, so the crop's EDT is exact
    da = ndimage.distance_transform_edt(~a)
    db = ndimage.distance_transform_edt(~b)
    return float(max(da[b].max(), db[a].max()))


def _object_hausdorff_parts(s: np.ndarray, g: np.ndarray) -> Tuple[float, int, float, int]:
    g_ids, s_ids, ov, g_area, s_area = _overlap_table(g, s)
    g_objs = ndimage.find_objects(g)
    s_objs = ndimage.find_objects(s)
    cache: Dict[Tuple[int, int], float] = {}

    def hd(i: int, j: int) -> float:  # G index i, S index j
        key = (i, j)
        if key not in cache:
            gl, sl_ = int(g_ids[i]), int(s_ids[j])
            bg, bs = g_objs[gl - 1], s_objs[sl_ - 1]
            crop = (
                slice(min(bg[0].start, bs[0].start), max(bg[0].stop, bs[0].stop)),
                slice(min(bg[1].start, bs[1].start), max(bg[1].stop, bs[1].stop)),
            )
            cache[key] = _hausdorff_crop(g[crop] == gl, s[crop] == sl_)
        return cache[key]

    def boxes(objs, ids):
        return np.array([[objs[k - 1][0].start, objs[k - 1][0].stop, objs[k - 1][1].start, objs[k - 1][1].stop]
                         for k in ids], np.int64).reshape(-1, 4)

    g_box = boxes(g_objs, g_ids)
    s_box = boxes(s_objs, s_ids)

    def side(ov_rows: np.ndarray, areas: np.ndarray, my_box, other_box, pair) -> float:
        total = 0.0
        partner = _partners(ov_rows)
        for r, c in enumerate(partner):
            if c < 0:
                # no overlap: the object of the other map at the smallest
                # Hausdorff distance. The extreme rows/columns give a lower
                # bound (the topmost pixel of one object is >= |top_a - top_b|
                # away from the other, etc.), so candidates are visited in
                # order of that bound and the search stops early; exact.
                lb = np.abs(other_box - my_box[r]).max(axis=1)
                best, c = np.inf, -1
                for k in np.argsort(lb, kind="stable"):
                    if lb[k] > best:
                        break
                    h = pair(r, int(k))
                    if h < best or (h == best and k < c):
                        best, c = h, int(k)
            total += areas[r] * pair(r, c)
        return total

    sum_g = side(ov, g_area, g_box, s_box, lambda r, c: hd(r, c))
    sum_s = side(ov.T, s_area, s_box, g_box, lambda r, c: hd(c, r))
    return sum_g, int(g_area.sum()), sum_s, int(s_area.sum())


def object_hausdorff(pred, gt, empty_value: float = float("inf")) -> float:
    """GlaS object Hausdorff distance of one image (definition in the module doc).

    Args:
        pred, gt: (H, W) instance label maps (bool masks are labelled with
            :func:`label_components`).
        empty_value: returned when exactly one map has no objects.

    Returns:
        float >= 0 in pixels; 0.0 if both maps have no objects.
    """
    s, g = _pair(pred, gt)
    s = _as_labels(s)
    g = _as_labels(g)
    ng = int(np.count_nonzero(np.unique(g)))
    ns = int(np.count_nonzero(np.unique(s)))
    if ng == 0 and ns == 0:
        return 0.0
    if ng == 0 or ns == 0:
        return float(empty_value)
    sum_g, tot_g, sum_s, tot_s = _object_hausdorff_parts(s, g)
    return 0.5 * (sum_g / tot_g + sum_s / tot_s)


def object_scores(
    preds: Sequence, gts: Sequence, mode: str = "mean", empty_value: float = float("inf")
) -> Dict[str, float]:
    """Object Dice and object Hausdorff over a set of images.

    ``mode="mean"``: mean of the per-image values. ``mode="pooled"``: the
    area weights |G_i|/|G| and |S_j|/|S| are normalised over all objects of
    all images (one weighted sum for the whole set). Images where exactly one
    side has no objects contribute Dice 0 / Hausdorff ``empty_value`` in
    ``"mean"`` mode; in ``"pooled"`` mode their objects are weighted in on
    the side that has them (Dice 0, Hausdorff ``empty_value``).

    Returns ``{"object_dice": ..., "object_hausdorff": ...}``.
    """
    if mode not in ("pooled", "mean"):
        raise ValueError(f"mode must be 'pooled' or 'mean', got {mode!r}")
    pairs = list(zip(preds, gts, strict=True))
    if not pairs:
        raise ValueError("object_scores needs at least one image")
    if mode == "mean":
        return {
            "object_dice": float(np.mean([object_dice(p, g) for p, g in pairs])),
            "object_hausdorff": float(np.mean([object_hausdorff(p, g, empty_value) for p, g in pairs])),
        }
    dg = dtg = ds = dts = 0.0
    hg = htg = hs = hts = 0.0
    for p, g in pairs:
        s_, g_ = _pair(p, g)
        s_ = _as_labels(s_)
        g_ = _as_labels(g_)
        a, b, c, d = _object_dice_parts(s_, g_)
        dg += a
        dtg += b
        ds += c
        dts += d
        ng = bool(g_.any())
        ns = bool(s_.any())
        if ng and ns:
            a, b, c, d = _object_hausdorff_parts(s_, g_)
        else:
            a = empty_value * np.count_nonzero(g_) if ng else 0.0
            b = int(np.count_nonzero(g_))
            c = empty_value * np.count_nonzero(s_) if ns else 0.0
            d = int(np.count_nonzero(s_))
        hg += a
        htg += b
        hs += c
        hts += d
    od = _combine_weighted(dg, int(dtg), ds, int(dts))
    if htg == 0 and hts == 0:
        oh = 0.0
    elif htg == 0 or hts == 0:
        oh = float(empty_value)
    else:
        oh = 0.5 * (hg / htg + hs / hts)
    return {"object_dice": float(od), "object_hausdorff": float(oh)}


def image_stats(pred_labels, gt_labels, hausdorff: bool = True, name: str = "") -> Dict:
    """Counts and object scores of one image, the unit :func:`summarize` aggregates.

    Args:
        pred_labels, gt_labels: (H, W) instance label maps (0 = background).
        hausdorff: compute the object Hausdorff distance (the costly part on
            noisy predictions); ``nan`` otherwise.

    Returns:
        dict: name, tp, fp, fn (pixels), dice, iou, obj_tp, obj_fp, obj_fn,
        object_f1, object_dice, object_hausdorff, n_pred, n_gt, pixels (H * W).
    """
    s, g = _pair(pred_labels, gt_labels)
    s, g = _as_labels(s), _as_labels(g)
    tp, fp, fn = _counts(s, g)
    otp, ofp, ofn = _object_f1_counts(s, g, "gt_overlap")
    return {
        "name": name, "tp": tp, "fp": fp, "fn": fn,
        "dice": dice_from_counts(tp, fp, fn), "iou": iou_from_counts(tp, fp, fn),
        "obj_tp": otp, "obj_fp": ofp, "obj_fn": ofn, "object_f1": dice_from_counts(otp, ofp, ofn),
        "object_dice": float(object_dice(s, g)),
        "object_hausdorff": float(object_hausdorff(s, g)) if hausdorff else float("nan"),
        "n_pred": int(np.unique(s[s > 0]).size), "n_gt": int(np.unique(g[g > 0]).size),
        "pixels": int(s.size),
    }


def summarize(stats: Sequence[Dict], hausdorff: bool = True) -> Dict[str, float]:
    """Set-level scores from :func:`image_stats` of every image.

    Pixel Dice/IoU pooled (TP/FP/FN summed over images) and per-image mean;
    object F1, precision and recall from object counts summed over images;
    object Dice and object Hausdorff as per-image means. Hausdorff is
    ``inf`` for an image where exactly one side is empty, so the mean over
    the images where it is defined and the count of the others are reported
    as well (``hausdorff=False`` leaves the three ``object_hausdorff*`` keys out).
    """
    if not stats:
        raise ValueError("summarize needs at least one image")
    tot = {k: sum(s[k] for s in stats) for k in ("tp", "fp", "fn", "obj_tp", "obj_fp", "obj_fn")}
    obj = _f1_dict(tot["obj_tp"], tot["obj_fp"], tot["obj_fn"])
    out = {
        "dice_pooled": dice_from_counts(tot["tp"], tot["fp"], tot["fn"]),
        "iou_pooled": iou_from_counts(tot["tp"], tot["fp"], tot["fn"]),
        "dice_mean": float(np.mean([s["dice"] for s in stats])),
        "iou_mean": float(np.mean([s["iou"] for s in stats])),
        "object_f1": obj["f1"],
        "object_precision": obj["precision"],
        "object_recall": obj["recall"],
        "object_dice": float(np.mean([s["object_dice"] for s in stats])),
    }
    if hausdorff:
        hd = np.array([s["object_hausdorff"] for s in stats], np.float64)
        finite = np.isfinite(hd)
        out["object_hausdorff"] = float(hd.mean())
        out["object_hausdorff_defined_mean"] = float(hd[finite].mean()) if finite.any() else float("nan")
        out["object_hausdorff_undefined"] = int((~finite).sum())
    return out


def gland_metrics(
    pred_labels: Sequence, gt_labels: Sequence, empty_value: float = float("inf")
) -> Dict[str, float]:
    """All metrics over a set of instance label maps (H, W): pooled pixel
    Dice/IoU, object F1 (counts summed over images), and per-image-mean
    object Dice and object Hausdorff (:func:`image_stats` + :func:`summarize`;
    ``empty_value`` replaces the Hausdorff distance of an image where exactly
    one side is empty)."""
    stats = [image_stats(p, g) for p, g in zip(pred_labels, gt_labels, strict=True)]
    for st in stats:
        if not np.isfinite(st["object_hausdorff"]):
            st["object_hausdorff"] = float(empty_value)
    s = summarize(stats)
    return {"dice": s["dice_pooled"], "iou": s["iou_pooled"], "object_f1": s["object_f1"],
            "object_precision": s["object_precision"], "object_recall": s["object_recall"],
            "object_dice": s["object_dice"], "object_hausdorff": s["object_hausdorff"]}


# ----------------------------------------------------------------------------
# Image-level-labelled sets (weak supervision, IKD-MIL's scores)
# ----------------------------------------------------------------------------
def weak_scores(stats: Sequence[Dict], labels: Sequence[int]) -> Dict[str, float]:
    """IKD-MIL's scores of a set whose images carry a tumour label (1 / 0),
    from the pixel counts of :func:`image_stats` (``tp``, ``fp``, ``fn``,
    ``pixels``) of every image:

    * ``dice_positive`` / ``iou_positive``: pixel Dice (F1) / IoU pooled over
      the positive images (TP/FP/FN summed);
    * ``background_f1_negative``: F1 of the *background* class pooled over
      the negative images (1.0 when every pixel of every negative image is
      called background; a negative image's tumour pixels, if its mask has
      any, count as background misses);
    * ``n_positive``, ``n_negative``: the image counts.

    Scores of an empty group are ``nan``.
    """
    if len(stats) != len(labels):
        raise ValueError(f"weak_scores: {len(stats)} images but {len(labels)} labels")
    pos = [s for s, y in zip(stats, labels) if int(y) == 1]
    neg = [s for s, y in zip(stats, labels) if int(y) == 0]
    if len(pos) + len(neg) != len(stats):
        raise ValueError(f"weak_scores: labels must be 0 or 1, got {sorted(set(labels))}")
    nan = float("nan")
    tp, fp, fn = (sum(s[k] for s in pos) for k in ("tp", "fp", "fn"))
    # background as the class: TP = neither predicted nor true tumour; FP = true tumour called
    # background (a tumour FN); FN = background called tumour (a tumour FP)
    btp = sum(s["pixels"] - s["tp"] - s["fp"] - s["fn"] for s in neg)
    bfp, bfn = sum(s["fn"] for s in neg), sum(s["fp"] for s in neg)
    return {"n_positive": len(pos), "n_negative": len(neg),
            "dice_positive": dice_from_counts(tp, fp, fn) if pos else nan,
            "iou_positive": iou_from_counts(tp, fp, fn) if pos else nan,
            "background_f1_negative": dice_from_counts(btp, bfp, bfn) if neg else nan}


def score_masks(pred: Sequence, truth: Sequence, labels: Sequence[int]) -> Dict[str, float]:
    """:func:`weak_scores` of binary (or instance) masks ``pred`` against
    ``truth`` (each (H, W), nonzero = tumour), one label per image."""
    stats = []
    for p, t in zip(pred, truth, strict=True):
        a, b = _pair(p, t)
        tp, fp, fn = _counts(a, b)
        stats.append({"tp": tp, "fp": fp, "fn": fn, "pixels": int(a.size)})
    return weak_scores(stats, labels)
