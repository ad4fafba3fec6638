"""find_boundaries against ``skimage.segmentation.find_boundaries`` (exact equality).

Label maps have touching instances (Voronoi cells, adjacent rectangles, random
small integers), labels at the dtype's extremes (the max stands in for the
background in skimage's outer mode), negative labels, and backgrounds other
than 0 (present, absent and outside the dtype's range). skimage always gets the
NumPy array of the same dtype. ``ring`` mode is checked against
``skimage.morphology.dilation`` with a disk. Kernel tests run once per compiled
ISA copy (``isa`` fixture).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries as sk_find_boundaries

from semimoe.ops import find_boundaries, find_boundaries_ref

MODES = ("thick", "inner", "outer")
SUPPRESS = [HealthCheck.function_scoped_fixture]
DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64] + [
    d for d in (getattr(torch, n, None) for n in ("uint16", "uint32", "uint64")) if d is not None]
DTYPES_REF = DTYPES
LABEL_KINDS = ("voronoi", "rects", "random", "binary", "blobs")


# ----------------------------------------------------------------- fixtures
# The `isa` fixture (both CPU kernel copies) is in tests/conftest.py.


# ------------------------------------------------------------ label helpers
def make_index_map(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    """(h, w) int64 map of label *indices*, 0 meaning background; touching instances."""
    rng = np.random.default_rng(seed)
    if kind == "voronoi":  # nearest-seed cells, all touching, some carved to background
        n = int(rng.integers(2, 41))
        ys, xs = rng.integers(h, size=n), rng.integers(w, size=n)
        seeds = np.ones((h, w), bool)
        ids = np.zeros((h, w), np.int64)
        seeds[ys, xs] = False
        ids[ys, xs] = np.arange(1, n + 1)
        iy, ix = ndi.distance_transform_edt(seeds, return_distances=False, return_indices=True)
        lab = ids[iy, ix]
        carve = int(rng.integers(3))
        if carve == 1:  # drop a few cells to background
            lab[np.isin(lab, rng.integers(1, n + 1, size=n // 3))] = 0
        elif carve == 2:  # background where random noise is low
            lab[rng.random((h, w)) < 0.2] = 0
        return lab
    if kind == "rects":  # grid of adjacent rectangles with random labels
        ny, nx = int(rng.integers(1, min(h, 12) + 1)), int(rng.integers(1, min(w, 12) + 1))
        cy = np.sort(rng.choice(np.arange(1, h), size=min(ny - 1, h - 1), replace=False)) \
            if h > 1 else np.array([], int)
        cx = np.sort(rng.choice(np.arange(1, w), size=min(nx - 1, w - 1), replace=False)) \
            if w > 1 else np.array([], int)
        cell = rng.integers(0, 8, size=(len(cy) + 1, len(cx) + 1))
        return cell[np.searchsorted(cy, np.arange(h), side="right")][
            :, np.searchsorted(cx, np.arange(w), side="right")]
    if kind == "random":
        return rng.integers(0, int(rng.integers(2, 6)), size=(h, w))
    if kind == "binary":
        return (rng.random((h, w)) < rng.random()).astype(np.int64)
    if kind == "blobs":  # separate and overlapping disks, later ones on top
        lab = np.zeros((h, w), np.int64)
        yy, xx = np.mgrid[:h, :w]
        for i in range(1, int(rng.integers(1, 15)) + 1):
            r = rng.uniform(1, max(2.0, min(h, w) / 4))
            lab[(yy - rng.integers(h)) ** 2 + (xx - rng.integers(w)) ** 2 <= r * r] = i
        return lab
    raise ValueError(kind)


def np_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(str(dtype).replace("torch.", ""))


# SciPy's grey dilation/erosion (hence skimage.find_boundaries) goes through
# float64: int64/uint64 labels beyond 2**53 collapse or overflow there (e.g. the
# dilation of [0, 2**62 + 1, 2**62] is 2**62 everywhere). Comparisons with skimage
# keep 64-bit labels within +-2**53; their true extremes are checked against
# np_find_boundaries (exact integer NumPy) in test_int64_extreme_labels.
EXACT_F64 = 2**53


def value_range(dtype: torch.dtype, exact: bool = True):
    info = np.iinfo(np_dtype(dtype))
    lo, hi = int(info.min), int(info.max)
    return (max(lo, -EXACT_F64), min(hi, EXACT_F64)) if exact else (lo, hi)


def to_labels(idx: np.ndarray, dtype: torch.dtype, seed: int, exact: bool = True) -> np.ndarray:
    """Map indices to distinct values of ``dtype``: index 0 -> 0, others to a shuffled
    palette that includes the dtype's max (and min, -1 for signed dtypes)."""
    if dtype == torch.bool:
        return (idx % 2).astype(bool)
    dt = np_dtype(dtype)
    lo, hi = value_range(dtype, exact)
    rng = np.random.default_rng(seed)
    n = int(idx.max()) if idx.size else 0
    extremes = {hi, hi - 1, 1} | ({lo, -1} if lo < 0 else set())
    values = list(extremes)
    while len(values) < n:
        v = int(rng.integers(lo, hi, endpoint=True, dtype=np.int64)) if hi < 2**63 else \
            int(rng.integers(0, 2**62))
        if v != 0 and v not in values:
            values.append(v)
    palette = np.array([0] + [values[i] for i in rng.permutation(len(values))], dtype=dt)
    return palette[idx]


def pick_background(labels: np.ndarray, how: str, seed: int) -> int:
    rng = np.random.default_rng(seed)
    if labels.dtype == bool:
        return 0 if how in ("zero", "absent", "outside") else int(rng.integers(2))
    info = np.iinfo(labels.dtype)
    if how == "zero":
        return 0
    if how == "present":
        return int(labels.flat[rng.integers(labels.size)])
    if how == "absent":  # a value of the dtype, usually not in the image
        lo, hi = max(int(info.min), -EXACT_F64), min(int(info.max), EXACT_F64)
        return int(rng.integers(lo, hi, endpoint=True))
    if info.bits == 64:  # no value outside the range; the extremes break skimage (above)
        return -EXACT_F64 if rng.random() < 0.5 else EXACT_F64
    # outside the dtype's range (the op must widen, skimage compares exactly)
    return int(info.min) - 1 if rng.random() < 0.5 else int(info.max) + 1


def sk_expected(lab: np.ndarray, mode: str, connectivity: int, background: int) -> np.ndarray:
    """skimage's answer; for 64-bit labels in outer mode the exact NumPy transcription
    (skimage is wrong there: see test_skimage_outer_int64_is_broken)."""
    if mode == "outer" and lab.dtype.itemsize == 8:
        f = lambda x: np_find_boundaries(x, mode, connectivity, background)  # noqa: E731
    else:
        f = lambda x: sk_find_boundaries(x, connectivity=connectivity, mode=mode,  # noqa: E731
                                         background=background)
    return np.stack([f(x) for x in lab]) if lab.ndim == 3 else f(lab)


def assert_all_modes(lab_np: np.ndarray, lab_t: torch.Tensor, background: int = 0, fn=None):
    fn = fn or find_boundaries
    for mode in MODES:
        for connectivity in (1, 2):
            got = fn(lab_t, mode=mode, connectivity=connectivity, background=background)
            assert got.dtype == torch.bool and tuple(got.shape) == lab_np.shape
            exp = sk_expected(lab_np, mode, connectivity, background)
            if not np.array_equal(got.numpy(), exp):
                bad = np.argwhere(got.numpy() != exp)
                raise AssertionError(
                    f"mode={mode} connectivity={connectivity} background={background} "
                    f"dtype={lab_np.dtype}: {len(bad)} pixels differ, first at {bad[0].tolist()}")


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":
        big = torch.zeros(t.shape[:-2] + (2 * t.shape[-2], 3 * t.shape[-1] + 1), dtype=t.dtype)
        big[..., ::2, 1::3] = t
        return big[..., ::2, 1::3]
    if layout == "interleaved":
        return torch.stack([t, torch.zeros_like(t)], -1)[..., 0]
    raise ValueError(layout)


@st.composite
def label_params(draw, max_side=300):
    return (draw(st.sampled_from(LABEL_KINDS)), draw(st.integers(1, max_side)),
            draw(st.integers(1, max_side)), draw(st.integers(0, 2**32 - 1)))


# ======================================================= label comparisons
@settings(max_examples=60, deadline=None, suppress_health_check=SUPPRESS)
@given(p=label_params())
def test_int32_instance_labels_match_skimage(isa, p):
    lab = to_labels(make_index_map(*p), torch.int32, p[3])
    assert_all_modes(lab, torch.from_numpy(lab))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=12, deadline=None, suppress_health_check=SUPPRESS)
@given(p=label_params(max_side=120),
       bg=st.sampled_from(["zero", "zero", "present", "absent", "outside"]))
def test_every_dtype_and_background(isa, dtype, p, bg):
    lab = to_labels(make_index_map(*p), dtype, p[3])
    assert_all_modes(lab, torch.from_numpy(lab), pick_background(lab, bg, p[3]))


def extreme_label_map(dtype: torch.dtype, exact: bool = True) -> np.ndarray:
    """Labels equal to the dtype's max (and max - 1, min, -1) touching each other and the
    background: in outer mode skimage substitutes that very max for the background."""
    lo, hi = value_range(dtype, exact)
    lab = np.zeros((12, 14), np_dtype(dtype))
    lab[2:6, 2:7] = hi
    lab[2:6, 7:10] = 3
    lab[7:10, 3:6] = hi - 1
    lab[7:10, 6:9] = hi
    lab[0, 0] = hi
    if lo < 0:
        lab[6:12, 10:14] = lo
        lab[9:12, 0:3] = -1
    return lab


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32,
                                   getattr(torch, "uint16", torch.int32),
                                   getattr(torch, "uint32", torch.int32)], ids=str)
def test_dtype_max_and_min_labels(isa, dtype):
    lab = extreme_label_map(dtype)
    for bg in sorted({0, int(lab.max()), int(lab.min()), 3}):
        assert_all_modes(lab, torch.from_numpy(lab), bg)


def np_find_boundaries(lab: np.ndarray, mode: str, connectivity: int, background: int):
    """Exact-integer NumPy transcription of skimage's definition (for 64-bit extremes).

    Out-of-image neighbours are ignored (edge padding; for a 3 x 3 window that is
    what skimage's reflecting grey morphology amounts to)."""
    if lab.dtype == bool:
        lab = lab.astype(np.uint8)
    H, W = lab.shape
    p = np.pad(lab, 1, mode="edge")

    def window(a, conn):
        return np.stack([a[1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1) if abs(dy) + abs(dx) <= conn])

    w = window(p, connectivity)
    thick = w.max(0) != w.min(0)
    if mode == "thick":
        return thick
    if mode == "inner":
        return thick & (lab != background)
    is_bg = lab == background
    inv = np.where(p == background, np.iinfo(lab.dtype).max, p).astype(lab.dtype)
    adjacent = (window(p, 2).max(0) != window(inv, 2).min(0)) & ~is_bg
    return thick & (is_bg | adjacent)


def test_np_oracle_matches_skimage():
    for i, kind in enumerate(LABEL_KINDS * 2):
        for dtype in (torch.bool, torch.uint8, torch.int16, torch.int32, torch.int64):
            lab = to_labels(make_index_map(kind, 37, 29, i), dtype, i)
            for bg in (0, int(lab.flat[i])):
                for mode in MODES:
                    if mode == "outer" and dtype == torch.int64:
                        continue
                    for c in (1, 2):
                        exp = sk_find_boundaries(lab, connectivity=c, mode=mode, background=bg)
                        assert np.array_equal(np_find_boundaries(lab, mode, c, bg), exp)


def test_skimage_outer_int64_is_broken():
    # Why sk_expected does not ask skimage for 64-bit outer boundaries: skimage puts
    # iinfo(int64).max in the background and SciPy's grey_erosion then returns
    # INT64_MIN everywhere. With the same labels as int32, skimage and semimoe
    # (int64 or int32) agree. If this starts failing, SciPy got fixed: use skimage.
    lab = np.array([[1, 1, 0, 0, 2, 2], [1, 1, 0, 0, 2, 2], [3, 3, 3, 0, 0, 0]])
    eroded = ndi.grey_erosion(np.array([[5, 2**63 - 1, 7]]), footprint=np.ones((3, 3), bool))
    assert eroded.max() < 5
    sk32 = sk_find_boundaries(lab.astype(np.int32), mode="outer")
    assert not np.array_equal(sk_find_boundaries(lab.astype(np.int64), mode="outer"), sk32)
    for dt in (np.int64, np.int32):
        assert np.array_equal(find_boundaries(torch.from_numpy(lab.astype(dt)), "outer").numpy(),
                              sk32)
    assert np.array_equal(np_find_boundaries(lab.astype(np.int64), "outer", 1, 0), sk32)


def test_int64_extreme_labels(isa):
    lab = extreme_label_map(torch.int64, exact=False)
    assert lab.max() == 2**63 - 1 and lab.min() == -2**63
    for bg in (0, 2**63 - 1, -2**63, 3):
        for mode in MODES:
            for c in (1, 2):
                exp = np_find_boundaries(lab, mode, c, bg)
                got = find_boundaries(torch.from_numpy(lab), mode, c, background=bg)
                assert np.array_equal(got.numpy(), exp), (mode, c, bg)
                ref = find_boundaries_ref(torch.from_numpy(lab), mode, c, background=bg)
                assert np.array_equal(ref.numpy(), exp), (mode, c, bg)


def test_background_not_zero_quirk(isa):
    # A background above the object labels makes skimage's outer mode mark the
    # object pixels next to it as well (dilation sees the background value).
    lab = np.full((9, 9), 7, np.int32)
    lab[3:6, 3:6] = 2
    assert_all_modes(lab, torch.from_numpy(lab), background=7)
    out = find_boundaries(torch.from_numpy(lab), mode="outer", background=7).numpy()
    assert out[3:6, 3:6].sum() == 8  # the 3 x 3 square's rim, all but its centre


@pytest.mark.skipif(not hasattr(torch, "uint64"), reason="torch without uint64")
def test_uint64_labels(isa):
    # Widened to int64 by the op (torch has no uint64 max() on CPU: this used to raise
    # NotImplementedError); labels >= 2**63 do not fit and are refused.
    lab = np.abs(to_labels(make_index_map("voronoi", 40, 50, 1), torch.int64, 1)).astype(np.uint64)
    assert_all_modes(lab, torch.from_numpy(lab))
    assert_all_modes(lab, torch.from_numpy(lab), background=int(lab[0, 0]))
    big = lab.copy()
    big[0, 0] = 2**63
    with pytest.raises(ValueError, match="labels"):
        find_boundaries(torch.from_numpy(big))


@settings(max_examples=25, deadline=None, suppress_health_check=SUPPRESS)
@given(ps=st.lists(label_params(max_side=100), min_size=1, max_size=4),
       h=st.integers(1, 100), w=st.integers(1, 100),
       dtype=st.sampled_from([torch.bool, torch.uint8, torch.int16, torch.int64]))
def test_batches(isa, ps, h, w, dtype):
    lab = np.stack([to_labels(make_index_map(k, h, w, s), dtype, s) for k, _, _, s in ps])
    assert_all_modes(lab, torch.from_numpy(lab))
    assert_all_modes(lab[0], torch.from_numpy(lab)[0])


@pytest.mark.parametrize("layout", ["transposed", "strided", "interleaved"])
@settings(max_examples=8, deadline=None, suppress_health_check=SUPPRESS)
@given(ps=st.lists(label_params(max_side=80), min_size=1, max_size=3),
       h=st.integers(1, 80), w=st.integers(1, 80),
       dtype=st.sampled_from([torch.bool, torch.uint8, torch.int32, torch.int64]))
def test_non_contiguous(isa, layout, ps, h, w, dtype):
    lab = np.stack([to_labels(make_index_map(k, h, w, s), dtype, s) for k, _, _, s in ps])
    t = relayout(torch.from_numpy(lab), layout)
    assert not t.is_contiguous() or t.numel() <= 1 or min(h, w) == 1
    assert_all_modes(lab, t)
    assert_all_modes(lab[0], t[0])


def test_expanded_batch(isa):
    lab = to_labels(make_index_map("voronoi", 31, 43, 3), torch.int16, 3)
    t = torch.from_numpy(lab).expand(3, 31, 43)
    assert_all_modes(np.stack([lab] * 3), t)


def test_degenerate_shapes(isa):
    for shape in [(1, 1), (1, 9), (9, 1), (2, 1, 1), (2, 2)]:
        rng = np.random.default_rng(sum(shape))
        lab = rng.integers(0, 3, size=shape).astype(np.int32)
        assert_all_modes(lab, torch.from_numpy(lab))
    for shape in [(0, 4, 4), (2, 0, 3), (0, 0)]:
        for mode in MODES + ("ring",):
            out = find_boundaries(torch.zeros(shape, dtype=torch.int32), mode=mode)
            assert out.shape == shape and out.dtype == torch.bool


# ==================================================================== ring
def ring_expected(fg: np.ndarray, radius: float) -> np.ndarray:
    if float(radius).is_integer():
        fp = disk(int(radius))
    else:  # skimage's disk(2.5) is a half-pixel-shifted 6 x 6 grid: use the centred disk
        r = int(math.floor(radius))
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        fp = (yy**2 + xx**2 <= radius**2).astype(np.uint8)
    f = lambda m: dilation(m.astype(np.uint8), fp).astype(bool) & ~m  # noqa: E731
    return np.stack([f(m) for m in fg]) if fg.ndim == 3 else f(fg)


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 1.5, 2.5])
@settings(max_examples=10, deadline=None, suppress_health_check=SUPPRESS)
@given(p=label_params(max_side=200), dtype=st.sampled_from(DTYPES),
       bg=st.sampled_from(["zero", "present"]))
def test_ring_matches_skimage_dilation(isa, radius, p, dtype, bg):
    lab = to_labels(make_index_map(*p), dtype, p[3])
    background = pick_background(lab, bg, p[3])
    got = find_boundaries(torch.from_numpy(lab), mode="ring", radius=radius,
                          background=background)
    assert got.dtype == torch.bool
    assert np.array_equal(got.numpy(), ring_expected(lab != background, radius))
    ref = find_boundaries_ref(torch.from_numpy(lab), mode="ring", radius=radius,
                              background=background)
    assert torch.equal(ref, got)


def test_ring_batch_non_contiguous(isa):
    lab = np.stack([to_labels(make_index_map(k, 57, 71, i), torch.int32, i)
                    for i, k in enumerate(["voronoi", "blobs", "binary"])])
    lab[1] = 0
    t = relayout(torch.from_numpy(lab), "strided")
    for radius in (1, 2, 3):
        assert np.array_equal(find_boundaries(t, mode="ring", radius=radius).numpy(),
                              ring_expected(lab != 0, radius))


# ========================================================== reference impl
@settings(max_examples=12, deadline=None)
@given(p=label_params(max_side=80), dtype=st.sampled_from(DTYPES_REF),
       bg=st.sampled_from(["zero", "present", "absent"]))
def test_reference_matches_skimage(p, dtype, bg):
    lab = to_labels(make_index_map(*p), dtype, p[3])
    assert_all_modes(lab, torch.from_numpy(lab), pick_background(lab, bg, p[3]),
                     fn=find_boundaries_ref)


@pytest.mark.skipif(not hasattr(torch, "uint64"), reason="torch without uint64")
def test_reference_uint64_outer():
    lab = np.array([[0, 1], [2, 3]], np.uint64)
    got = find_boundaries_ref(torch.from_numpy(lab), mode="outer")
    assert np.array_equal(got.numpy(), np_find_boundaries(lab, "outer", 1, 0))


def test_reference_agrees_with_kernel_batch():
    lab = np.stack([to_labels(make_index_map(k, 64, 48, i), torch.int64, i)
                    for i, k in enumerate(LABEL_KINDS)])
    t = torch.from_numpy(lab)
    for mode in MODES + ("ring",):
        for c in (1, 2):
            assert torch.equal(find_boundaries(t, mode, c), find_boundaries_ref(t, mode, c))


# ================================================= torch.library integration
@pytest.mark.parametrize("mode", MODES + ("ring",))
def test_opcheck(mode):
    lab2 = torch.from_numpy(to_labels(make_index_map("voronoi", 21, 27, 0), torch.int32, 0))
    lab3 = torch.from_numpy(np.stack([to_labels(make_index_map(k, 13, 17, i), torch.uint8, i)
                                      for i, k in enumerate(["rects", "blobs"])]))
    for lab, c in ((lab2, 1), (lab3, 2)):
        torch.library.opcheck(torch.ops.semimoe.find_boundaries.default,
                              (lab, mode, c, 2.0, 0))


def test_torch_compile_fullgraph():
    def f(lab):
        return (find_boundaries(lab), find_boundaries(lab, mode="inner", connectivity=2),
                find_boundaries(lab, mode="outer", background=1),
                find_boundaries(lab, mode="ring", radius=3))

    lab = torch.from_numpy(np.stack([to_labels(make_index_map(k, 33, 45, i), torch.int32, i)
                                     for i, k in enumerate(["voronoi", "rects", "binary"])]))
    torch._dynamo.reset()
    for g, e in zip(torch.compile(f, fullgraph=True)(lab), f(lab)):
        assert g.dtype == torch.bool and torch.equal(g, e)
    for g, e in zip(torch.compile(f, fullgraph=True, backend="aot_eager")(lab[0]), f(lab[0])):
        assert torch.equal(g, e)


def test_thread_count_does_not_change_results(isa):
    lab = torch.from_numpy(np.stack([to_labels(make_index_map(k, 211, 307, i), torch.int32, i)
                                     for i, k in enumerate(LABEL_KINDS)]))
    n = torch.get_num_threads()
    try:
        res = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res.append([find_boundaries(lab, m, c) for m in MODES + ("ring",) for c in (1, 2)])
    finally:
        torch.set_num_threads(n)
    for a, b in zip(*res):
        assert torch.equal(a, b)


# ============================================================== bad inputs
def test_bad_inputs():
    lab = torch.zeros(6, 6, dtype=torch.int32)
    with pytest.raises(ValueError, match="mode"):
        find_boundaries(lab, mode="subpixel")
    with pytest.raises(ValueError, match="connectivity"):
        find_boundaries(lab, connectivity=3)
    with pytest.raises(ValueError, match="connectivity"):
        find_boundaries(lab, connectivity=True)
    with pytest.raises(TypeError, match="labels"):
        find_boundaries(lab.float())
    with pytest.raises(TypeError, match="labels"):
        find_boundaries(np.zeros((6, 6), np.int32))
    with pytest.raises(ValueError, match="labels"):
        find_boundaries(lab[None, None])
    with pytest.raises(ValueError, match="radius"):
        find_boundaries(lab, mode="ring", radius=-1)
    with pytest.raises(TypeError, match="background"):
        find_boundaries(lab, background=0.5)
    with pytest.raises(ValueError, match="mode"):
        torch.ops.semimoe.find_boundaries(lab, "subpixel", 1, 2.0, 0)
    with pytest.raises(TypeError, match="labels"):
        find_boundaries_ref(lab.double())
    with pytest.raises(ValueError, match="mode"):
        find_boundaries_ref(lab, mode="subpixel")
